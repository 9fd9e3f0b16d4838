//! The volume protocol through the library API, on a real CT crop with synthetic weights: axis handling,
//! multi-class merging, the auto extent's stopping rule, cancellation, the auto field of view.

mod common;

use std::sync::OnceLock;

use candle_core::Device;
use common::*;
use dspnet::io::{read_image, read_labels, Volume};
use dspnet::model::Model;
use dspnet::volume::{
    segment, segment_cached, AxisChoice, ComponentsMode, ExtentMode, FeatureCache, FovMode, MemoryOptions, Propagation,
    SegmentOptions, VolumeRef,
};
use dspnet::DspnetError;

fn model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| Model::load(weights(), &Device::Cpu).unwrap())
}

/// CT crop: 80x72 in-plane (non-square, anisotropic spacing), 7 slices; support on slice 3.
fn ct() -> (Volume<f32>, Volume<u16>, Volume<u16>) {
    let img = read_image(&data("ct-liver/image.nii.gz")).unwrap();
    let lab = read_labels(&data("ct-liver/labels.nii.gz")).unwrap();
    let (lo, hi) = ([20, 30, 60], [100, 102, 67]);
    let (mut img, mut gt) = (crop(&img, lo, hi), crop(&lab, lo, hi));
    for v in [&mut img.geometry, &mut gt.geometry] {
        v.spacing = [0.8, 0.8, 2.5];
    }
    let mut sup = gt.clone();
    let plane = 80 * 72;
    for (v, l) in sup.data.iter_mut().enumerate() {
        if v / plane != 3 {
            *l = 0;
        }
    }
    (img, gt, sup)
}

fn view(v: &Volume<f32>) -> VolumeRef<'_> {
    VolumeRef { data: &v.data, dims: v.geometry.dims, spacing: v.geometry.spacing }
}

fn run(
    img: &Volume<f32>,
    sup: &[u16],
    opts: &SegmentOptions,
) -> Result<(Vec<u16>, dspnet::volume::SegmentSummary), DspnetError> {
    segment(model(), view(img), sup, opts, &mut |_, _| true)
}

#[test]
fn permuted_volume_gives_permuted_result() {
    let (img, _, sup) = ct();
    let opts = SegmentOptions { extent: ExtentMode::All, ..Default::default() };
    let (out, summary) = run(&img, &sup.data, &opts).unwrap();
    assert_eq!(summary.axis, 2);
    // T[k, i, j] = V[i, j, k]: the slice axis becomes 0, and each slice image (rows j, columns i) is
    // the same picture, so the result must be the same labels, permuted.
    let [ni, nj, nk] = img.geometry.dims;
    let dims_t = [nk, ni, nj];
    let permute = |v: &[u16]| -> Vec<u16> {
        let mut t = vec![0u16; v.len()];
        for k in 0..nk {
            for j in 0..nj {
                for i in 0..ni {
                    t[k + nk * (i + ni * j)] = v[i + ni * (j + nj * k)];
                }
            }
        }
        t
    };
    let mut img_t = vec![0f32; img.data.len()];
    for k in 0..nk {
        for j in 0..nj {
            for i in 0..ni {
                img_t[k + nk * (i + ni * j)] = img.data[i + ni * (j + nj * k)];
            }
        }
    }
    let sp = img.geometry.spacing;
    let view_t = VolumeRef { data: &img_t, dims: dims_t, spacing: [sp[2], sp[0], sp[1]] };
    let (out_t, summary_t) = segment(model(), view_t, &permute(&sup.data), &opts, &mut |_, _| true).unwrap();
    assert_eq!(summary_t.axis, 0, "auto axis must follow the painting");
    assert_eq!(out_t, permute(&out));
}

