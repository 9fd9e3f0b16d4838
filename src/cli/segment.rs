//! `dspnet segment`: a volume and its painted slices in, the whole structure out.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use dspnet::model::prototypes::HeadOptions;
use dspnet::model::{device_from_name, Model};
use dspnet::volume::{
    self, AxisChoice, ComponentsMode, ExtentMode, FovMode, MemoryOptions, ModalityChoice, Propagation, SegmentOptions,
};
use dspnet::{weights, Result};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Clone, Copy, ValueEnum)]
pub enum ModalityArg {
    Auto,
    Ct,
    Mri,
}
#[derive(Clone, Copy, ValueEnum)]
pub enum FovArg {
    Slice,
    Auto,
}
#[derive(Clone, Copy, ValueEnum)]
pub enum ComponentsArg {
    Support,
    All,
}
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum PropagationArg {
    /// Follow the structure slice by slice from each painted slice, with a memory of accepted
    /// predictions; under --extent auto, stop where a presence score says the structure has ended. Near
    /// the painted slice the painted mask is copied, further out boundaries are refined on the intensities
    /// (CT liver demo 0.91, MRI deep nuclei 0.76 whole-volume Dice; model card).
    Memory,
    /// Match every slice on its own against the nearest painted slice (the paper's protocol).
    Independent,
}

impl From<ModalityArg> for ModalityChoice {
    fn from(m: ModalityArg) -> Self {
        match m {
            ModalityArg::Auto => ModalityChoice::Auto,
            ModalityArg::Ct => ModalityChoice::Ct,
            ModalityArg::Mri => ModalityChoice::Mri,
        }
    }
}

impl From<FovArg> for FovMode {
    fn from(f: FovArg) -> Self {
        match f {
            FovArg::Slice => FovMode::Slice,
            FovArg::Auto => FovMode::Auto,
        }
    }
}

impl From<ComponentsArg> for ComponentsMode {
    fn from(c: ComponentsArg) -> Self {
        match c {
            ComponentsArg::Support => ComponentsMode::Support,
            ComponentsArg::All => ComponentsMode::All,
        }
    }
}

impl From<PropagationArg> for Propagation {
    fn from(p: PropagationArg) -> Self {
        match p {
            PropagationArg::Memory => Propagation::Memory,
            PropagationArg::Independent => Propagation::Independent,
        }
    }
}

