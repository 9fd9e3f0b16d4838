//! The head's behaviour beyond parity: error paths, the calibration override, the alphas.
//! (Parity with the official code is checked in `tests/golden.rs`.)

#[path = "golden/head_checks.rs"]
mod head_checks;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use dspnet::model::prototypes::{labels_from_logits, upsample_logits, ForegroundMode, HeadOptions, SupportEpisode};
use dspnet::DspnetError;
use head_checks::*;
use safetensors::SafeTensors;

// ------------------------------------------------------------------------------------------------
// Tests

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden")
}

/// Small deterministic features [c, h, w] in [-1, 1).
fn small_features(c: usize, h: usize, w: usize, salt: u64) -> Vec<f32> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64 ^ salt;
    (0..c * h * w)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn small_episode_inputs() -> (Tensor, Tensor, Vec<u8>) {
    let (c, h, w) = (16, 8, 8);
    let fs = Tensor::from_vec(small_features(c, h, w, 1), (c, h, w), &Device::Cpu).unwrap();
    let fq = Tensor::from_vec(small_features(c, h, w, 2), (c, h, w), &Device::Cpu).unwrap();
    let mut mask = vec![0u8; 64 * 64];
    for r in 8..48 {
        for col in 4..40 {
            mask[r * 64 + col] = 1;
        }
    }
    (fs, fq, mask)
}