#[test]
fn classes_merge_by_foreground_score_not_label_order() {
    let (img, _, sup) = ct();
    let base = SegmentOptions { extent: ExtentMode::All, components: ComponentsMode::All, ..Default::default() };
    let plane = 80 * 72;
    // Split the painted liver into two classes (left / right half of the support slice), both ways round.
    let mut overlap_winner_is_left = Vec::new();
    for left_label in [1u16, 2] {
        let right_label = 3 - left_label;
        let mut two = sup.data.clone();
        for (v, l) in two.iter_mut().enumerate() {
            if *l == 1 {
                *l = if v % 80 < 40 { left_label } else { right_label };
            }
        }
        let (merged, summary) = run(&img, &two, &base).unwrap();
        assert_eq!(summary.classes, vec![1, 2]);
        let (only1, _) = run(&img, &two, &SegmentOptions { classes: Some(vec![1]), ..base.clone() }).unwrap();
        let (only2, _) = run(&img, &two, &SegmentOptions { classes: Some(vec![2]), ..base.clone() }).unwrap();
        let mut left_wins = 0usize;
        let mut overlap = 0usize;
        for v in (0..merged.len()).filter(|v| v / plane != 3) {
            let (a, b) = (only1[v] == 1, only2[v] == 2);
            match merged[v] {
                0 => assert!(!a && !b, "voxel {v}: a class predicted it alone, the merge dropped it"),
                1 => assert!(a, "voxel {v}: labelled 1 but class 1 alone does not predict it"),
                2 => assert!(b, "voxel {v}: labelled 2 but class 2 alone does not predict it"),
                other => panic!("unexpected label {other}"),
            }
            if a && b {
                overlap += 1;
                left_wins += usize::from(merged[v] == left_label);
            }
        }
        assert!(overlap > 0, "the test needs overlapping predictions to exercise the merge");
        overlap_winner_is_left.push(left_wins);
        // Support slice: the user's two labels, untouched.
        assert_eq!(&merged[3 * plane..4 * plane], &two[3 * plane..4 * plane]);
    }
    // Swapping the label values must not change which region wins where both predict: the winner follows
    // the scores, not the order of the classes.
    assert_eq!(overlap_winner_is_left[0], overlap_winner_is_left[1]);
}

/// The painted liver split into two classes (left / right half of the support slice).
fn two_classes(sup: &[u16]) -> Vec<u16> {
    sup.iter().enumerate().map(|(v, &l)| if l == 1 && v % 80 >= 40 { 2 } else { l }).collect()
}

#[test]
fn batched_encoding_gives_the_labels_of_slice_by_slice() {
    let (img, _, sup) = ct();
    let two = two_classes(&sup.data);
    // Batches are for independent propagation, where the query slices are known in advance.
    let one = SegmentOptions {
        extent: ExtentMode::All,
        components: ComponentsMode::All,
        batch: 1,
        propagation: Propagation::Independent,
        ..Default::default()
    };
    for extent in [ExtentMode::All, ExtentMode::Range(1, 6)] {
        let base = SegmentOptions { extent, ..one.clone() };
        let (reference, summary) = run(&img, &two, &base).unwrap();
        assert!(reference.contains(&2) && summary.slices_processed > 0);
        // 4 leaves a partial last batch; 8 covers every query slice at once.
        for batch in [4, 8] {
            let (batched, s) = run(&img, &two, &SegmentOptions { batch, ..base.clone() }).unwrap();
            assert_eq!(batched, reference, "batch {batch}, extent {extent:?}");
            assert_eq!(s.slices_processed, summary.slices_processed);
        }
    }
}

#[test]
fn dropping_used_features_does_not_change_results() {
    let (img, _, sup) = ct();
    let two = two_classes(&sup.data);
    for (extent, propagation) in [
        (ExtentMode::Auto, Propagation::Independent),
        (ExtentMode::All, Propagation::Independent),
        (ExtentMode::Auto, Propagation::Memory),
    ] {
        let opts =
            SegmentOptions { extent, components: ComponentsMode::All, batch: 2, propagation, ..Default::default() };
        // `segment` keeps query features only while a later class needs them; a reusable cache keeps all,
        // and a second run on the filled cache encodes nothing.
        let (dropped, _) = run(&img, &two, &opts).unwrap();
        let mut cache = FeatureCache::default();
        for pass in 0..2 {
            let (kept, _) = segment_cached(model(), view(&img), &two, &opts, &mut |_, _| true, &mut cache).unwrap();
            assert_eq!(kept, dropped, "extent {extent:?}, {propagation:?}, pass {pass}");
        }
    }
}

#[test]
fn auto_extent_stops_after_patience_misses() {
    let (img, _, sup) = ct();
    // A threshold no prediction can reach makes every outward slice a miss: exactly `patience` slices are
    // scored on each side of the support, and the slices beyond stay empty.
    let opts = SegmentOptions {
        extent_patience: 2,
        extent_min_fraction: 1e9,
        components: ComponentsMode::All,
        propagation: Propagation::Independent,
        ..Default::default()
    };
    let (out, summary) = run(&img, &sup.data, &opts).unwrap();
    assert_eq!(summary.slices_processed, 4);
    let plane = 80 * 72;
    for k in 0..7 {
        let any = out[k * plane..(k + 1) * plane].iter().any(|&l| l != 0);
        assert_eq!(any, (1..=5).contains(&k), "slice {k}");
    }
}

