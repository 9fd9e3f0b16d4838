//! What a caller can ask of [`segment`](super::segment), and what it reports back.

use std::collections::BTreeMap;

use super::normalize::Modality;
use crate::model::prototypes::HeadOptions;

/// A borrowed image volume: voxel (i, j, k) at `data[i + dims[0]*(j + dims[1]*k)]`, spacing in mm.
#[derive(Clone, Copy, Debug)]
pub struct VolumeRef<'a> {
    pub data: &'a [f32],
    pub dims: [usize; 3],
    pub spacing: [f64; 3],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AxisChoice {
    /// The only axis along which the labels lie on few slices.
    Auto,
    /// 0 = i, 1 = j, 2 = k.
    Fixed(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModalityChoice {
    Auto,
    Ct,
    Mri,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtentMode {
    /// Propagate outward from the support slices; stop when the structure has vanished.
    Auto,
    /// Every slice.
    All,
    /// Slices `first..=last` (support slices are always kept).
    Range(usize, usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FovMode {
    /// The whole slice fitted into the model input (the paper's setting).
    Slice,
    /// A square window around the structure, following it from slice to slice.
    Auto,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComponentsMode {
    /// Keep only the 3D connected parts of each class that touch its support voxels.
    Support,
    /// Keep everything predicted.
    All,
}

/// How a class's query slices are scored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    /// Every query slice against the nearest painted slice, each on its own (the paper's protocol).
    Independent,
    /// Slice by slice outward from each painted slice, each slice against the painted slice and the
    /// latest accepted predictions, stopping where a presence score says the structure has ended.
    Memory,
}

/// Settings of [`Propagation::Memory`]; `Default` gives the measured defaults (model card).
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryOptions {
    /// Accepted predictions kept in memory besides the painted slice (the most recent ones).
    pub size: usize,
    /// Weight of the painted slice's scores; each memory slice weighs 1.
    pub painted_weight: f32,
    /// Shape prior (logit units) added inside the last accepted mask; 0 turns it off.
    pub prior_gain: f32,
    /// Leak gate (logit units) subtracted at `prior_radius_mm` and beyond from the last accepted mask,
    /// rising linearly to 0 at the mask's edge; 0 turns it off.
    pub leak_gate: f32,
    pub prior_radius_mm: f64,
    /// A slice is accepted when its presence score reaches this: the mean foreground margin over the
    /// predicted pixels, as a fraction of the painted slice's own margin over its painted pixels.
    pub presence_threshold: f32,
    /// ...and at least this fraction of the mean presence of the chain's last three accepted slices
    /// (a sudden drop: the chain has left the structure); 0 turns this off.
    pub presence_drop: f32,
    /// ...and when its foreground area is at least this fraction of the painted area.
    pub min_area_fraction: f64,
    /// ...and when the fitted probability that the slice is still inside the structure (presence, area,
    /// overlap with the previous and the painted mask, presence drop; `propagate.rs`) reaches this;
    /// 0 turns this off.
    pub stop_probability: f32,
    /// Auto extent: a chain stops after this many rejected slices in a row (they stay empty).
    pub patience: usize,
    /// Copy zone, in feature cells (8 canvas pixels, in mm): accepted slices near the painted slice get
    /// the painted mask itself instead of the model's prediction, as long as a sphere of the painted mask's
    /// radius R would have moved its boundary by less than this many cells there (up to
    /// `sqrt(2 R tolerance cell)` mm away). Near the painted slice a structure changes less than the model
    /// resolves; small structures (few cells wide) get a zone of about their radius, large ones a small
    /// fraction of it. The model still scores these slices (presence, memory, stop). 0 turns it off.
    pub copy_tolerance: f64,
    /// Boundary refinement, in feature cells: outside the copy zone, the pixels within this distance of the
    /// model's boundary (either side) are decided by the painted slice's intensities (structure against
    /// its surroundings, `refine.rs`). 0 turns it off.
    pub refine_band: f64,
}

impl Default for MemoryOptions {
    fn default() -> Self {
        // Chosen on the CT liver and the 8 deep-nucleus crop (chain traces replayed under each rule,
        // scripts/replay_stop_rules.py); reported on the other structures (weights/README.md).
        MemoryOptions {
            size: 3,
            painted_weight: 1.0,
            prior_gain: 0.0,
            leak_gate: 4.0,
            prior_radius_mm: 10.0,
            presence_threshold: 0.4,
            presence_drop: 0.6,
            min_area_fraction: 0.15,
            patience: 1,
            // Off: it lifts the AAL cortex parcels but stops structures that drift in-plane early (caudate).
            stop_probability: 0.0,
            // Chosen on the liver and the nuclei crop (real runs, weights/README.md), reported on AAL.
            copy_tolerance: 0.5,
            refine_band: 0.5,
        }
    }
}

impl MemoryOptions {
    pub(crate) fn validate(&self) -> crate::Result<()> {
        let bad = |what: &str| Err(crate::DspnetError::InvalidArgument(format!("memory propagation: {what}")));
        if !(self.painted_weight.is_finite() && self.painted_weight > 0.0) {
            return bad("the painted slice's weight must be finite and positive");
        }
        let gain_ok = |g: f32| g.is_finite() && g >= 0.0;
        if !(gain_ok(self.prior_gain)
            && gain_ok(self.leak_gate)
            && self.prior_radius_mm.is_finite()
            && self.prior_radius_mm > 0.0)
        {
            return bad("the prior gain and leak gate must be finite and non-negative, the radius finite and positive");
        }
        if self.presence_threshold.is_nan()
            || !(self.presence_drop.is_finite() && self.presence_drop >= 0.0)
            || !(self.min_area_fraction.is_finite() && self.min_area_fraction >= 0.0)
        {
            return bad("the presence threshold must be a number (-inf accepts every slice), the presence drop and the minimum area fraction finite and non-negative");
        }
        if !(self.copy_tolerance.is_finite()
            && self.copy_tolerance >= 0.0
            && self.refine_band.is_finite()
            && self.refine_band >= 0.0)
        {
            return bad("the copy tolerance and the refinement band must be finite and non-negative");
        }
        if !(0.0..=1.0).contains(&self.stop_probability) {
            return bad("the stop probability must be between 0 and 1");
        }
        if self.patience == 0 {
            return bad("patience must be at least 1");
        }
        Ok(())
    }
}

/// Options of [`segment`](super::segment); `Default` gives the recommended settings.
#[derive(Clone, Debug)]
pub struct SegmentOptions {
    pub axis: AxisChoice,
    pub modality: ModalityChoice,
    pub extent: ExtentMode,
    pub fov: FovMode,
    pub components: ComponentsMode,
    /// Restrict to these label values (None = every label found in the support).
    pub classes: Option<Vec<u16>>,
    pub head: HeadOptions,
    pub propagation: Propagation,
    pub memory: MemoryOptions,
    /// Independent propagation, auto extent: stop after this many consecutive slices without the structure.
    pub extent_patience: usize,
    /// Independent propagation, auto extent: a slice counts as "without the structure" below this fraction of the
    /// support area.
    pub extent_min_fraction: f64,
    /// Slices per backbone call where the slices to encode are known in advance (extent all or a range,
    /// whole-slice field of view); 0 = from the device and the activation memory budget.
    pub batch: usize,
}

impl Default for SegmentOptions {
    fn default() -> Self {
        SegmentOptions {
            axis: AxisChoice::Auto,
            modality: ModalityChoice::Auto,
            extent: ExtentMode::Auto,
            fov: FovMode::Slice,
            components: ComponentsMode::Support,
            classes: None,
            head: HeadOptions::default(),
            propagation: Propagation::Memory,
            memory: MemoryOptions::default(),
            extent_patience: 3,
            extent_min_fraction: 0.05,
            batch: 0,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, PartialEq)]
pub struct SegmentSummary {
    pub axis: usize,
    pub modality: Modality,
    pub classes: Vec<u16>,
    /// Support slice indices per class.
    pub support_slices: BTreeMap<u16, Vec<usize>>,
    /// Query slices scored (over all classes; a slice scored for two classes counts twice).
    pub slices_processed: usize,
    /// Output voxels per class.
    pub voxels_per_class: BTreeMap<u16, usize>,
    /// Per class, every scored slice with its presence score (the mean foreground margin of its
    /// prediction as a fraction of the painted slice's own; memory propagation accepts a slice at
    /// `MemoryOptions::presence_threshold` and above), in the order scored.
    pub presence: BTreeMap<u16, Vec<(usize, f32)>>,
    /// Per slice along the axis: confidence in [0, 1] of the scored slices (None: not scored); see
    /// [`confidence`](super::confidence).
    pub slice_confidence: Vec<Option<f32>>,
    /// Slices to check or paint next, least confident first (at most
    /// [`MAX_SUGGESTIONS`](super::confidence::MAX_SUGGESTIONS)).
    pub suggested_slices: Vec<usize>,
    pub seconds: f64,
}

/// Progress callback: (done, total) → keep going? Returning false cancels the run.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize) -> bool;
