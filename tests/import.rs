//! Importing a foreign backbone: torchvision names, inflated 3D kernels, identity projection, and the
//! data-derived projection of `dspnet fit-projection`.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use dspnet::model::config::{FeatureSource, InputNormalization, ModelConfig};
use dspnet::model::Model;
use dspnet::weights::import::{import_tensors, DepthReduce, ImportOptions};
use dspnet::weights::{self, ModelWeights};

fn small_config() -> ModelConfig {
    ModelConfig { depth: 50, feature_source: FeatureSource::Layer3, ..ModelConfig::default() }
}

/// The synthetic ResNet-50 as a torchvision checkpoint of an inflated 3D network: every kernel spread
/// over 3 depth taps (a quarter, a half, a quarter), under "module." names, with a classifier and BN
/// counters that must be left out.
fn inflated_checkpoint(w: &ModelWeights) -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    for (name, t) in &w.tensors {
        let Some(rest) = name.strip_prefix("backbone.") else { continue };
        let t = if t.rank() == 4 {
            let taps = [0.25, 0.5, 0.25].map(|f| (t * f).unwrap().unsqueeze(2).unwrap());
            Tensor::cat(&taps, 2).unwrap().to_dtype(DType::BF16).unwrap()
        } else {
            t.clone()
        };
        out.push((format!("module.{rest}"), t));
    }
    out.push(("module.fc.weight".into(), Tensor::zeros((10, 2048), DType::F32, &Device::Cpu).unwrap()));
    out.push((
        "module.layer4.0.conv1.weight".into(),
        Tensor::zeros((512, 1024, 1, 1, 1), DType::F32, &Device::Cpu).unwrap(),
    ));
    out
}

fn options(how: DepthReduce) -> ImportOptions {
    ImportOptions {
        depth_reduce: how,
        feature_source: FeatureSource::Layer3,
        input_normalization: InputNormalization::Window { low: -1000.0, high: 1000.0 },
        transpose_slices: false,
        metadata: [("license".to_string(), "MIT".to_string()), ("depth".to_string(), "999".to_string())].into(),
    }
}

#[test]
fn inflated_kernels_reduce_to_the_2d_network() {
    let original = weights::synthetic_weights(&small_config(), 1).unwrap();
    let ckpt = inflated_checkpoint(&original);
    let (imported, report) = import_tensors(ckpt.clone(), &options(DepthReduce::Sum), "test.pth").unwrap();
    assert_eq!(report.config.depth, 50);
    assert_eq!(report.config.feature_channels, 1024);
    assert!(!report.config.projection_bias);
    assert_eq!(report.inflated, ckpt.iter().filter(|(n, t)| t.rank() == 5 && !n.contains("layer4")).count());
    assert_eq!(report.dropped, 2, "fc and layer4 are left out ({report:?})");
    // Architecture keys cannot be overridden by --metadata; provenance keys are kept.
    assert_eq!(imported.metadata["license"], "MIT");
    assert!(!imported.metadata.contains_key("depth"));
    // Summing the taps gives back the 2D kernel (bf16 taps, f16 storage: a few 1e-3 relative).
    for (name, t) in &original.tensors {
        if !name.starts_with("backbone.") {
            continue;
        }
        let got = imported.tensors[name].to_dtype(DType::F32).unwrap();
        if t.rank() == 4 {
            assert_eq!(imported.tensors[name].dtype(), DType::F16, "{name} stored as f16");
        }
        let err = (got - t).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        let scale = t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(err <= 8e-3 * scale + 1e-6, "{name}: max error {err} of {scale}");
    }
    // The centre tap is half the kernel.
    let (centre, _) = import_tensors(ckpt, &options(DepthReduce::Centre), "test.pth").unwrap();
    let name = "backbone.layer1.0.conv2.weight";
    let ratio = (centre.tensors[name].to_dtype(DType::F32).unwrap()
        / imported.tensors[name].to_dtype(DType::F32).unwrap())
    .unwrap()
    .flatten_all()
    .unwrap()
    .to_vec1::<f32>()
    .unwrap();
    assert!(ratio.iter().filter(|r| r.is_finite()).all(|r| (r - 0.5).abs() < 1e-2), "centre tap / sum");
}

