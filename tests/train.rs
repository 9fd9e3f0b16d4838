//! `dspnet train` and the training pipeline on a tiny configuration: synthetic ResNet-50 weights with
//! layer3 features, a cropped CT volume, a few steps.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use common::{dspnet, stderr};
use dspnet::model::backbone::Backbone;
use dspnet::model::config::{FeatureSource, ModelConfig};
use dspnet::train::augment::{augment, AugmentOptions};
use dspnet::train::data::load_slices;
use dspnet::train::loss::cross_entropy;
use dspnet::train::net::TrainableNet;
use dspnet::train::rng::Rng;
use dspnet::train::superpixels::{body_mask, felzenszwalb, SuperpixelOptions};
use dspnet::train::{TrainOptions, Trainer};
use dspnet::volume::ModalityChoice;
use dspnet::weights::{load_safetensors, write_synthetic};

/// Synthetic ResNet-50, layer3 features: the cheapest model the trainer supports.
fn weights() -> &'static Path {
    static W: OnceLock<PathBuf> = OnceLock::new();
    W.get_or_init(|| {
        let p = std::env::temp_dir().join(format!("dspnet-test-{}-train50.safetensors", std::process::id()));
        let config = ModelConfig { depth: 50, feature_source: FeatureSource::Layer3, ..ModelConfig::default() };
        write_synthetic(&p, &config, 1).unwrap();
        p
    })
}

/// The CT liver demo cropped to 96x96 x 4 slices.
fn volume() -> &'static Path {
    static V: OnceLock<PathBuf> = OnceLock::new();
    V.get_or_init(|| {
        let dir = common::tempdir("train-volume");
        let img = dspnet::io::read_image(&common::data("ct-liver/image.nii.gz")).unwrap();
        let img = common::crop(&img, [16, 16, 60], [112, 112, 64]);
        let p = dir.join("image.nrrd");
        common::write_f32_nrrd(&p, &img);
        p
    })
}

fn tensor_bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
}

#[test]
fn felzenszwalb_two_regions_give_two_segments() {
    let (h, w) = (64, 64);
    let img: Vec<f32> = (0..h * w).map(|p| if p % w < 32 { 20.0 } else { 220.0 }).collect();
    let s = felzenszwalb(&img, h, w, 1.0, 1.0, 400);
    assert_eq!(*s.iter().max().unwrap(), 1);
    assert!((0..h * w).all(|p| s[p] == if p % w < 32 { s[0] } else { s[w - 1] }));
    assert_ne!(s[0], s[w - 1]);
}

#[test]
fn felzenszwalb_honours_min_size() {
    let (h, w) = (128, 128);
    let mut x = 12345u64;
    let img: Vec<f32> = (0..h * w)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 56) as f32
        })
        .collect();
    for min_size in [50, 400] {
        let s = felzenszwalb(&img, h, w, 1.0, 1.0, min_size);
        let k = *s.iter().max().unwrap() as usize + 1;
        let mut sizes = vec![0usize; k];
        s.iter().for_each(|&l| sizes[l as usize] += 1);
        assert!(k > 1 && sizes.iter().all(|&n| n >= min_size), "min_size {min_size}: {sizes:?}");
    }
}

#[test]
fn body_is_the_largest_component_with_holes_filled() {
    let (h, w) = (20, 20);
    let mut img = vec![0f32; h * w];
    for r in 2..12 {
        for c in 2..12 {
            img[r * w + c] = 100.0;
        }
    }
    img[6 * w + 6] = 0.0; // a hole
    img[17 * w + 17] = 100.0; // a smaller component
    let body = body_mask(&img, h, w, 1e-4);
    assert!(body[6 * w + 6] && body[2 * w + 2] && !body[17 * w + 17] && !body[0]);
    assert_eq!(body.iter().filter(|&&b| b).count(), 100);
}

