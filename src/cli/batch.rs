//! `dspnet batch`: many studies from a CSV manifest, one model load, resumable.
//!
//! Each study is isolated (its error is recorded and the run goes on); outputs are written atomically;
//! a journal (JSON lines, appended and synced after each study's output is in place) lets a rerun skip
//! what is done and redo what was interrupted or failed. Killing the process at any moment loses no
//! finished study and leaves no partial output: a study is "done" only once its output has been renamed
//! into place and its journal line written.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Args, ValueEnum};
use dspnet::volume::{self, SegmentOptions};
use dspnet::{DspnetError, Result};
use indicatif::{ProgressBar, ProgressStyle};

use super::segment::{parse_axis, parse_extent, ComponentsArg, FovArg, ModalityArg, ModelArgs, PropagationArg};

#[derive(Args)]
pub struct BatchArgs {
    /// CSV manifest with a header row: columns image, support, output (paths relative to the manifest's
    /// folder unless absolute), and optional per-study columns classes (e.g. "1;3"), axis, extent,
    /// modality, fov, components, propagation, which override the options below for that study.
    manifest: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// Journal of finished studies (default: MANIFEST with ".journal.jsonl" appended). Shards may share it.
    #[arg(long)]
    journal: Option<PathBuf>,
    /// Process only studies I, I+N, I+2N, ... (0-based study index I of N), e.g. a job array's task.
    #[arg(long, value_parser = parse_shard)]
    shard: Option<(usize, usize)>,
    /// Write a per-study report (status, error, seconds, labelled voxels) as .csv or .json.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Redo every study, ignoring the journal.
    #[arg(long)]
    force: bool,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

fn parse_shard(s: &str) -> std::result::Result<(usize, usize), String> {
    let (i, n) = s.split_once('/').ok_or(format!("'{s}': expected I/N, e.g. 0/4"))?;
    let (i, n) = (
        i.trim().parse::<usize>().map_err(|_| format!("'{s}': I must be a number"))?,
        n.trim().parse::<usize>().map_err(|_| format!("'{s}': N must be a number"))?,
    );
    if n == 0 || i >= n {
        return Err(format!("'{s}': need 0 <= I < N"));
    }
    Ok((i, n))
}

/// One manifest row, resolved.
struct Study {
    /// 0-based row index (without the header).
    index: usize,
    image: PathBuf,
    support: PathBuf,
    output: PathBuf,
    /// Per-study option overrides, or the error that makes the row unusable.
    options: std::result::Result<SegmentOptions, String>,
}

/// What happened to a study in this run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Status {
    Done,
    /// Done by an earlier run (journal), output present.
    Skipped,
    Failed,
}

impl Status {
    fn name(self) -> &'static str {
        match self {
            Status::Done => "done",
            Status::Skipped => "skipped",
            Status::Failed => "failed",
        }
    }
}

struct Outcome {
    status: Status,
    error: Option<String>,
    seconds: f64,
    labelled_voxels: Option<usize>,
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p.trim());
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// The study's options: the command line's, with the row's overrides.
fn study_options(base: &SegmentOptions, row: &HashMap<String, String>) -> std::result::Result<SegmentOptions, String> {
    let mut o = base.clone();
    let get = |k: &str| row.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    if let Some(v) = get("classes") {
        let classes: std::result::Result<Vec<u16>, _> =
            v.split([';', ' ', ',']).filter(|c| !c.is_empty()).map(|c| c.parse::<u16>()).collect();
        o.classes = Some(classes.map_err(|_| format!("classes '{v}': expected label values separated by ';'"))?);
    }
    if let Some(v) = get("axis") {
        o.axis = parse_axis(v).map_err(|e| format!("axis: {e}"))?;
    }
    if let Some(v) = get("extent") {
        o.extent = parse_extent(v).map_err(|e| format!("extent: {e}"))?;
    }
    // A value in the row is parsed as the same command-line flag would be.
    fn flag<T: ValueEnum>(name: &str, v: &str) -> std::result::Result<T, String> {
        T::from_str(v, true).map_err(|e| format!("{name}: {e}"))
    }
    if let Some(v) = get("modality") {
        o.modality = flag::<ModalityArg>("modality", v)?.into();
    }
    if let Some(v) = get("fov") {
        o.fov = flag::<FovArg>("fov", v)?.into();
    }
    if let Some(v) = get("components") {
        o.components = flag::<ComponentsArg>("components", v)?.into();
    }
    if let Some(v) = get("propagation") {
        o.propagation = flag::<PropagationArg>("propagation", v)?.into();
    }
    Ok(o)
}

