//! `dspnet bench --session`: what an interactive session saves. In one process: a first run on a
//! session, a correction painted on the slice the run suggests, the re-run on the same session, and the
//! same corrected run without a session (today's cost of a correction) as the reference.

use std::path::PathBuf;
use std::time::Instant;

use dspnet::model::Model;
use dspnet::volume::session::slice_feature_bytes;
use dspnet::volume::slicing::slice_indices;
use dspnet::volume::{self, SegmentOptions, Session, VolumeRef};
use dspnet::{DspnetError, Result};

/// Where the session bench's image comes from.
pub struct SessionBench {
    /// An image file, or `synthetic:NIxNJxNK` for a CT-like phantom of that size.
    pub image: String,
    /// Support labels for an image file (a synthetic phantom paints its own).
    pub support: Option<PathBuf>,
    /// Ground truth to paint the correction from (default: the first run's own prediction there).
    pub truth: Option<PathBuf>,
    /// Feature budget in MB (0 = the library default).
    pub budget_mb: usize,
    pub json: bool,
}

/// A CT-like phantom: air outside an elliptic body of soft tissue, with an ellipsoidal organ brighter than
/// its surroundings spanning the middle third of the slices. Returns (HU image, organ labels).
fn phantom(dims: [usize; 3]) -> (Vec<f32>, Vec<u16>) {
    let [ni, nj, nk] = dims;
    let n = ni * nj * nk;
    let (mut img, mut lab) = (vec![-1000f32; n], vec![0u16; n]);
    for k in 0..nk {
        for j in 0..nj {
            for i in 0..ni {
                let (x, y, z) = (i as f64 / ni as f64 - 0.5, j as f64 / nj as f64 - 0.5, k as f64 / nk as f64 - 0.5);
                let v = i + ni * (j + nj * k);
                // Deterministic texture so that slices differ.
                let texture = (((i * 7 + j * 13 + k * 29) % 17) as f32 - 8.0) * 2.0;
                if (x / 0.45).powi(2) + (y / 0.35).powi(2) < 1.0 {
                    img[v] = 30.0 + texture;
                }
                if ((x - 0.12) / 0.15).powi(2) + (y / 0.12).powi(2) + (z / 0.17).powi(2) < 1.0 {
                    img[v] = 120.0 + texture;
                    lab[v] = 1;
                }
            }
        }
    }
    (img, lab)
}

fn parse_dims(s: &str) -> Result<[usize; 3]> {
    let d: Vec<usize> =
        s.split('x').map(|p| p.parse::<usize>()).collect::<std::result::Result<_, _>>().map_err(|_| bad_dims(s))?;
    match d[..] {
        [a, b, c] if a > 0 && b > 0 && c > 0 => Ok([a, b, c]),
        _ => Err(bad_dims(s)),
    }
}

fn bad_dims(s: &str) -> DspnetError {
    DspnetError::InvalidArgument(format!(
        "--session synthetic:{s}: expected synthetic:NIxNJxNK, e.g. synthetic:512x512x300"
    ))
}

/// Labels of `labels` on slice `z` only (the rest 0).
fn only_slice(labels: &[u16], dims: [usize; 3], axis: usize, z: usize, into: &mut [u16]) {
    for v in slice_indices(dims, axis, z) {
        into[v] = labels[v];
    }
}

fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub fn run(b: SessionBench, model: &Model, opts: &SegmentOptions) -> Result<()> {
    let (image, dims, spacing, support, truth) = match b.image.strip_prefix("synthetic:") {
        Some(d) => {
            let dims = parse_dims(d)?;
            let (img, lab) = phantom(dims);
            let mut support = vec![0u16; lab.len()];
            only_slice(&lab, dims, 2, dims[2] / 2, &mut support);
            (img, dims, [0.8, 0.8, 1.5], support, Some(lab))
        }
        None => {
            let path = std::path::Path::new(&b.image);
            let truth = match &b.truth {
                Some(t) => Some(dspnet::volume::read_study(path, t)?.1.data),
                None => None,
            };
            let (img, support) = match (&b.support, &truth) {
                (Some(sup), _) => {
                    let (img, lab) = dspnet::volume::read_study(path, sup)?;
                    (img, lab.data)
                }
                // No support given: the truth on its middle labelled slice along k, as `dspnet eval` paints.
                (None, Some(t)) => {
                    let img = dspnet::volume::read_study(path, b.truth.as_ref().expect("truth"))?.0;
                    let dims = img.geometry.dims;
                    let labelled: Vec<usize> =
                        (0..dims[2]).filter(|&z| slice_indices(dims, 2, z).any(|v| t[v] != 0)).collect();
                    let z = *labelled
                        .get(labelled.len() / 2)
                        .ok_or_else(|| DspnetError::empty_support(None, None, "the truth has no labelled voxel"))?;
                    let mut support = vec![0u16; t.len()];
                    only_slice(t, dims, 2, z, &mut support);
                    (img, support)
                }
                (None, None) => {
                    return Err(DspnetError::InvalidArgument(
                        "--session IMAGE needs --support LABELS or --truth LABELS".into(),
                    ))
                }
            };
            (img.data, img.geometry.dims, img.geometry.spacing, support, truth)
        }
    };
    let budget = b.budget_mb << 20;
    let rss0 = peak_rss_mb();
    let mut session = Session::new(model, image, dims, spacing, budget)?;

    let t = Instant::now();
    let (first, s1) = session.segment(model, &support, opts, &mut |_, _| true)?;
    let first_s = t.elapsed().as_secs_f64();
    let after_first = session.stats();

    // The correction: the slice the run points at, painted from the truth (or the run's own prediction).
    let axis = s1.axis;
    let z = *s1
        .suggested_slices
        .first()
        .ok_or_else(|| DspnetError::InvalidArgument("the first run predicted nothing: no slice to correct".into()))?;
    let mut corrected = support.clone();
    only_slice(truth.as_deref().unwrap_or(&first), dims, axis, z, &mut corrected);
    let t = Instant::now();
    let (_, s2) = session.segment(model, &corrected, opts, &mut |_, _| true)?;
    let rerun_s = t.elapsed().as_secs_f64();
    let after_rerun = session.stats();
    let held = session.held_bytes();
    let peak_session = peak_rss_mb();

    // Reference: the corrected run from nothing, as without a session.
    // The session owns its image copy: drop it, then load the image again for the one-shot run.
    drop(session);
    let image_copy: Vec<f32> = {
        match b.image.strip_prefix("synthetic:") {
            Some(d) => phantom(parse_dims(d)?).0,
            None => dspnet::io::read_image(std::path::Path::new(&b.image))?.data,
        }
    };
    let t = Instant::now();
    let (_, s3) =
        volume::segment(model, VolumeRef { data: &image_copy, dims, spacing }, &corrected, opts, &mut |_, _| true)?;
    let oneshot_s = t.elapsed().as_secs_f64();

    let one_slice = slice_feature_bytes(model);
    let j = serde_json::json!({
        "dims": dims,
        "slice_axis": axis,
        "feature_budget_bytes": if budget == 0 { volume::session::DEFAULT_FEATURE_BUDGET } else { budget },
        "slice_feature_bytes": one_slice,
        "first_run_seconds": first_s,
        "first_run_slices_scored": s1.slices_processed,
        "first_run_slices_encoded": after_first.encoded,
        "corrected_slice": z,
        "rerun_seconds": rerun_s,
        "rerun_slices_scored": s2.slices_processed,
        "rerun_slices_encoded": after_rerun.encoded - after_first.encoded,
        "rerun_over_first": rerun_s / first_s,
        "oneshot_corrected_seconds": oneshot_s,
        "oneshot_slices_scored": s3.slices_processed,
        "rerun_over_oneshot": rerun_s / oneshot_s,
        "session_cached_slices": after_rerun.slices,
        "session_cached_bytes": after_rerun.bytes,
        "session_evicted": after_rerun.evicted,
        "session_chain_bytes": after_rerun.chain_bytes,
        "rerun_chains_replayed": after_rerun.chains_replayed - after_first.chains_replayed,
        "session_held_bytes": held,
        "peak_rss_mb_before_session": rss0,
        "peak_rss_mb_after_session": peak_session,
        "peak_rss_mb": peak_rss_mb(),
    });
    if b.json {
        println!("{j}");
        return Ok(());
    }
    println!("image             {dims:?}, slice axis {}", ["i", "j", "k"][axis]);
    println!(
        "first run         {first_s:.2} s ({} slices scored, {} encoded)",
        s1.slices_processed, after_first.encoded
    );
    println!("correction        slice {z} (least confident)");
    println!(
        "re-run (session)  {rerun_s:.2} s ({} slices scored, {} encoded, {} chains replayed): {:.3} x the first run",
        s2.slices_processed,
        after_rerun.encoded - after_first.encoded,
        after_rerun.chains_replayed - after_first.chains_replayed,
        rerun_s / first_s
    );
    println!(
        "re-run (no session) {oneshot_s:.2} s ({} slices scored): the session re-run is {:.3} x this",
        s3.slices_processed,
        rerun_s / oneshot_s
    );
    println!(
        "session holds     {} slices, {:.0} MB of features (budget {:.0} MB, {} dropped), {:.0} MB in all with the image",
        after_rerun.slices,
        after_rerun.bytes as f64 / 1048576.0,
        j["feature_budget_bytes"].as_u64().unwrap_or(0) as f64 / 1048576.0,
        after_rerun.evicted,
        held as f64 / 1048576.0
    );
    println!(
        "peak RSS          {} before the session, {} after the session's runs",
        rss0.map_or("n/a".into(), |p| format!("{p:.0} MB")),
        peak_session.map_or("n/a".into(), |p| format!("{p:.0} MB"))
    );
    Ok(())
}
