//! `dspnet batch` end to end: failure isolation, the journal (resume, also after a kill), sharding, the
//! report, and results identical to `dspnet segment`. Synthetic weights: mechanics, not anatomy.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use dspnet::io::read_labels;

/// Three CT studies (support on slices 2, 3 and 4), in their own folders under `dir`.
fn studies(name: &str) -> (PathBuf, Vec<Case>) {
    let dir = tempdir(name);
    let cases = (2..5).map(|k| ct_case(&format!("{name}-{k}"), k)).collect();
    (dir, cases)
}

fn manifest(dir: &Path, rows: &[String]) -> PathBuf {
    let p = dir.join("studies.csv");
    let mut text = String::from("image,support,output,extent\n");
    for r in rows {
        text.push_str(r);
        text.push('\n');
    }
    std::fs::write(&p, text).unwrap();
    p
}

fn row(c: &Case, out: &str) -> String {
    format!("{},{},{out},1:6", c.image.display(), c.support.display())
}

fn batch(manifest: &Path, extra: &[&str]) -> std::process::Output {
    let mut a = args!["batch", manifest, "--weights", weights(), "--device", "cpu", "--quiet"];
    a.extend(extra.iter().map(std::ffi::OsString::from));
    dspnet(a)
}

fn report_statuses(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let status = r.headers().unwrap().iter().position(|h| h == "status").unwrap();
    r.records().map(|rec| rec.unwrap()[status].to_string()).collect()
}

