//! Replays the committed fuzz corpus (fuzz/corpus/TARGET/*, minimised by cargo-fuzz) and the inputs of
//! every crash found so far (fuzz/regressions/TARGET/*) through the fuzz harness, on stable: each input
//! must be answered (an error is fine) without a panic, a crash or a hang. See tests/fuzz/README.md.

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for folder in ["corpus", "regressions"] {
        let dir = root.join(folder).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut files: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{target}: {} panicked", f.display());
            n += 1;
        }
    }
    n
}

macro_rules! replay_tests {
    ($($target:ident),*) => {$(
        #[test]
        fn $target() {
            let n = replay(stringify!($target), harness::$target);
            println!("{}: {n} inputs replayed", stringify!($target));
            assert!(n > 0, "no corpus for {}", stringify!($target));
        }
    )*};
}

replay_tests!(nifti, nifti_gz, nrrd, nrrd_detached, seg_nrrd, dicom, safetensors, pth, capi);