#[test]
fn augmentation_is_seeded_and_identity_without_ranges() {
    let n = 64;
    let img: Vec<f32> = (0..n * n).map(|p| ((p / n) as f32 - 30.0) / 10.0).collect();
    let mask: Vec<u8> =
        (0..n * n).map(|p| u8::from((20..44).contains(&(p / n)) && (20..44).contains(&(p % n)))).collect();
    let none = AugmentOptions {
        rotation: 0.0,
        translation: 0.0,
        shear: 0.0,
        zoom: (1.0, 1.0),
        elastic_alpha: 0.0,
        gamma: (1.0, 1.0),
        ..AugmentOptions::default()
    };
    let (a, m) = augment(&img, &mask, n, &none, &mut Rng::new(1));
    assert_eq!(m, mask);
    assert!(a.iter().zip(&img).all(|(x, y)| (x - y).abs() < 1e-3));
    let opts = AugmentOptions::default();
    let a = augment(&img, &mask, n, &opts, &mut Rng::new(7));
    assert_eq!(a, augment(&img, &mask, n, &opts, &mut Rng::new(7)));
    let area = a.1.iter().filter(|&&v| v == 1).count() as f64;
    assert!((0.6..1.6).contains(&(area / 576.0)), "area {area}");
}

#[test]
fn weighted_cross_entropy_matches_the_formula() {
    // Two pixels: logits (bg, fg) = (0, 1) labelled fg, (2, 0) labelled bg.
    let logits = Tensor::from_vec(vec![0f32, 2.0, 1.0, 0.0], (2, 1, 2), &Device::Cpu).unwrap();
    let nll_fg = (1f64.exp() + 1.0).ln() - 1.0;
    let nll_bg = (2f64.exp() + 1.0).ln() - 2.0;
    let w = cross_entropy(&logits, &[1, 0], [0.05, 1.0]).unwrap().to_scalar::<f32>().unwrap() as f64;
    assert!((w - (nll_fg + 0.05 * nll_bg) / 1.05).abs() < 1e-6);
}

