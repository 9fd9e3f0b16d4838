//! Helpers shared by the integration tests: small real volumes, synthetic weights, the CLI binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use dspnet::io::{read_image, read_labels, Geometry, Volume};
use dspnet::model::config::ModelConfig;

pub fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(rel)
}

/// A fresh temporary folder for one test.
pub fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dspnet-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Synthetic ResNet-50 weights (cheapest depth; the tests check mechanics, not anatomy), written once.
pub fn weights() -> &'static Path {
    static W: OnceLock<PathBuf> = OnceLock::new();
    W.get_or_init(|| {
        let p = std::env::temp_dir().join(format!("dspnet-test-{}-synthetic50.safetensors", std::process::id()));
        let config = ModelConfig { depth: 50, ..ModelConfig::default() };
        dspnet::weights::write_synthetic(&p, &config, 1).unwrap();
        p
    })
}

/// Crop `[i0..i1) x [j0..j1) x [k0..k1)` of a volume, moving the origin so the crop stays in place.
pub fn crop<T: Copy>(v: &Volume<T>, lo: [usize; 3], hi: [usize; 3]) -> Volume<T> {
    let [ni, nj, _] = v.geometry.dims;
    let mut data = Vec::new();
    for k in lo[2]..hi[2] {
        for j in lo[1]..hi[1] {
            for i in lo[0]..hi[0] {
                data.push(v.data[i + ni * (j + nj * k)]);
            }
        }
    }
    let origin = v.geometry.index_to_physical([lo[0] as f64, lo[1] as f64, lo[2] as f64]);
    let geometry = Geometry { dims: [hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]], origin, ..v.geometry.clone() };
    Volume::new(data, geometry).unwrap()
}

/// Write a float32 NRRD image (gzip-free, LPS) by hand, so tests can write any voxel values (NaN too).
pub fn write_f32_nrrd(path: &Path, v: &Volume<f32>) {
    let g = &v.geometry;
    let dir = |c: usize| {
        format!(
            "({},{},{})",
            g.direction[0][c] * g.spacing[c],
            g.direction[1][c] * g.spacing[c],
            g.direction[2][c] * g.spacing[c]
        )
    };
    let header = format!(
        "NRRD0004\ntype: float\ndimension: 3\nspace: left-posterior-superior\nsizes: {} {} {}\nspace directions: {} {} {}\nkinds: domain domain domain\nendian: little\nencoding: raw\nspace origin: ({},{},{})\n\n",
        g.dims[0], g.dims[1], g.dims[2], dir(0), dir(1), dir(2), g.origin[0], g.origin[1], g.origin[2]
    );
    let mut bytes = header.into_bytes();
    for x in &v.data {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

/// The CT liver demo cropped to a small test case: 96x96 in-plane, 8 axial slices, with the liver
/// ground truth, and the ground truth of slice `support_k` (crop index) as the only support.
pub struct Case {
    pub image: PathBuf,
    pub gt: PathBuf,
    pub support: PathBuf,
    pub dir: PathBuf,
}

pub fn ct_case(name: &str, support_k: usize) -> Case {
    let dir = tempdir(name);
    let img = read_image(&data("ct-liver/image.nii.gz")).unwrap();
    let lab = read_labels(&data("ct-liver/labels.nii.gz")).unwrap();
    let (lo, hi) = ([16, 16, 60], [112, 112, 68]);
    let img = crop(&img, lo, hi);
    let lab = crop(&lab, lo, hi);
    let image = dir.join("image.nrrd");
    write_f32_nrrd(&image, &img);
    let gt = dir.join("gt.nrrd");
    dspnet::io::write_labels(&gt, &lab, None).unwrap();
    let mut sup = lab.clone();
    let [ni, nj, _] = sup.geometry.dims;
    for (v, l) in sup.data.iter_mut().enumerate() {
        if v / (ni * nj) != support_k {
            *l = 0;
        }
    }
    let support = dir.join("support.nrrd");
    dspnet::io::write_labels(&support, &sup, None).unwrap();
    Case { image, gt, support, dir }
}

/// Command-line arguments from anything path- or string-like.
#[macro_export]
macro_rules! args {
    ($($a:expr),* $(,)?) => { vec![$(std::ffi::OsString::from(AsRef::<std::ffi::OsStr>::as_ref(&$a))),*] };
}

/// Run the `dspnet` binary.
pub fn dspnet(args: Vec<std::ffi::OsString>) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dspnet")).args(args).output().unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}
