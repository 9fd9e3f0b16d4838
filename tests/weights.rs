//! Weight files as users meet them: synthetic generation, strict loading with named offenders,
//! truncated and foreign files, official names, conversion from PyTorch checkpoints, `dspnet info`.

mod common;

use std::collections::{BTreeMap, HashMap};

use candle_core::Device;
use common::*;
use dspnet::model::config::{FeatureSource, ModelConfig};
use dspnet::model::Model;
use dspnet::weights::{load_safetensors, save_safetensors_raw, write_synthetic};
use dspnet::DspnetError;

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden").join(name)
}

/// Read all tensors of a safetensors file as (name → (shape, f32 values)).
fn read_all(path: &std::path::Path) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| {
            (
                n,
                (
                    v.shape().to_vec(),
                    v.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
                ),
            )
        })
        .collect()
}

fn write(path: &std::path::Path, tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>, meta: HashMap<String, String>) {
    let values = tensors.iter().map(|(k, (_, v))| (k.clone(), v.clone())).collect();
    let shapes = tensors.iter().map(|(k, (s, _))| (k.clone(), s.clone())).collect();
    save_safetensors_raw(path, &values, &shapes, meta).unwrap();
}

fn model_error(path: &std::path::Path) -> String {
    match load_safetensors(path) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn strict_loading_names_missing_unexpected_and_misshaped_tensors() {
    let dir = tempdir("strict");
    let good = read_all(weights());
    let meta = ModelConfig { depth: 50, ..ModelConfig::default() }.to_metadata();

    let mut missing = good.clone();
    missing.remove("backbone.layer2.1.conv2.weight");
    let p = dir.join("missing.safetensors");
    write(&p, &missing, meta.clone());
    let e = model_error(&p);
    assert!(e.contains("1 missing: backbone.layer2.1.conv2.weight"), "{e}");

    let mut extra = good.clone();
    extra.insert("backbone.layer9.0.conv1.weight".into(), (vec![1], vec![0.0]));
    let p = dir.join("extra.safetensors");
    write(&p, &extra, meta.clone());
    assert!(model_error(&p).contains("1 unexpected: backbone.layer9.0.conv1.weight"));

    let mut shaped = good.clone();
    shaped.insert("projection.weight".into(), (vec![256, 2048], vec![0.0; 256 * 2048]));
    let p = dir.join("shape.safetensors");
    write(&p, &shaped, meta.clone());
    assert!(model_error(&p).contains("projection.weight is [256, 2048], expected [256, 2048, 1, 1]"));

    // Metadata that contradicts the tensors.
    let mut m = meta.clone();
    m.insert("depth".into(), "101".into());
    let p = dir.join("depth.safetensors");
    write(&p, &good, m);
    assert!(model_error(&p).contains("ResNet-101"));
}

#[test]
fn official_names_load_and_compute_the_same_model() {
    let dir = tempdir("official");
    let own = read_all(weights());
    let official: BTreeMap<_, _> =
        own.iter().map(|(k, v)| (dspnet::model::config::official_name(k), v.clone())).collect();
    assert!(
        official.contains_key("encoder.localconv.weight")
            && official.contains_key("encoder.backbone.layer1.0.bn1.running_var")
    );
    let p = dir.join("official.safetensors");
    write(&p, &official, HashMap::new()); // no metadata at all: the architecture is inferred
    let w = load_safetensors(&p).unwrap();
    assert_eq!(w.config.depth, 50);
    assert_eq!(w.config.feature_source, FeatureSource::Layer4);
    let a = Model::load(weights(), &Device::Cpu).unwrap();
    let b = Model::from_weights(w, &Device::Cpu).unwrap();
    let x: Vec<f32> = (0..64 * 64).map(|i| ((i % 97) as f32 / 50.0) - 1.0).collect();
    let fa = a.encode_slices(&x, 1, 64, 64).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let fb = b.encode_slices(&x, 1, 64, 64).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(fa, fb);
}

#[test]
fn truncated_and_foreign_files_are_refused_clearly() {
    let dir = tempdir("foreign");
    let bytes = std::fs::read(weights()).unwrap();
    let p = dir.join("truncated.safetensors");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = model_error(&p);
    assert!(e.contains("truncated.safetensors") && e.contains("safetensors"), "{e}");

    let p = dir.join("random.safetensors");
    std::fs::write(&p, b"\x13\x37 definitely not a tensor file").unwrap();
    assert!(model_error(&p).contains("not a valid safetensors file"));

    let e = model_error(&fixture("official_subset.pth"));
    assert!(e.contains("dspnet convert"), "{e}");

    let mut foreign = BTreeMap::new();
    foreign.insert("model.embed_tokens.weight".to_string(), (vec![4, 2], vec![0.0f32; 8]));
    let p = dir.join("llm.safetensors");
    write(&p, &foreign, HashMap::new());
    assert!(model_error(&p).contains("not a DSPNet weight file"));

    let mut m = HashMap::new();
    m.insert("format".to_string(), "pt".to_string());
    let p = dir.join("fmt.safetensors");
    write(&p, &read_all(weights()), m);
    assert!(model_error(&p).contains("format 'pt'"));

    assert!(matches!(load_safetensors(&dir.join("absent.safetensors")), Err(DspnetError::Io { .. })));
}

#[test]
fn layer3_projection_with_bias_round_trips() {
    let dir = tempdir("layer3");
    let config = ModelConfig {
        depth: 50,
        feature_source: FeatureSource::Layer3,
        projection_bias: true,
        ..ModelConfig::default()
    };
    let p = dir.join("l3.safetensors");
    write_synthetic(&p, &config, 7).unwrap();
    let w = load_safetensors(&p).unwrap();
    assert_eq!(w.config, config);
    assert!(!w.tensors.keys().any(|k| k.contains("layer4")));
    let m = Model::from_weights(w, &Device::Cpu).unwrap();
    let f = m.encode_slices(&vec![0.5; 32 * 32], 1, 32, 32).unwrap();
    assert_eq!(f.dims(), &[1, 256, 4, 4]);
    // Input checks: NaN and sizes that are not multiples of 8.
    assert!(matches!(m.encode_slices(&[f32::NAN; 64], 1, 8, 8), Err(DspnetError::NonFinite(_))));
    assert!(matches!(m.encode_slices(&[0.0; 100], 1, 10, 10), Err(DspnetError::Shape(_))));
    assert!(matches!(m.encode_slices(&[0.0; 10], 1, 8, 8), Err(DspnetError::Shape(_))));
}

#[test]
fn cli_synthetic_info_and_convert() {
    let dir = tempdir("cli");
    let w = dir.join("s.safetensors");
    let o = dspnet(args!["synthetic-weights", "--seed", "3", "--depth", "50", "-o", w]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = dspnet(args!["info", w]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && out.contains("ResNet-50") && out.contains("synthetic_seed: 3"), "{out}");
    assert!(out.contains("parameters:"), "{out}");

    for name in ["official_subset.pth", "official_subset_zipedge.pth"] {
        let out_path = dir.join(format!("{name}.safetensors"));
        let o = dspnet(args!["convert", fixture(name), "-o", out_path]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        assert!(stderr(&o).contains("not a complete model"), "{}", stderr(&o));
        let t = read_all(&out_path);
        assert!(t.contains_key("backbone.conv1.weight") && t.contains_key("cls_unit.cal"));
        assert!(!t.keys().any(|k| k.contains("num_batches_tracked") || k.contains("aspp")));
    }
    // A legacy (pre-1.6) pickle gets a clear message.
    let legacy = dir.join("legacy.pth");
    let mut bytes = vec![0x80, 0x02, 0x8a, 0x0a];
    bytes.extend_from_slice(&[0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e]);
    std::fs::write(&legacy, bytes).unwrap();
    let o = dspnet(args!["convert", legacy, "-o", dir.join("l.safetensors")]);
    assert!(!o.status.success());
    assert!(stderr(&o).to_lowercase().contains("legacy"), "{}", stderr(&o));
    assert!(!dir.join("l.safetensors").exists());
}