/// Options shared by `segment` and `eval`.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Weight file (.safetensors); default: the default model from weights/.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Slice axis: i, j, k or auto (the only axis along which the labels lie on few slices).
    #[arg(long, default_value = "auto", value_parser = parse_axis)]
    pub axis: AxisChoice,
    /// Intensity recipe when the model follows the official one.
    #[arg(long, value_enum, default_value = "auto")]
    pub modality: ModalityArg,
    /// auto (propagate until the structure vanishes), all, or A:B (slice range, inclusive).
    #[arg(long, default_value = "auto", value_parser = parse_extent)]
    pub extent: ExtentMode,
    /// Field of view fed to the model: the whole slice, or a window around the structure.
    #[arg(long, value_enum, default_value = "slice")]
    pub fov: FovArg,
    /// Keep only 3D components touching the painted voxels (support), or everything (all).
    #[arg(long, value_enum, default_value = "support")]
    pub components: ComponentsArg,
    /// Only these label values, comma separated (default: every label in the support).
    #[arg(long, value_delimiter = ',')]
    pub classes: Option<Vec<u16>>,
    /// How query slices are scored: memory (follow the structure) or independent.
    #[arg(long, value_enum, default_value = "memory")]
    pub propagation: PropagationArg,
    /// Memory: accepted predictions kept besides the painted slice.
    #[arg(long, default_value_t = MemoryOptions::default().size, help_heading = "Memory propagation")]
    pub memory_size: usize,
    /// Memory: weight of the painted slice's scores (each memory slice weighs 1).
    #[arg(long, default_value_t = MemoryOptions::default().painted_weight, help_heading = "Memory propagation")]
    pub painted_weight: f32,
    /// Memory: shape prior (logits) added inside the last accepted mask; 0 = off.
    #[arg(long, default_value_t = MemoryOptions::default().prior_gain, help_heading = "Memory propagation")]
    pub prior_gain: f32,
    /// Memory: leak gate (logits) subtracted at --prior-radius and beyond from the last accepted mask; 0 = off.
    #[arg(long, default_value_t = MemoryOptions::default().leak_gate, help_heading = "Memory propagation")]
    pub leak_gate: f32,
    /// Memory: distance (mm) from the last accepted mask at which the leak gate is complete.
    #[arg(long, default_value_t = MemoryOptions::default().prior_radius_mm, help_heading = "Memory propagation")]
    pub prior_radius: f64,
    /// Memory: a slice is accepted when its mean margin reaches this fraction of the painted slice's own.
    #[arg(long, default_value_t = MemoryOptions::default().presence_threshold, help_heading = "Memory propagation")]
    pub presence_threshold: f32,
    /// Memory: ...and this fraction of the mean presence of the chain's last three accepted slices; 0 = off.
    #[arg(long, default_value_t = MemoryOptions::default().presence_drop, help_heading = "Memory propagation")]
    pub presence_drop: f32,
    /// Memory: ...and its area this fraction of the painted area.
    #[arg(long, default_value_t = MemoryOptions::default().min_area_fraction, help_heading = "Memory propagation")]
    pub min_area_fraction: f64,
    /// Memory, --extent auto: a chain ends after this many rejected slices in a row.
    #[arg(long, default_value_t = MemoryOptions::default().patience, help_heading = "Memory propagation")]
    pub patience: usize,
    /// Memory: ...and the fitted probability that the slice is still inside the structure reaches this; 0 = off.
    #[arg(long, default_value_t = MemoryOptions::default().stop_probability, help_heading = "Memory propagation")]
    pub stop_probability: f32,
    /// Memory: copy zone in feature cells (8 canvas pixels): slices near the painted slice, where a sphere
    /// of the painted mask's radius R moves its boundary by less than this, get the painted mask itself
    /// (up to sqrt(2·R·tolerance·cell) mm away); 0 = the model's prediction everywhere.
    #[arg(long, default_value_t = MemoryOptions::default().copy_tolerance, help_heading = "Memory propagation")]
    pub copy_tolerance: f64,
    /// Memory: outside the copy zone, pixels within this many feature cells of the model's boundary are
    /// decided by the painted slice's intensities (structure against its surroundings); 0 = off.
    #[arg(long, default_value_t = MemoryOptions::default().refine_band, help_heading = "Memory propagation")]
    pub refine_band: f64,
    /// Prototype-head parameter under the official code's name, e.g. --head avg_sp_area=50 (repeatable):
    /// max_num_sp, avg_sp_area, fg_thresh, bg_thresh, val_wsize, alpha, alpha_bg, w1_w2_w3 (a:b:c),
    /// n_iter. The defaults are the official code's.
    #[arg(long = "head", value_name = "KEY=VALUE", value_parser = parse_head_item, help_heading = "Prototype head")]
    pub head: Vec<String>,
}