#[test]
fn failures_are_isolated_and_a_rerun_skips_what_is_done() {
    let (dir, cases) = studies("batch-isolation");
    let rows = vec![
        row(&cases[0], "out/a.nii.gz"),
        format!("{},{},out/missing.nii.gz,1:6", dir.join("no-such-image.nrrd").display(), cases[0].support.display()),
        row(&cases[1], "out/b.nrrd"),
        format!("{},{},out/bad-extent.nii.gz,sideways", cases[2].image.display(), cases[2].support.display()),
        row(&cases[2], "out/c.nii.gz"),
    ];
    let m = manifest(&dir, &rows);
    let report = dir.join("report.csv");
    let o = batch(&m, &["--report", report.to_str().unwrap()]);
    assert!(!o.status.success(), "failures must give a non-zero exit");
    assert!(stderr(&o).contains("2 of 5 studies failed"), "{}", stderr(&o));
    assert!(stderr(&o).contains("no-such-image.nrrd"), "{}", stderr(&o));
    assert_eq!(report_statuses(&report), ["done", "failed", "done", "failed", "done"]);
    assert!(!dir.join("out/missing.nii.gz").exists() && !dir.join("out/bad-extent.nii.gz").exists());

    // Same labels as `dspnet segment` with the same options.
    for (case, out) in [(&cases[0], "out/a.nii.gz"), (&cases[1], "out/b.nrrd"), (&cases[2], "out/c.nii.gz")] {
        let single = case.dir.join("single.nii.gz");
        let s = dspnet(args![
            "segment",
            case.image,
            "--support",
            case.support,
            "-o",
            single,
            "--weights",
            weights(),
            "--device",
            "cpu",
            "--quiet",
            "--extent",
            "1:6"
        ]);
        assert!(s.status.success(), "{}", stderr(&s));
        assert_eq!(read_labels(&dir.join(out)).unwrap().data, read_labels(&single).unwrap().data, "{out}");
    }

    // A rerun redoes only the failed studies; fixing the manifest ends with success.
    let before = std::fs::metadata(dir.join("out/a.nii.gz")).unwrap().modified().unwrap();
    let o = batch(&m, &["--report", report.to_str().unwrap()]);
    assert!(!o.status.success());
    assert_eq!(report_statuses(&report), ["skipped", "failed", "skipped", "failed", "skipped"]);
    assert_eq!(
        std::fs::metadata(dir.join("out/a.nii.gz")).unwrap().modified().unwrap(),
        before,
        "a done study was redone"
    );
    let fixed = manifest(&dir, &[rows[0].clone(), rows[2].clone(), rows[4].clone()]);
    let json = dir.join("report.json");
    let o = batch(&fixed, &["--report", json.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(v["studies"].as_array().unwrap().iter().all(|s| s["status"] == "skipped"), "{v}");

    // A deleted output is redone even though the journal says done.
    std::fs::remove_file(dir.join("out/b.nrrd")).unwrap();
    let o = batch(&fixed, &["--report", report.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(report_statuses(&report), ["skipped", "done", "skipped"]);
}

#[test]
fn shards_split_the_studies_and_share_the_journal() {
    let (dir, cases) = studies("batch-shards");
    let rows: Vec<String> = cases.iter().enumerate().map(|(i, c)| row(c, &format!("out/{i}.nii.gz"))).collect();
    let m = manifest(&dir, &rows);
    let o = batch(&m, &["--shard", "1/2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let exists: Vec<bool> = (0..3).map(|i| dir.join(format!("out/{i}.nii.gz")).exists()).collect();
    assert_eq!(exists, [false, true, false]);
    let report = dir.join("r.csv");
    let o = batch(&m, &["--shard", "0/2", "--report", report.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(report_statuses(&report), ["done", "done"]);
    let o = batch(&m, &["--report", report.to_str().unwrap()]);
    assert!(o.status.success());
    assert_eq!(report_statuses(&report), ["skipped", "skipped", "skipped"]);
    for bad in ["2/2", "1", "0/0", "a/3"] {
        let o = batch(&m, &["--shard", bad]);
        assert!(!o.status.success() && stderr(&o).contains("shard"), "{bad}: {}", stderr(&o));
    }
}

#[test]
fn bad_manifests_are_named() {
    let dir = tempdir("batch-bad-manifest");
    let m = dir.join("m.csv");
    std::fs::write(&m, "image,output\na.nrrd,b.nrrd\n").unwrap();
    let o = batch(&m, &[]);
    assert!(!o.status.success() && stderr(&o).contains("no 'support' column"), "{}", stderr(&o));
    std::fs::write(&m, "image,support,output,colour\na,b,c,red\n").unwrap();
    assert!(stderr(&batch(&m, &[])).contains("unknown column 'colour'"));
    std::fs::write(&m, "image,support,output\na,b,c.nii\nd,e,c.nii\n").unwrap();
    assert!(stderr(&batch(&m, &[])).contains("same output"));
    std::fs::write(&m, "image,support,output\na,b\n").unwrap();
    assert!(stderr(&batch(&m, &[])).contains("row 2"), "{}", stderr(&batch(&m, &[])));
    assert!(stderr(&batch(&dir.join("none.csv"), &[])).contains("none.csv"));
}

#[test]
fn a_killed_run_loses_nothing_finished_and_resumes() {
    let (dir, cases) = studies("batch-kill");
    // Six studies (each case twice), so that a kill lands in the middle.
    let rows: Vec<String> = (0..6).map(|i| row(&cases[i % 3], &format!("out/{i}.nii.gz"))).collect();
    let m = manifest(&dir, &rows);
    let journal = dir.join("studies.csv.journal.jsonl");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dspnet"))
        .args(args!["batch", m, "--weights", weights(), "--device", "cpu", "--quiet"])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    loop {
        let lines = std::fs::read_to_string(&journal).map(|t| t.lines().count()).unwrap_or(0);
        if lines >= 2 || std::time::Instant::now() > deadline {
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let journaled = std::fs::read_to_string(&journal).unwrap();
    let done: Vec<usize> = journaled
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["status"] == "done")
        .map(|v| v["study"].as_u64().unwrap() as usize)
        .collect();
    assert!(!done.is_empty());
    // Every output present is complete (it reads back), and every journaled study has its output.
    for i in 0..6 {
        let p = dir.join(format!("out/{i}.nii.gz"));
        if p.exists() {
            read_labels(&p).unwrap();
        }
        if done.contains(&i) {
            assert!(p.exists(), "study {i} is journaled as done without its output");
        }
    }
    let report = dir.join("r.csv");
    let o = batch(&m, &["--report", report.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let statuses = report_statuses(&report);
    for (i, st) in statuses.iter().enumerate() {
        assert_eq!(st == "skipped", done.contains(&i), "study {i}: {st}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}
