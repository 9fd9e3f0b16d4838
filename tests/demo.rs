//! The README's first command: the shipped default model on the bundled CT liver demo, with the middle
//! slice of the liver as the only labelled slice. Its Dice must stay above the floor set just under what
//! the model card reports, so a change that degrades the real segmentation fails here.

mod common;

use common::*;

/// Measured 3D Dice of the default model on this demo (weights/README.md), minus a small margin for
/// floating-point differences between CPUs.
const DEMO_DICE_FLOOR: f64 = 0.90;

#[test]
fn demo_with_the_default_model_reaches_its_dice_floor() {
    let dir = tempdir("demo");
    let png = dir.join("demo-preview.png");
    // Exactly the README's arguments (plus --json), resolved from the source tree's weights/ folder.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_dspnet"))
        .args([
            "eval",
            "tests/data/ct-liver/image.nii.gz",
            "--labels",
            "tests/data/ct-liver/labels.nii.gz",
            "--json",
            "--preview",
        ])
        .arg(&png)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("DSPNET_WEIGHTS")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let dice = j["mean_dice"].as_f64().unwrap();
    assert!(dice >= DEMO_DICE_FLOOR, "demo Dice {dice:.4} fell below the floor {DEMO_DICE_FLOOR}");
    let png_bytes = std::fs::read(&png).unwrap();
    assert!(png_bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "preview is not a PNG");
}