#[test]
fn error_paths() {
    let opts = HeadOptions::default();
    let (fs, fq, mask) = small_episode_inputs();

    // The happy path works on small general sizes.
    let ep = SupportEpisode::new(&fs, &mask, 64, 64, &opts).expect("valid episode");
    let s = ep.score(&fq).expect("score");
    assert_eq!(s.dims(), &[2, 8, 8]);
    assert!(to_vec(&s).unwrap().iter().all(|v| v.is_finite()));
    // A leading batch axis of 1 is accepted.
    assert!(SupportEpisode::new(&fs.unsqueeze(0).unwrap(), &mask, 64, 64, &opts).is_ok());

    // Empty mask.
    let r = SupportEpisode::new(&fs, &vec![0u8; 64 * 64], 64, 64, &opts);
    assert!(matches!(r, Err(DspnetError::EmptySupport { .. })), "{r:?}");
    // Wrong mask sizes: declared size not 8x the features, and buffer length mismatch.
    let r = SupportEpisode::new(&fs, &vec![1u8; 64 * 56], 64, 56, &opts);
    assert!(matches!(r, Err(DspnetError::Shape(_))), "{r:?}");
    let r = SupportEpisode::new(&fs, &mask[..64 * 63], 64, 64, &opts);
    assert!(matches!(r, Err(DspnetError::Shape(_))), "{r:?}");
    // Feature grid not a multiple of 4, and wrong rank.
    let odd = Tensor::zeros((16, 6, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
    let r = SupportEpisode::new(&odd, &vec![1u8; 48 * 64], 48, 64, &opts);
    assert!(matches!(r, Err(DspnetError::Shape(_))), "{r:?}");
    let r = SupportEpisode::new(&fs.flatten_all().unwrap(), &mask, 64, 64, &opts);
    assert!(matches!(r, Err(DspnetError::Shape(_))), "{r:?}");
    // Non-finite support and query features.
    let mut v = small_features(16, 8, 8, 1);
    v[77] = f32::NAN;
    let nan = Tensor::from_vec(v, (16, 8, 8), &Device::Cpu).unwrap();
    let r = SupportEpisode::new(&nan, &mask, 64, 64, &opts);
    assert!(matches!(r, Err(DspnetError::NonFinite(_))), "{r:?}");
    let r = ep.score(&nan);
    assert!(matches!(r, Err(DspnetError::NonFinite(_))), "{r:?}");
    let mut v = small_features(16, 8, 8, 2);
    v[3] = f32::INFINITY;
    let inf = Tensor::from_vec(v, (16, 8, 8), &Device::Cpu).unwrap();
    assert!(matches!(ep.score(&inf), Err(DspnetError::NonFinite(_))));
    // Query of another size.
    let other = Tensor::zeros((16, 8, 12), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(ep.score(&other), Err(DspnetError::Shape(_))));
    // Calibration of the wrong size.
    let bad_cal = HeadOptions { calibration: Some(vec![0.0; 15 * 15]), ..HeadOptions::default() };
    let r = SupportEpisode::new(&fs, &mask, 64, 64, &bad_cal);
    assert!(matches!(r, Err(DspnetError::Shape(_))), "{r:?}");
    // Logits helpers.
    assert!(matches!(labels_from_logits(&fs), Err(DspnetError::Shape(_))));
    assert!(matches!(upsample_logits(&fs.flatten_all().unwrap(), 4, 4), Err(DspnetError::Shape(_))));
}

fn blob_seeds_episode(opts: &HeadOptions) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let bytes = read_file(&fixtures().join("head_synthetic.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let fs = tensor(&st, "feat_support").unwrap();
    let fq = tensor(&st, "feat_query").unwrap();
    let (mask, _) = u8s(&st, "blob_seeds.sup_mask").unwrap();
    let ep = SupportEpisode::new(&fs, &mask, 256, 256, opts).unwrap();
    assert_eq!(ep.fg_mode(), ForegroundMode::GridConvPlus);
    let (scores, tr) = ep.score_traced(&fq).unwrap();
    let s = to_vec(&scores).unwrap();
    (s[..1024].to_vec(), s[1024..].to_vec(), to_vec(&tr.p_g).unwrap())
}

#[test]
fn calibration_override_and_alphas() {
    let defaults = HeadOptions::default();
    let (bg0, fg0, pg0) = blob_seeds_episode(&defaults);

    // The default `cal` passed explicitly is the same matrix: bit-identical results.
    let c = 256;
    let mut cal = vec![0f32; c * c];
    for i in 0..c {
        cal[i * c + i] = 1.0;
    }
    for r in 1..c - 1 {
        cal[r * c + r - 1] = 0.3;
        cal[r * c + r] = 0.8;
        cal[r * c + r + 1] = 0.3;
    }
    let explicit = HeadOptions { calibration: Some(cal.clone()), ..HeadOptions::default() };
    let (bg1, fg1, _) = blob_seeds_episode(&explicit);
    assert_eq!(bg0, bg1);
    assert_eq!(fg0, fg1);

    // Another `cal` (a checkpoint's trained value, say) changes both local-prototype scores.
    cal[10 * c + 11] = 0.9;
    cal[100 * c + 100] = 0.1;
    cal[200 * c + 3] = 0.5;
    let changed = HeadOptions { calibration: Some(cal), ..HeadOptions::default() };
    let (bg2, fg2, pg2) = blob_seeds_episode(&changed);
    assert!(compare(&bg2, &bg0).unwrap().1 > 1e-4, "bg scores unchanged by cal");
    assert!(compare(&fg2, &fg0).unwrap().1 > 1e-4, "fg scores unchanged by cal");
    assert_eq!(pg2, pg0, "p_g does not go through BCMA");

    // alpha_fg only touches the fg-local path, alpha_bg only the bg path.
    let fg_alpha = HeadOptions { alpha_fg: 0.3, ..HeadOptions::default() };
    let (bg3, fg3, _) = blob_seeds_episode(&fg_alpha);
    assert_eq!(bg3, bg0);
    assert!(compare(&fg3, &fg0).unwrap().1 > 1e-5);
    let bg_alpha = HeadOptions { alpha_bg: 0.3, ..HeadOptions::default() };
    let (bg4, fg4, _) = blob_seeds_episode(&bg_alpha);
    assert_eq!(fg4, fg0);
    assert!(compare(&bg4, &bg0).unwrap().1 > 1e-5);
}