#[test]
fn cancel_from_progress_returns_cancelled() {
    let (img, _, sup) = ct();
    let mut calls = Vec::new();
    let r = segment(
        model(),
        view(&img),
        &sup.data,
        &SegmentOptions { extent: ExtentMode::All, ..Default::default() },
        &mut |d, t| {
            calls.push((d, t));
            d < 2
        },
    );
    assert!(matches!(r, Err(DspnetError::Cancelled)), "{r:?}");
    assert_eq!(calls.last(), Some(&(2, 6)));
}

#[test]
fn auto_fov_runs_and_keeps_support() {
    let (img, _, mut sup) = ct();
    // A small structure: keep a 12x12 pixel patch of the painted liver.
    let plane = 80 * 72;
    let painted: Vec<usize> = (3 * plane..4 * plane).filter(|&v| sup.data[v] == 1).collect();
    let (ci, cj) = (
        painted.iter().map(|v| v % 80).sum::<usize>() / painted.len(),
        painted.iter().map(|v| (v % plane) / 80).sum::<usize>() / painted.len(),
    );
    for (v, l) in sup.data.iter_mut().enumerate() {
        let (i, j) = (v % 80, (v % plane) / 80);
        if i.abs_diff(ci) > 6 || j.abs_diff(cj) > 6 {
            *l = 0;
        }
    }
    assert!(sup.data.contains(&1));
    let base = SegmentOptions { extent: ExtentMode::All, components: ComponentsMode::All, ..Default::default() };
    let (windowed, summary) = run(&img, &sup.data, &SegmentOptions { fov: FovMode::Auto, ..base }).unwrap();
    assert_eq!(summary.slices_processed, 6);
    assert!(windowed.contains(&1));
    assert_eq!(&windowed[3 * plane..4 * plane], &sup.data[3 * plane..4 * plane]);
}

#[test]
fn bad_arguments_are_rejected() {
    let (img, _, sup) = ct();
    let o = SegmentOptions::default();
    let short = &sup.data[..10];
    assert!(matches!(run(&img, short, &o), Err(DspnetError::Shape(_))));
    let bad_spacing = VolumeRef { spacing: [0.0, 1.0, 1.0], ..view(&img) };
    assert!(matches!(
        segment(model(), bad_spacing, &sup.data, &o, &mut |_, _| true),
        Err(DspnetError::InvalidArgument(_))
    ));
    assert!(matches!(
        run(&img, &sup.data, &SegmentOptions { axis: AxisChoice::Fixed(3), ..o.clone() }),
        Err(DspnetError::InvalidArgument(_))
    ));
    assert!(matches!(
        run(&img, &sup.data, &SegmentOptions { classes: Some(vec![4]), ..o.clone() }),
        Err(DspnetError::EmptySupport { class: Some(4), slice: None, .. })
    ));
    let mut nan = img.clone();
    nan.data[5] = f32::NAN;
    assert!(matches!(run(&nan, &sup.data, &o), Err(DspnetError::NonFinite(_))));
}

/// Memory options that accept nothing: every scored slice is rejected.
fn rejecting(patience: usize) -> MemoryOptions {
    MemoryOptions { presence_threshold: 1e9, patience, ..MemoryOptions::default() }
}

#[test]
fn memory_chains_stop_where_presence_fails_and_encode_nothing_beyond() {
    let (img, _, sup) = ct();
    let plane = 80 * 72;
    let mut calls = Vec::new();
    let opts = SegmentOptions { memory: rejecting(2), components: ComponentsMode::All, ..Default::default() };
    let (out, summary) = segment(model(), view(&img), &sup.data, &opts, &mut |d, t| {
        calls.push((d, t));
        true
    })
    .unwrap();
    // Two rejected slices on each side of slice 3, then the chains end: 1, 2, 4, 5 scored, 0 and 6 not.
    assert_eq!(summary.slices_processed, 4);
    assert_eq!(calls.last(), Some(&(4, 4)), "the total shrinks to the work done: {calls:?}");
    // Rejected slices stay empty; the painted slice is the user's.
    for k in 0..7 {
        let any = out[k * plane..(k + 1) * plane].iter().any(|&l| l != 0);
        assert_eq!(any, k == 3, "slice {k}");
    }
    assert_eq!(&out[3 * plane..4 * plane], &sup.data[3 * plane..4 * plane]);
    // Under a fixed extent the same chains score every slice and keep their predictions.
    let all = SegmentOptions { extent: ExtentMode::All, ..opts.clone() };
    let (out, summary) = run(&img, &sup.data, &all).unwrap();
    assert_eq!(summary.slices_processed, 6);
    assert!((0..7).filter(|&k| k != 3).any(|k| out[k * plane..(k + 1) * plane].iter().any(|&l| l != 0)));
}