/// The trained suffix (folded BN, im2col convolutions) computes what the inference backbone computes.
#[test]
fn trainable_suffix_matches_the_backbone() {
    let w = load_safetensors(weights()).unwrap();
    let backbone = Backbone::new(&w.config, &w.tensors, &Device::Cpu).unwrap();
    let x = Tensor::randn(0f32, 1.0, (2, 1, 64, 64), &Device::Cpu).unwrap();
    let want = backbone.forward(&x).unwrap();
    for k in [0, 2] {
        let net = TrainableNet::new(&w.config, &w.tensors, k, &Device::Cpu).unwrap();
        let got =
            net.forward(&backbone.forward_prefix(&x, net.prefix_blocks()).unwrap()).unwrap().transpose(0, 1).unwrap();
        let err = (&got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(err <= 1e-4 * scale, "K = {k}: max error {err} (scale {scale})");
    }
    let e = TrainableNet::new(&w.config, &w.tensors, 7, &Device::Cpu).err().unwrap();
    assert!(e.to_string().contains("has 6 bottlenecks"), "{e}");
}

/// Training on one fixed episode lowers that episode's loss.
#[test]
fn loss_decreases_on_a_fixed_episode() {
    let w = load_safetensors(weights()).unwrap();
    let slices = load_slices(
        &[volume().to_path_buf()],
        2,
        ModalityChoice::Auto,
        &w.config.input_normalization,
        &SuperpixelOptions::default(),
    )
    .unwrap();
    let mut trainer =
        Trainer::new(w, TrainOptions { trainable_blocks: 1, ..TrainOptions::default() }, &Device::Cpu).unwrap();
    let episode = trainer.sample_episode(&slices).unwrap();
    let before = trainer.evaluate(&episode).unwrap();
    for _ in 0..4 {
        trainer.train_step(&episode).unwrap();
    }
    let after = trainer.evaluate(&episode).unwrap();
    assert!(before.loss.is_finite() && after.loss < before.loss, "{before:?} -> {after:?}");
}

/// The command: output loads as a model with only the trained tensors changed; an interrupted run
/// resumed from its checkpoint ends bit-identical to an uninterrupted one; the log has every step once.
#[test]
fn command_trains_checkpoints_and_resumes_bit_identically() {
    let dir = common::tempdir("train-cli");
    let run = |out: &str, steps: &str, ck: &str, resume: bool| {
        let mut a = args![
            "train",
            "--weights",
            weights(),
            volume(),
            "-o",
            dir.join(out),
            "--steps",
            steps,
            "--trainable-blocks",
            "1",
            "--seed",
            "7",
            "--checkpoint-dir",
            dir.join(ck),
            "--checkpoint-every",
            "2",
            "--log",
            dir.join(format!("{ck}.csv")),
            "--device",
            "cpu",
            "--quiet"
        ];
        if resume {
            a.push("--resume".into());
        }
        let o = dspnet(a);
        assert!(o.status.success(), "{}", stderr(&o));
        stderr(&o)
    };
    run("full.safetensors", "4", "a", false);
    run("half.safetensors", "2", "b", false);
    let msg = run("resumed.safetensors", "4", "b", true);
    assert!(msg.contains("resumed from") && msg.contains("at step 2"), "{msg}");

    let init = load_safetensors(weights()).unwrap();
    let full = load_safetensors(&dir.join("full.safetensors")).unwrap();
    let resumed = load_safetensors(&dir.join("resumed.safetensors")).unwrap();
    assert_eq!(full.config, init.config);
    let trained_prefixes = ["backbone.layer3.5.", "projection."];
    let mut changed = 0;
    for (name, t) in &init.tensors {
        let (f, r) = (&full.tensors[name], &resumed.tensors[name]);
        assert_eq!(tensor_bits(f), tensor_bits(r), "{name} differs between the full and the resumed run");
        if trained_prefixes.iter().any(|p| name.starts_with(p)) {
            changed += usize::from(tensor_bits(f) != tensor_bits(t));
        } else {
            assert_eq!(tensor_bits(f), tensor_bits(t), "untouched tensor {name} changed");
        }
    }
    assert!(changed >= 4, "only {changed} trained tensors changed");
    // Folding the written identity BatchNorm gives back the trained numbers exactly.
    let net = TrainableNet::new(&full.config, &full.tensors, 1, &Device::Cpu).unwrap();
    for (name, _, values) in net.export().unwrap() {
        let stored: Vec<u32> = tensor_bits(&full.tensors[&name]);
        assert_eq!(stored, values.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{name} does not survive a reload");
    }
    dspnet::model::Model::load(&dir.join("full.safetensors"), &Device::Cpu).unwrap();

    let log = |ck: &str| std::fs::read_to_string(dir.join(format!("{ck}.csv"))).unwrap();
    let steps = |s: String| s.lines().map(|l| l.rsplit_once(',').unwrap().0.to_string()).collect::<Vec<_>>();
    assert_eq!(steps(log("a")), steps(log("b")), "loss logs differ");
    assert_eq!(log("a").lines().count(), 5);
    let meta: HashMap<String, String> = full.metadata;
    assert_eq!(meta.get("train_steps").map(String::as_str), Some("4"));
}

#[test]
fn command_rejects_bad_inputs() {
    let dir = common::tempdir("train-bad");
    let not_model = dir.join("not-a-model.safetensors");
    std::fs::write(&not_model, b"garbage").unwrap();
    let o =
        dspnet(args!["train", "--weights", &not_model, volume(), "-o", dir.join("o.safetensors"), "--device", "cpu"]);
    assert!(!o.status.success() && stderr(&o).contains("not a valid safetensors"), "{}", stderr(&o));
    let o = dspnet(args!["train", "--weights", weights(), "-o", dir.join("o.safetensors")]);
    assert!(!o.status.success() && stderr(&o).contains("IMAGES"), "{}", stderr(&o));
    // A constant volume has no body and no superpixel.
    let img = dspnet::io::read_image(volume()).unwrap();
    let flat = dspnet::io::Volume::new(vec![0.0; img.data.len()], img.geometry.clone()).unwrap();
    let flat_path = dir.join("flat.nrrd");
    common::write_f32_nrrd(&flat_path, &flat);
    let o =
        dspnet(args!["train", "--weights", weights(), &flat_path, "-o", dir.join("o.safetensors"), "--device", "cpu"]);
    assert!(!o.status.success() && stderr(&o).contains("no training slice has superpixels"), "{}", stderr(&o));
    assert!(!dir.join("o.safetensors").exists());
}