const KNOWN_COLUMNS: [&str; 10] =
    ["image", "support", "output", "classes", "axis", "extent", "modality", "fov", "components", "propagation"];

fn read_manifest(path: &Path, base_options: &SegmentOptions) -> Result<Vec<Study>> {
    let bad = |m: String| DspnetError::InvalidArgument(format!("manifest {}: {m}", path.display()));
    let mut reader =
        csv::ReaderBuilder::new().trim(csv::Trim::All).flexible(false).from_path(path).map_err(|e| match e.kind() {
            csv::ErrorKind::Io(_) => DspnetError::io(path, std::io::Error::other(e.to_string())),
            _ => bad(e.to_string()),
        })?;
    let header: Vec<String> =
        reader.headers().map_err(|e| bad(e.to_string()))?.iter().map(|h| h.to_ascii_lowercase()).collect();
    for required in ["image", "support", "output"] {
        if !header.iter().any(|h| h == required) {
            return Err(bad(format!("the header row has no '{required}' column (columns: {})", header.join(", "))));
        }
    }
    if let Some(unknown) = header.iter().find(|h| !KNOWN_COLUMNS.contains(&h.as_str())) {
        return Err(bad(format!("unknown column '{unknown}' (known: {})", KNOWN_COLUMNS.join(", "))));
    }
    let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut studies = Vec::new();
    for (index, record) in reader.records().enumerate() {
        let record = record.map_err(|e| bad(format!("row {}: {e}", index + 2)))?;
        let row: HashMap<String, String> = header.iter().cloned().zip(record.iter().map(str::to_string)).collect();
        let field = |k: &str| row.get(k).cloned().unwrap_or_default();
        studies.push(Study {
            index,
            image: resolve(base, &field("image")),
            support: resolve(base, &field("support")),
            output: resolve(base, &field("output")),
            options: study_options(base_options, &row),
        });
    }
    let mut outputs: HashMap<&Path, usize> = HashMap::new();
    for s in &studies {
        if let Some(first) = outputs.insert(&s.output, s.index) {
            return Err(bad(format!(
                "rows {} and {} write the same output {}",
                first + 2,
                s.index + 2,
                s.output.display()
            )));
        }
    }
    Ok(studies)
}

/// The journal key of a study: its three paths.
fn key(s: &Study) -> String {
    format!("{}\u{1f}{}\u{1f}{}", s.image.display(), s.support.display(), s.output.display())
}

/// Studies the journal records as done (unparseable lines, e.g. one cut by a kill, are ignored).
fn read_journal(path: &Path) -> Result<HashMap<String, bool>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(DspnetError::io(path, e)),
    };
    let mut done = HashMap::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if let (Some(k), Some(st)) = (v["key"].as_str(), v["status"].as_str()) {
            done.insert(k.to_string(), st == "done");
        }
    }
    Ok(done)
}

/// Append one line and sync it: after this returns the record survives a kill or a power cut.
fn append_journal(path: &Path, line: &serde_json::Value) -> Result<()> {
    let mut f =
        std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| DspnetError::io(path, e))?;
    // One write of the whole line: appends from several shards do not interleave within a line.
    let mut text = line.to_string();
    text.push('\n');
    f.write_all(text.as_bytes()).and_then(|()| f.sync_data()).map_err(|e| DspnetError::io(path, e))
}

fn run_study(model: &dspnet::model::Model, s: &Study) -> Result<usize> {
    let opts = s.options.clone().map_err(DspnetError::InvalidArgument)?;
    let (labels, _) = volume::segment_files(model, &s.image, &s.support, &s.output, &opts, &mut |_, _| true)?;
    Ok(labels.data.iter().filter(|&&l| l != 0).count())
}