#[test]
fn memory_without_memory_or_prior_scores_like_independent() {
    let (img, _, sup) = ct();
    // No memory slice, no prior, every slice accepted: each slice is scored against the painted slice
    // alone, which is the independent protocol, value for value.
    let memory = MemoryOptions {
        size: 0,
        prior_gain: 0.0,
        leak_gate: 0.0,
        presence_threshold: f32::NEG_INFINITY,
        presence_drop: 0.0,
        stop_probability: 0.0,
        min_area_fraction: 0.0,
        copy_tolerance: 0.0,
        refine_band: 0.0,
        ..MemoryOptions::default()
    };
    for extent in [ExtentMode::All, ExtentMode::Range(1, 5)] {
        let base =
            SegmentOptions { extent, components: ComponentsMode::All, memory: memory.clone(), ..Default::default() };
        let (m, ms) = run(&img, &sup.data, &base).unwrap();
        let (i, is) =
            run(&img, &sup.data, &SegmentOptions { propagation: Propagation::Independent, ..base.clone() }).unwrap();
        assert_eq!(m, i, "extent {extent:?}");
        assert_eq!(ms.slices_processed, is.slices_processed);
    }
    // With a memory the scores change.
    let base = SegmentOptions {
        extent: ExtentMode::All,
        components: ComponentsMode::All,
        memory: MemoryOptions { size: 3, ..memory },
        ..Default::default()
    };
    let mut cache = FeatureCache::default();
    let (m, _) = segment_cached(model(), view(&img), &sup.data, &base, &mut |_, _| true, &mut cache).unwrap();
    let (i, _) = segment_cached(
        model(),
        view(&img),
        &sup.data,
        &SegmentOptions { propagation: Propagation::Independent, ..base },
        &mut |_, _| true,
        &mut cache,
    )
    .unwrap();
    assert_ne!(m, i);
}

#[test]
fn slices_in_the_copy_zone_get_the_painted_mask() {
    let (img, _, sup) = ct();
    let plane = 80 * 72;
    let painted = &sup.data[3 * plane..4 * plane];
    let accept_all = MemoryOptions {
        presence_threshold: f32::NEG_INFINITY,
        min_area_fraction: 0.0,
        presence_drop: 0.0,
        stop_probability: 0.0,
        refine_band: 0.0,
        ..MemoryOptions::default()
    };
    let opts = |copy_tolerance: f64| SegmentOptions {
        extent: ExtentMode::All,
        components: ComponentsMode::All,
        memory: MemoryOptions { copy_tolerance, ..accept_all.clone() },
        ..Default::default()
    };
    // A zone wider than the volume: every slice is the painted one.
    let (out, _) = run(&img, &sup.data, &opts(1e6)).unwrap();
    for k in 0..7 {
        assert_eq!(&out[k * plane..(k + 1) * plane], painted, "slice {k}");
    }
    // No zone: the model's own predictions, which differ from the painted mask somewhere.
    let (out, _) = run(&img, &sup.data, &opts(0.0)).unwrap();
    assert!((0..7).filter(|&k| k != 3).any(|k| &out[k * plane..(k + 1) * plane] != painted));
    // A zone of one slice's thickness (zone = sqrt(2 R tolerance cell), a cell = 8 canvas pixels of a
    // 256-pixel canvas over the slice's longer side): slices 2 and 4 are copies, the rest are not all copies.
    let [sx, sy, sz] = img.geometry.spacing;
    let area = painted.iter().filter(|&&l| l != 0).count() as f64 * sx * sy;
    let radius = (area / std::f64::consts::PI).sqrt();
    let cell = 8.0 * (80.0 * sx).max(72.0 * sy) / 256.0;
    let one_slice = (1.01 * sz).powi(2) / (2.0 * radius * cell);
    let (out, _) = run(&img, &sup.data, &opts(one_slice)).unwrap();
    for k in [2, 4] {
        assert_eq!(&out[k * plane..(k + 1) * plane], painted, "slice {k}");
    }
}