/// One `--head KEY=VALUE`, checked now so that a typo fails before the model loads.
pub fn parse_head_item(s: &str) -> std::result::Result<String, String> {
    HeadOptions::default().set_all([s]).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

pub fn parse_axis(s: &str) -> std::result::Result<AxisChoice, String> {
    match s {
        "auto" => Ok(AxisChoice::Auto),
        "i" | "0" => Ok(AxisChoice::Fixed(0)),
        "j" | "1" => Ok(AxisChoice::Fixed(1)),
        "k" | "2" => Ok(AxisChoice::Fixed(2)),
        _ => Err(format!("'{s}': expected i, j, k or auto")),
    }
}

pub fn parse_extent(s: &str) -> std::result::Result<ExtentMode, String> {
    match s {
        "auto" => Ok(ExtentMode::Auto),
        "all" => Ok(ExtentMode::All),
        r => {
            let (a, b) = r.split_once(':').ok_or(format!("'{r}': expected auto, all or A:B"))?;
            let a = a.trim().parse::<usize>().map_err(|_| format!("'{r}': A must be a slice index"))?;
            let b = b.trim().parse::<usize>().map_err(|_| format!("'{r}': B must be a slice index"))?;
            Ok(ExtentMode::Range(a, b))
        }
    }
}

impl ModelArgs {
    pub fn load_model(&self) -> Result<Model> {
        let path = match &self.weights {
            Some(p) => p.clone(),
            None => weights::default_model_path()?,
        };
        Model::load(&path, &device_from_name(Some(&self.device))?)
    }

    pub fn options(&self) -> SegmentOptions {
        SegmentOptions {
            axis: self.axis,
            modality: self.modality.into(),
            extent: self.extent,
            fov: self.fov.into(),
            components: self.components.into(),
            classes: self.classes.clone(),
            propagation: self.propagation.into(),
            memory: MemoryOptions {
                size: self.memory_size,
                painted_weight: self.painted_weight,
                prior_gain: self.prior_gain,
                leak_gate: self.leak_gate,
                prior_radius_mm: self.prior_radius,
                presence_threshold: self.presence_threshold,
                presence_drop: self.presence_drop,
                min_area_fraction: self.min_area_fraction,
                patience: self.patience,
                stop_probability: self.stop_probability,
                copy_tolerance: self.copy_tolerance,
                refine_band: self.refine_band,
            },
            head: self.head_options(),
            ..SegmentOptions::default()
        }
    }

    fn head_options(&self) -> HeadOptions {
        let mut head = HeadOptions::default();
        // Each item was checked by `parse_head_item`.
        head.set_all(self.head.iter().map(String::as_str)).expect("--head items are checked when parsed");
        head
    }
}

#[derive(Args)]
pub struct SegmentArgs {
    /// CT or MRI volume: NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) or a DICOM series folder.
    image: PathBuf,
    /// Label volume on the image's grid with the structure painted on one or more slices.
    #[arg(long)]
    support: PathBuf,
    /// Output label volume (.nii, .nii.gz, .nrrd, .seg.nrrd); written atomically.
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// Also write a PNG montage of a few slices with the labels overlaid.
    #[arg(long)]
    preview: Option<PathBuf>,
    /// No progress bar and no summary.
    #[arg(long, short)]
    quiet: bool,
    /// Print what the run did as one JSON object on stdout: axis, modality, classes, slices scored,
    /// voxels per class, seconds, the confidence of every slice (null where not scored) and the slices
    /// to check next.
    #[arg(long)]
    json: bool,
}

/// A progress bar on stderr (hidden when quiet).
pub fn progress_bar(quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} slices, ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

pub fn run(a: SegmentArgs) -> Result<()> {
    // Bad input is reported before the model is loaded.
    let (img, lab) = volume::read_study(&a.image, &a.support)?;
    volume::check_memory_limit(img.geometry.dims)?;
    let model = a.model.load_model()?;
    let bar = progress_bar(a.quiet);
    bar.set_message("segmenting");
    let mut progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        true
    };
    let (out, summary) =
        volume::segment_study(&model, &img, &lab, &a.image, &a.output, &a.model.options(), &mut progress)?;
    bar.finish_and_clear();
    if let Some(p) = &a.preview {
        let supports: Vec<usize> = summary.support_slices.values().flatten().copied().collect();
        let slices = super::preview::pick_slices(&out.data, img.geometry.dims, summary.axis, &supports);
        super::preview::write_montage(
            p,
            &img.data,
            &out.data,
            img.geometry.dims,
            img.geometry.spacing,
            summary.axis,
            &slices,
        )?;
    }
    if a.json {
        println!("{}", summary_json(&summary));
    }
    if !a.quiet {
        if !summary.suggested_slices.is_empty() {
            let list: Vec<String> = summary
                .suggested_slices
                .iter()
                .map(|&z| format!("{z} ({:.2})", summary.slice_confidence[z].unwrap_or(0.0)))
                .collect();
            eprintln!(
                "least confident slices along {} (check or paint next): {}",
                ["i", "j", "k"][summary.axis],
                list.join(", ")
            );
        }
        let voxels: Vec<String> = summary.voxels_per_class.iter().map(|(c, v)| format!("{c}: {v}")).collect();
        eprintln!(
            "segmented classes {:?} along {} ({:?}): {} slices processed, voxels per class {{{}}}, {:.1} s -> {}",
            summary.classes,
            ["i", "j", "k"][summary.axis],
            summary.modality,
            summary.slices_processed,
            voxels.join(", "),
            summary.seconds,
            a.output.display()
        );
    }
    Ok(())
}

/// The JSON form of a run's summary (`dspnet segment --json`).
pub fn summary_json(s: &volume::SegmentSummary) -> serde_json::Value {
    serde_json::json!({
        "slice_axis": s.axis,
        "modality": format!("{:?}", s.modality).to_lowercase(),
        "classes": s.classes,
        "support_slices": s.support_slices.iter().map(|(c, z)| (c.to_string(), serde_json::json!(z))).collect::<serde_json::Map<_, _>>(),
        "slices_processed": s.slices_processed,
        "voxels_per_class": s.voxels_per_class.iter().map(|(c, v)| (c.to_string(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
        "seconds": s.seconds,
        "slice_confidence": s.slice_confidence,
        "suggested_slices": s.suggested_slices,
    })
}