#[test]
fn imported_model_gives_the_stage_features_and_fit_projection_centres_them() {
    let dir = tempdir("import");
    let original = weights::synthetic_weights(&small_config(), 1).unwrap();
    let (imported, report) =
        import_tensors(inflated_checkpoint(&original), &options(DepthReduce::Sum), "test.pth").unwrap();
    let base = dir.join("base.safetensors");
    weights::save_safetensors_mixed(&base, &report.config, &imported.tensors, &imported.metadata).unwrap();

    // The identity projection exposes layer3 itself: compare with the original network's traced stage.
    let case = ct_case("import-case", 1);
    let model = Model::load(&base, &Device::Cpu).unwrap();
    assert_eq!(model.config().input_normalization, InputNormalization::Window { low: -1000.0, high: 1000.0 });
    let x = Tensor::rand(0f32, 1f32, (1, 1, 64, 64), &Device::Cpu).unwrap();
    let reference = Model::from_weights(original, &Device::Cpu).unwrap();
    let stages = reference.backbone().forward_traced(&x, |_, _| {}).unwrap();
    let layer3 = stages.layers.last().unwrap();
    let got = model.encode(&x).unwrap();
    let rel = ((&got - layer3).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()
        / layer3.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap())
    .sqrt();
    assert!(rel < 1e-2, "imported layer3 differs from the original by {rel} (relative L2)");

    // fit-projection: 16 principal components with a centring bias; kernels stay f16.
    let out = dir.join("fitted.safetensors");
    let o = dspnet(args![
        "fit-projection",
        "--weights",
        base,
        case.image,
        "--channels",
        "16",
        "--slices-per-volume",
        "4",
        "--device",
        "cpu",
        "-o",
        out
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let fitted = weights::load_safetensors(&out).unwrap();
    assert_eq!(fitted.config.feature_channels, 16);
    assert!(fitted.config.projection_bias);
    assert_eq!(fitted.metadata["license"], "MIT");
    assert!(fitted.metadata["projection"].contains("principal components"), "{:?}", fitted.metadata);
    let stored = weights::stored_dtypes(&out).unwrap();
    assert_eq!(stored["backbone.layer1.0.conv2.weight"], DType::F16);
    // Rows are orthonormal.
    let p = fitted.tensors["projection.weight"].reshape((16, 1024)).unwrap();
    let gram = p.matmul(&p.t().unwrap()).unwrap();
    let off = (gram - Tensor::eye(16, DType::F32, &Device::Cpu).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(off < 1e-3, "projection rows not orthonormal: {off}");
    // A constant model input has one feature vector everywhere but the borders; the fitted projection
    // must move features from the fit slices to a zero mean, which the bias does: check on those slices.
    let img = dspnet::io::read_image(&case.image).unwrap();
    let g = &img.geometry;
    let fitted_model = Model::load(&out, &Device::Cpu).unwrap();
    let vol = dspnet::volume::PreparedVolume::new(
        &fitted_model,
        dspnet::volume::VolumeRef { data: &img.data, dims: g.dims, spacing: g.spacing },
        2,
        dspnet::volume::ModalityChoice::Auto,
    )
    .unwrap();
    let frame = vol.frame(None).unwrap();
    let n = vol.slices();
    let mut sum = vec![0f64; 16];
    let picks = 4.min(n);
    for s in 0..picks {
        let z = (((s as f64 + 0.5) * n as f64 / picks as f64) as usize).min(n - 1);
        let f = vol.encode(&fitted_model, z, &frame).unwrap().mean((1, 2)).unwrap().to_vec1::<f32>().unwrap();
        sum.iter_mut().zip(f).for_each(|(a, b)| *a += b as f64 / picks as f64);
    }
    let spread = fitted_model
        .encode(&Tensor::rand(0f32, 1f32, (1, 1, 256, 256), &Device::Cpu).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        sum.iter().all(|m| m.abs() < 1e-2 * spread as f64 + 1e-4),
        "fitted features are not centred: {sum:?} (typical magnitude {spread})"
    );
}

/// A backbone trained on transposed slices: the model transposes its input and its features back, so
/// the pipeline's canvas orientation never changes.
#[test]
fn transposed_slices_are_transposed_inside_the_model() {
    let plain = weights::synthetic_weights(&small_config(), 1).unwrap();
    let mut transposed = plain.clone();
    transposed.config.transpose_slices = true;
    let plain = Model::from_weights(plain, &Device::Cpu).unwrap();
    let transposed = Model::from_weights(transposed, &Device::Cpu).unwrap();
    let x = Tensor::rand(0f32, 1f32, (1, 1, 64, 48), &Device::Cpu).unwrap();
    let expected = plain.encode(&x.transpose(2, 3).unwrap().contiguous().unwrap()).unwrap().transpose(2, 3).unwrap();
    let got = transposed.encode(&x).unwrap();
    assert_eq!(got.dims(), &[1, plain.config().feature_channels, 8, 6]);
    let diff =
        (got - expected).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(diff, 0.0);
    // And the flag survives a round trip through the file's metadata.
    assert_eq!(transposed.config().to_metadata()["transpose_slices"], "true");
}