#[test]
fn refinement_moves_only_pixels_near_the_model_boundary() {
    let (img, gt, sup) = ct();
    let (rows, cols, plane) = (72, 80, 80 * 72);
    let accept_all = MemoryOptions {
        presence_threshold: f32::NEG_INFINITY,
        min_area_fraction: 0.0,
        presence_drop: 0.0,
        stop_probability: 0.0,
        copy_tolerance: 0.0,
        ..MemoryOptions::default()
    };
    let opts = |refine_band: f64| SegmentOptions {
        extent: ExtentMode::All,
        components: ComponentsMode::All,
        memory: MemoryOptions { refine_band, ..accept_all.clone() },
        ..Default::default()
    };
    let (plain, _) = run(&img, &sup.data, &opts(0.0)).unwrap();
    // Half a cell: a cell is 8 × 64 mm / 256 = 2 mm, so the band is round(1 mm / 0.8 mm) = 1 pixel.
    let (refined, _) = run(&img, &sup.data, &opts(0.5)).unwrap();
    assert_eq!(&refined[3 * plane..4 * plane], &plain[3 * plane..4 * plane], "the painted slice is never refined");
    let mut changed = 0;
    for k in (0..7).filter(|&k| k != 3) {
        let m: Vec<bool> = plain[k * plane..(k + 1) * plane].iter().map(|&l| l != 0).collect();
        let grown = dspnet::volume::refine::dilate(&m, rows, cols, 1);
        let not: Vec<bool> = m.iter().map(|v| !v).collect();
        let near_bg = dspnet::volume::refine::dilate(&not, rows, cols, 1);
        for p in 0..plane {
            if (refined[k * plane + p] != 0) != m[p] {
                assert!(grown[p] && near_bg[p], "slice {k} pixel {p} changed away from the boundary");
                changed += 1;
            }
        }
    }
    assert!(changed > 0, "the band changed nothing");
    // On this CT the intensities know the liver's edge better than the 8-pixel feature grid does.
    let dice = |out: &[u16]| {
        let (mut tp, mut n) = (0usize, 0usize);
        for (o, t) in out.iter().zip(&gt.data) {
            tp += usize::from(*o != 0 && *t != 0);
            n += usize::from(*o != 0) + usize::from(*t != 0);
        }
        2.0 * tp as f64 / n as f64
    };
    assert!(dice(&refined) > dice(&plain), "refined {:.4} plain {:.4}", dice(&refined), dice(&plain));
}

#[test]
fn memory_chains_meet_where_the_nearer_painted_slice_wins() {
    let (img, gt, _) = ct();
    let plane = 80 * 72;
    // Paint slices 1 and 5: slices 0, 2, 3 belong to slice 1's chains (3 is a tie: the lower wins), 4 and
    // 6 to slice 5's. Each query slice is scored exactly once.
    let sup: Vec<u16> =
        gt.data.iter().enumerate().map(|(v, &l)| if [1, 5].contains(&(v / plane)) { l } else { 0 }).collect();
    assert!(sup[plane..2 * plane].contains(&1) && sup[5 * plane..6 * plane].contains(&1));
    let opts = SegmentOptions { extent: ExtentMode::All, components: ComponentsMode::All, ..Default::default() };
    let (out, summary) = run(&img, &sup, &opts).unwrap();
    assert_eq!(summary.slices_processed, 5);
    for k in [1, 5] {
        assert_eq!(&out[k * plane..(k + 1) * plane], &sup[k * plane..(k + 1) * plane], "painted slice {k} is kept");
    }
    // Under auto extent a chain that is rejected at once scores one slice per side and painted slice.
    let stop = SegmentOptions { extent: ExtentMode::Auto, memory: rejecting(1), ..opts };
    let (_, summary) = run(&img, &sup, &stop).unwrap();
    assert_eq!(summary.slices_processed, 4, "0, 2 from slice 1; 4, 6 from slice 5");
}

#[test]
fn bad_memory_options_are_rejected() {
    let (img, _, sup) = ct();
    for memory in [
        MemoryOptions { patience: 0, ..MemoryOptions::default() },
        MemoryOptions { painted_weight: 0.0, ..MemoryOptions::default() },
        MemoryOptions { prior_gain: f32::NAN, ..MemoryOptions::default() },
        MemoryOptions { prior_radius_mm: 0.0, ..MemoryOptions::default() },
        MemoryOptions { presence_threshold: f32::NAN, ..MemoryOptions::default() },
        MemoryOptions { copy_tolerance: -1.0, ..MemoryOptions::default() },
        MemoryOptions { copy_tolerance: f64::INFINITY, ..MemoryOptions::default() },
        MemoryOptions { refine_band: f64::NAN, ..MemoryOptions::default() },
        MemoryOptions { stop_probability: 1.5, ..MemoryOptions::default() },
        MemoryOptions { stop_probability: f32::NAN, ..MemoryOptions::default() },
    ] {
        let e = run(&img, &sup.data, &SegmentOptions { memory: memory.clone(), ..Default::default() }).unwrap_err();
        assert!(
            matches!(e, DspnetError::InvalidArgument(_)) && e.to_string().contains("memory propagation"),
            "{memory:?}: {e}"
        );
    }
}