fn write_report(path: &Path, studies: &[&Study], outcomes: &[Outcome]) -> Result<()> {
    let json = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let rows: Vec<serde_json::Value> = studies
        .iter()
        .zip(outcomes)
        .map(|(s, o)| {
            serde_json::json!({
                "study": s.index, "image": s.image.display().to_string(), "support": s.support.display().to_string(),
                "output": s.output.display().to_string(), "status": o.status.name(), "error": o.error,
                "seconds": o.seconds, "labelled_voxels": o.labelled_voxels,
            })
        })
        .collect();
    dspnet::util::write_atomically(path, |tmp| {
        let io = |e: std::io::Error| DspnetError::io(tmp, e);
        if json {
            std::fs::write(
                tmp,
                serde_json::to_string_pretty(&serde_json::json!({ "studies": rows })).unwrap_or_default(),
            )
            .map_err(io)
        } else {
            let mut w =
                csv::Writer::from_path(tmp).map_err(|e| DspnetError::io(tmp, std::io::Error::other(e.to_string())))?;
            let csv_err = |e: csv::Error| DspnetError::io(tmp, std::io::Error::other(e.to_string()));
            w.write_record(["study", "image", "support", "output", "status", "error", "seconds", "labelled_voxels"])
                .map_err(csv_err)?;
            for (s, o) in studies.iter().zip(outcomes) {
                w.write_record([
                    s.index.to_string(),
                    s.image.display().to_string(),
                    s.support.display().to_string(),
                    s.output.display().to_string(),
                    o.status.name().to_string(),
                    o.error.clone().unwrap_or_default(),
                    format!("{:.3}", o.seconds),
                    o.labelled_voxels.map_or(String::new(), |v| v.to_string()),
                ])
                .map_err(csv_err)?;
            }
            w.flush().map_err(io)
        }
    })
}

pub fn run(a: BatchArgs) -> Result<()> {
    let base = a.model.options();
    let studies = read_manifest(&a.manifest, &base)?;
    let journal = a.journal.clone().unwrap_or_else(|| {
        let mut p = a.manifest.clone().into_os_string();
        p.push(".journal.jsonl");
        PathBuf::from(p)
    });
    let mine: Vec<&Study> = studies.iter().filter(|s| a.shard.is_none_or(|(i, n)| s.index % n == i)).collect();
    let done = if a.force { HashMap::new() } else { read_journal(&journal)? };
    let todo = mine.iter().filter(|s| !(done.get(&key(s)) == Some(&true) && s.output.exists())).count();
    // One model for the whole run, loaded only when there is work.
    let model = if todo > 0 { Some(a.model.load_model()?) } else { None };

    let bar = if a.quiet { ProgressBar::hidden() } else { ProgressBar::new(mine.len() as u64) };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} studies, {msg} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut outcomes = Vec::with_capacity(mine.len());
    let mut failed = 0usize;
    for s in &mine {
        let t0 = Instant::now();
        let outcome = if done.get(&key(s)) == Some(&true) && s.output.exists() {
            Outcome { status: Status::Skipped, error: None, seconds: 0.0, labelled_voxels: None }
        } else {
            let model = model.as_ref().expect("loaded when there is work");
            let r = run_study(model, s);
            let seconds = t0.elapsed().as_secs_f64();
            let outcome = match r {
                Ok(v) => Outcome { status: Status::Done, error: None, seconds, labelled_voxels: Some(v) },
                Err(e) => {
                    Outcome { status: Status::Failed, error: Some(e.to_string()), seconds, labelled_voxels: None }
                }
            };
            append_journal(
                &journal,
                &serde_json::json!({
                    "key": key(s), "study": s.index, "output": s.output.display().to_string(), "status": outcome.status.name(),
                    "error": outcome.error, "seconds": outcome.seconds, "labelled_voxels": outcome.labelled_voxels,
                }),
            )?;
            outcome
        };
        if outcome.status == Status::Failed {
            failed += 1;
            bar.suspend(|| {
                eprintln!("study {} ({}): {}", s.index, s.image.display(), outcome.error.as_deref().unwrap_or(""))
            });
        }
        outcomes.push(outcome);
        bar.set_message(format!("{failed} failed"));
        bar.inc(1);
    }
    bar.finish_and_clear();
    if let Some(r) = &a.report {
        write_report(r, &mine, &outcomes)?;
    }
    let count = |st: Status| outcomes.iter().filter(|o| o.status == st).count();
    if !a.quiet {
        eprintln!(
            "{} studies: {} done, {} skipped (done before), {} failed; journal {}",
            mine.len(),
            count(Status::Done),
            count(Status::Skipped),
            failed,
            journal.display()
        );
    }
    if failed > 0 {
        return Err(DspnetError::InvalidArgument(format!(
            "{failed} of {} studies failed (see the messages above or the report)",
            mine.len()
        )));
    }
    Ok(())
}
