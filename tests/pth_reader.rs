//! PyTorch checkpoint reader (`dspnet::weights::pth`).
//!
//! * the two official-format fixtures (`tests/fixtures/golden/official_subset{,_zipedge}.pth`) read,
//!   keys / shapes / dtypes match their JSON sidecars, and every value is bit-identical to the
//!   synthetic generator of docs/model.md, 'Parity tests' (reimplemented here);
//! * hand-made checkpoints (zip + pickle bytes written by this file) cover nested state dicts,
//!   strided / offset / shared-storage views, other dtypes, the zip layout that the `zip` crate
//!   rejects, and every error case, whose message must name the problem.

use std::path::{Path, PathBuf};

use dspnet::weights::pth::{read_checkpoint, read_checkpoint_bytes, PthDtype, PthTensor};
use dspnet::DspnetError;

// ---------------------------------------------------------------------------------------------
// Synthetic weight generator (docs/model.md, 'Parity tests')
// ---------------------------------------------------------------------------------------------

const PHI: u64 = 0x9E37_79B9_7F4A_7C15;

fn fnv1a(key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn uniform(key: &str, seed: u64, i: u64) -> f64 {
    let h = fnv1a(key) ^ seed.wrapping_mul(PHI);
    (mix(h.wrapping_add((i + 1).wrapping_mul(PHI))) >> 40) as f64 / 16_777_216.0
}

/// `key` ends with `layer<L>.<b>.bn3.weight`.
fn is_bottleneck_bn3_weight(key: &str) -> bool {
    let p: Vec<&str> = key.split('.').collect();
    let n = p.len();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    n >= 4
        && p[n - 1] == "weight"
        && p[n - 2] == "bn3"
        && digits(p[n - 3])
        && p[n - 4].strip_prefix("layer").is_some_and(digits)
}

/// Generator value of element `i` (f32 keys only).
fn gen_value(key: &str, shape: &[usize], seed: u64, i: u64) -> f32 {
    let x = uniform(key, seed, i);
    let last = key.rsplit('.').next().unwrap();
    let v: f64 = if shape.len() == 4 && last == "weight" {
        let fan_in = (shape[1] * shape[2] * shape[3]) as f64;
        (2.0 * x - 1.0) * (6.0 / fan_in).sqrt()
    } else if shape.len() == 1 && last == "weight" {
        let g = 1.0 + 0.25 * (x - 0.5);
        if is_bottleneck_bn3_weight(key) {
            g * 0.125
        } else {
            g
        }
    } else if shape.len() == 1 && (last == "bias" || last == "running_mean") {
        0.125 * (x - 0.5)
    } else if shape.len() == 1 && last == "running_var" {
        0.75 + 0.5 * x
    } else {
        2.0 * x - 1.0
    };
    v as f32
}

#[test]
fn generator_matches_readme_check_values() {
    let cases: [(&str, &[usize], [u32; 4]); 4] = [
        ("encoder.backbone.conv1.weight", &[64, 3, 7, 7], [0x3e2414c8, 0xbda5028c, 0x3d6cf35b, 0xbe45f249]),
        ("encoder.backbone.layer1.0.bn3.weight", &[256], [0x3dfed811, 0x3de06f47, 0x3e0fd3b7, 0x3df40026]),
        ("encoder.backbone.bn1.running_var", &[64], [0x3f4a4d66, 0x3f4790ee, 0x3f8c8410, 0x3f896e64]),
        ("encoder.localconv.weight", &[256, 2048, 1, 1], [0x3ca128b1, 0xbd2225fe, 0xbcec52c0, 0x3cf1a7c1]),
    ];
    assert_eq!(fnv1a("encoder.backbone.conv1.weight"), 0x9e6261724329ece9);
    for (key, shape, bits) in cases {
        for (i, b) in bits.iter().enumerate() {
            assert_eq!(gen_value(key, shape, 1, i as u64).to_bits(), *b, "{key}[{i}]");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden").join(name)
}

struct SidecarKey {
    key: String,
    shape: Vec<usize>,
    dtype: String,
}

fn sidecar(name: &str) -> (u64, Vec<SidecarKey>) {
    let text = std::fs::read_to_string(fixture(name)).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let seed = v["generator_seed"].as_u64().unwrap();
    let keys = v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| SidecarKey {
            key: k["key"].as_str().unwrap().to_string(),
            shape: k["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect(),
            dtype: k["dtype"].as_str().unwrap().to_string(),
        })
        .collect();
    (seed, keys)
}

/// Read `pth`, compare with its sidecar and the generator; returns the tensors.
fn check_fixture(pth: &str, json: &str, expected_count: usize) -> Vec<PthTensor> {
    let tensors = read_checkpoint(&fixture(pth)).unwrap_or_else(|e| panic!("{pth}: {e}"));
    let (seed, keys) = sidecar(json);
    assert_eq!(keys.len(), expected_count);
    assert_eq!(tensors.len(), keys.len(), "{pth}: tensor count");
    for (t, k) in tensors.iter().zip(&keys) {
        assert_eq!(t.name, k.key, "{pth}: key order");
        assert_eq!(t.shape, k.shape, "{pth}: shape of {}", k.key);
        assert_eq!(t.dtype.as_str(), k.dtype, "{pth}: dtype of {}", k.key);
        assert_eq!(t.data.len(), t.numel() * t.dtype.size_in_bytes(), "{}", t.name);
        if k.key.ends_with(".num_batches_tracked") {
            assert_eq!(t.dtype, PthDtype::I64);
            assert!(t.shape.is_empty());
            assert_eq!(t.data, 0i64.to_le_bytes().to_vec(), "{}", t.name);
            continue;
        }
        assert_eq!(t.dtype, PthDtype::F32, "{}", t.name);
        let mut mismatches = 0usize;
        for (i, c) in t.data.chunks_exact(4).enumerate() {
            let got = u32::from_le_bytes(c.try_into().unwrap());
            let want = gen_value(&k.key, &k.shape, seed, i as u64).to_bits();
            if got != want {
                if mismatches < 3 {
                    eprintln!("{pth}: {}[{i}] = {got:08x}, generator {want:08x}", k.key);
                }
                mismatches += 1;
            }
        }
        assert_eq!(mismatches, 0, "{pth}: {} values of {} differ from the generator", mismatches, k.key);
        // The f32 view agrees with the raw bytes.
        let f = t.to_f32_vec().unwrap();
        assert_eq!(f[0].to_bits(), gen_value(&k.key, &k.shape, seed, 0).to_bits());
    }
    tensors
}

#[test]
fn official_subset_reads_bit_exact() {
    let t = check_fixture("official_subset.pth", "official_subset.json", 33);
    assert!(t.iter().any(|t| t.name == "encoder.localconv.weight" && t.shape == [256, 2048, 1, 1]));
}

#[test]
fn official_subset_zipedge_reads_bit_exact_and_matches_subset() {
    let edge = check_fixture("official_subset_zipedge.pth", "official_subset_zipedge.json", 31);
    let full = read_checkpoint(&fixture("official_subset.pth")).unwrap();
    for t in &edge {
        let f = full.iter().find(|f| f.name == t.name).unwrap_or_else(|| panic!("{} not in the subset", t.name));
        assert_eq!(f, t, "{} differs between the two fixtures", t.name);
    }
}

#[test]
fn zipedge_fixture_has_the_documented_layout() {
    // Root cause of the zip crate failure (see src/weights/pth/archive.rs): the first central
    // directory header is exactly as long as the zip64 EOCD record + locator that torch.save
    // writes between the central directory and the classic EOCD.
    let b = std::fs::read(fixture("official_subset_zipedge.pth")).unwrap();
    let n = b.len();
    let eocd = n - 22;
    assert_eq!(&b[eocd..eocd + 4], b"PK\x05\x06");
    assert_eq!(&b[eocd - 20..eocd - 16], b"PK\x06\x07", "zip64 locator before the EOCD");
    assert_eq!(&b[eocd - 76..eocd - 72], b"PK\x06\x06", "zip64 record before the locator");
    let cd_size = u32::from_le_bytes(b[eocd + 12..eocd + 16].try_into().unwrap()) as usize;
    let cd_off = u32::from_le_bytes(b[eocd + 16..eocd + 20].try_into().unwrap()) as usize;
    assert_eq!(cd_off + cd_size, eocd - 76, "central directory ends at the zip64 record");
    let first_name_len = u16::from_le_bytes(b[cd_off + 28..cd_off + 30].try_into().unwrap()) as usize;
    assert_eq!(46 + first_name_len, 76, "first central header is 76 bytes long");
    // The position the zip crate guesses (EOCD - cd_size) holds a real central header signature.
    assert_eq!(&b[eocd - cd_size..eocd - cd_size + 4], b"PK\x01\x02");
    // Informational: what the zip crate itself says about this file.
    match zip::ZipArchive::new(std::io::Cursor::new(&b[..])) {
        Ok(_) => eprintln!("zip crate accepts official_subset_zipedge.pth"),
        Err(e) => eprintln!("zip crate rejects official_subset_zipedge.pth: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Hand-made checkpoints: zip writer and pickle builder
// ---------------------------------------------------------------------------------------------

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A stored zip archive. `zip64_tail` adds the zip64 EOCD record + locator that torch.save writes;
/// `method` is written into the headers as is (data is never compressed).
fn make_zip(entries: &[(String, Vec<u8>)], zip64_tail: bool, method: u16) -> Vec<u8> {
    let mut out = Vec::new();
    let mut cd = Vec::new();
    for (name, data) in entries {
        let off = out.len() as u32;
        let crc = crc32(data);
        out.extend_from_slice(b"PK\x03\x04");
        out.extend_from_slice(&20u16.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes()); // flags
        out.extend_from_slice(&method.to_le_bytes());
        out.extend_from_slice(&[0; 4]); // time, date
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);

        cd.extend_from_slice(b"PK\x01\x02");
        cd.extend_from_slice(&0x031eu16.to_le_bytes());
        cd.extend_from_slice(&20u16.to_le_bytes());
        cd.extend_from_slice(&0u16.to_le_bytes());
        cd.extend_from_slice(&method.to_le_bytes());
        cd.extend_from_slice(&[0; 4]);
        cd.extend_from_slice(&crc.to_le_bytes());
        cd.extend_from_slice(&(data.len() as u32).to_le_bytes());
        cd.extend_from_slice(&(data.len() as u32).to_le_bytes());
        cd.extend_from_slice(&(name.len() as u16).to_le_bytes());
        cd.extend_from_slice(&[0; 4]); // extra len, comment len
        cd.extend_from_slice(&[0; 8]); // disk, internal attr, external attr
        cd.extend_from_slice(&off.to_le_bytes());
        cd.extend_from_slice(name.as_bytes());
    }
    let cd_off = out.len();
    out.extend_from_slice(&cd);
    let n = entries.len();
    if zip64_tail {
        let rec = out.len();
        out.extend_from_slice(b"PK\x06\x06");
        out.extend_from_slice(&44u64.to_le_bytes());
        out.extend_from_slice(&798u16.to_le_bytes());
        out.extend_from_slice(&45u16.to_le_bytes());
        out.extend_from_slice(&[0; 8]); // disk numbers
        out.extend_from_slice(&(n as u64).to_le_bytes());
        out.extend_from_slice(&(n as u64).to_le_bytes());
        out.extend_from_slice(&(cd.len() as u64).to_le_bytes());
        out.extend_from_slice(&(cd_off as u64).to_le_bytes());
        out.extend_from_slice(b"PK\x06\x07");
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(rec as u64).to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
    }
    out.extend_from_slice(b"PK\x05\x06");
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(n as u16).to_le_bytes());
    out.extend_from_slice(&(n as u16).to_le_bytes());
    out.extend_from_slice(&(cd.len() as u32).to_le_bytes());
    out.extend_from_slice(&(cd_off as u32).to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// Protocol-2 pickle builder emitting the opcodes torch.save uses.
struct Pk(Vec<u8>);

impl Pk {
    fn new() -> Self {
        Pk(vec![0x80, 0x02])
    }
    fn op(&mut self, b: u8) -> &mut Self {
        self.0.push(b);
        self
    }
    fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.0.push(b'c');
        self.0.extend_from_slice(module.as_bytes());
        self.0.push(b'\n');
        self.0.extend_from_slice(name.as_bytes());
        self.0.push(b'\n');
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.0.push(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn int(&mut self, v: i64) -> &mut Self {
        if (0..256).contains(&v) {
            self.0.extend_from_slice(&[b'K', v as u8]);
        } else if (0..65536).contains(&v) {
            self.0.push(b'M');
            self.0.extend_from_slice(&(v as u16).to_le_bytes());
        } else {
            self.0.push(b'J');
            self.0.extend_from_slice(&(v as i32).to_le_bytes());
        }
        self
    }
    fn ints(&mut self, v: &[usize]) -> &mut Self {
        self.op(b'(');
        for &x in v {
            self.int(x as i64);
        }
        self.op(b't')
    }
    fn empty_ordered_dict(&mut self) -> &mut Self {
        self.global("collections", "OrderedDict").op(b')').op(b'R')
    }
    /// `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`.
    fn tensor(
        &mut self,
        storage: &str,
        key: &str,
        numel: usize,
        offset: usize,
        shape: &[usize],
        stride: &[usize],
    ) -> &mut Self {
        self.global("torch._utils", "_rebuild_tensor_v2").op(b'(');
        self.op(b'(').str("storage").global("torch", storage).str(key).str("cpu").int(numel as i64).op(b't').op(b'Q');
        self.int(offset as i64).ints(shape).ints(stride).op(0x89).empty_ordered_dict();
        self.op(b't').op(b'R')
    }
    /// An OrderedDict state dict with `_metadata`, as `model.state_dict()` pickles it. `items`
    /// emits `key, value` pairs.
    fn state_dict(&mut self, items: impl FnOnce(&mut Self)) -> &mut Self {
        self.empty_ordered_dict().op(b'(');
        items(self);
        self.op(b'u');
        // BUILD with {'_metadata': OrderedDict([('', {'version': 1})])}
        self.op(b'}').str("_metadata").empty_ordered_dict();
        self.str("").op(b'}').str("version").int(1).op(b's').op(b's');
        self.op(b's').op(b'b')
    }
    fn finish(&mut self) -> Vec<u8> {
        self.op(b'.');
        std::mem::take(&mut self.0)
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A torch.save-like archive: `<prefix>/data.pkl`, `<prefix>/data/<key>`, byteorder, version.
fn checkpoint(prefix: &str, pkl: Vec<u8>, storages: &[(&str, Vec<u8>)], zip64_tail: bool) -> Vec<u8> {
    let mut e = vec![(format!("{prefix}/data.pkl"), pkl), (format!("{prefix}/byteorder"), b"little".to_vec())];
    for (k, d) in storages {
        e.push((format!("{prefix}/data/{k}"), d.clone()));
    }
    e.push((format!("{prefix}/version"), b"3\n".to_vec()));
    make_zip(&e, zip64_tail, 0)
}

fn tmp_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("pth_reader_{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_tmp(name: &str, bytes: &[u8]) -> PathBuf {
    let p = tmp_dir().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn read_err(name: &str, bytes: &[u8]) -> String {
    let p = write_tmp(name, bytes);
    match read_checkpoint(&p) {
        Ok(t) => panic!("{name}: expected an error, read {} tensors", t.len()),
        Err(DspnetError::ModelFormat(m)) => {
            eprintln!("{m}");
            assert!(m.contains(name), "message should name the file: {m}");
            m
        }
        Err(other) => panic!("{name}: expected a ModelFormat error, got {other:?}"),
    }
}

fn assert_mentions(msg: &str, words: &[&str]) {
    let low = msg.to_lowercase();
    for w in words {
        assert!(low.contains(&w.to_lowercase()), "message lacks {w:?}: {msg}");
    }
}

// ---------------------------------------------------------------------------------------------
// Successful reads of hand-made checkpoints
// ---------------------------------------------------------------------------------------------

/// Storage "0": 12 f32 values 0..12; views of it, plus other dtypes.
fn views_checkpoint(prefix: &str, nested: Option<&str>, zip64_tail: bool) -> Vec<u8> {
    let mut p = Pk::new();
    let sd = |p: &mut Pk| {
        p.state_dict(|p| {
            // contiguous 3x4 view of the whole storage
            p.str("w").tensor("FloatStorage", "0", 12, 0, &[3, 4], &[4, 1]);
            // its transpose (shared storage)
            p.str("w_t").tensor("FloatStorage", "0", 12, 0, &[4, 3], &[1, 4]);
            // offset + non-unit stride: elements 5, 7, 9
            p.str("strided").tensor("FloatStorage", "0", 12, 5, &[3], &[2]);
            // a 0-d tensor at an offset
            p.str("scalar").tensor("FloatStorage", "0", 12, 11, &[], &[]);
            // broadcast row (stride 0)
            p.str("bcast").tensor("FloatStorage", "0", 12, 4, &[2, 4], &[0, 1]);
            // other dtypes
            p.str("nbt").tensor("LongStorage", "1", 1, 0, &[], &[]);
            p.str("half").tensor("HalfStorage", "2", 2, 0, &[2], &[1]);
            p.str("bf16").tensor("BFloat16Storage", "3", 2, 0, &[2], &[1]);
            p.str("empty").tensor("FloatStorage", "0", 12, 0, &[0, 4], &[4, 1]);
            // a Parameter, as a state dict with keep_vars=True pickles it
            p.str("param").global("torch._utils", "_rebuild_parameter");
            p.tensor("FloatStorage", "0", 12, 0, &[2], &[1]).op(0x88).empty_ordered_dict().op(0x87).op(b'R');
            // non-tensor values are skipped
            p.str("note").str("not a tensor");
        });
    };
    match nested {
        None => sd(&mut p),
        Some(key) => {
            p.op(b'}').op(b'(');
            p.str("epoch").int(7);
            p.str("meta").op(b'}').str("lr").op(b'G');
            p.0.extend_from_slice(&0.01f64.to_be_bytes());
            p.op(b's');
            p.str("optimizer").op(b'}').str("state").op(b'}').op(b's');
            p.str(key);
            sd(&mut p);
            p.str("name").str("dspnet");
            p.op(b'u');
        }
    }
    let pkl = p.finish();
    let s0 = f32_bytes(&(0..12).map(|i| i as f32).collect::<Vec<_>>());
    let s1 = 42i64.to_le_bytes().to_vec();
    let s2 = [0x3c00u16, 0xc000].iter().flat_map(|h| h.to_le_bytes()).collect::<Vec<u8>>(); // 1.0, -2.0
    let s3 = [0x3f80u16, 0x4040].iter().flat_map(|h| h.to_le_bytes()).collect::<Vec<u8>>(); // 1.0, 3.0
    checkpoint(prefix, pkl, &[("0", s0), ("1", s1), ("2", s2), ("3", s3)], zip64_tail)
}

fn check_views(tensors: &[PthTensor]) {
    let names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["w", "w_t", "strided", "scalar", "bcast", "nbt", "half", "bf16", "empty", "param"]);
    let get = |n: &str| tensors.iter().find(|t| t.name == n).unwrap();
    let f = |n: &str| get(n).to_f32_vec().unwrap();
    assert_eq!(get("w").shape, [3, 4]);
    assert_eq!(f("w"), (0..12).map(|i| i as f32).collect::<Vec<_>>());
    assert_eq!(get("w_t").shape, [4, 3]);
    assert_eq!(f("w_t"), [0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]);
    assert_eq!(f("strided"), [5., 7., 9.]);
    assert!(get("scalar").shape.is_empty());
    assert_eq!(f("scalar"), [11.]);
    assert_eq!(f("bcast"), [4., 5., 6., 7., 4., 5., 6., 7.]);
    assert_eq!(get("nbt").dtype, PthDtype::I64);
    assert_eq!(get("nbt").data, 42i64.to_le_bytes());
    assert_eq!(get("half").dtype, PthDtype::F16);
    assert_eq!(f("half"), [1.0, -2.0]);
    assert_eq!(get("bf16").dtype, PthDtype::BF16);
    assert_eq!(f("bf16"), [1.0, 3.0]);
    assert_eq!(get("empty").shape, [0, 4]);
    assert!(get("empty").data.is_empty());
    assert_eq!(f("param"), [0.0, 1.0]);
    // candle conversion keeps dtype and shape
    let t = get("w_t").to_candle(&candle_core::Device::Cpu).unwrap();
    assert_eq!(t.dims(), [4, 3]);
    assert_eq!(t.to_vec2::<f32>().unwrap()[1], [1., 5., 9.]);
}

#[test]
fn top_level_state_dict_with_views_and_dtypes() {
    let b = views_checkpoint("my_ckpt", None, true);
    check_views(&read_checkpoint(&write_tmp("views.pth", &b)).unwrap());
    check_views(&read_checkpoint_bytes(&b).unwrap());
}

#[test]
fn nested_state_dicts_are_found() {
    for key in ["model", "state_dict", "model_state_dict"] {
        let b = views_checkpoint("archive", Some(key), false);
        let t = read_checkpoint(&write_tmp(&format!("nested_{key}.pth"), &b)).unwrap_or_else(|e| panic!("{key}: {e}"));
        check_views(&t);
    }
}

#[test]
fn prefix_lengths_around_the_zip_crate_edge_all_read() {
    // torch.save's layout (zip64 tail) with prefixes of 15..=25 characters; 21 is the one whose
    // first central header is 76 bytes long and makes the zip crate misplace the directory.
    for len in 15..=25 {
        let prefix: String = "p".repeat(len);
        let b = views_checkpoint(&prefix, None, true);
        let crate_ok = zip::ZipArchive::new(std::io::Cursor::new(&b[..])).is_ok();
        eprintln!("prefix length {len}: zip crate {}", if crate_ok { "accepts" } else { "rejects" });
        check_views(&read_checkpoint_bytes(&b).unwrap_or_else(|e| panic!("prefix length {len}: {e}")));
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

#[test]
fn truncated_fixture_is_reported() {
    let full = std::fs::read(fixture("official_subset.pth")).unwrap();
    for (i, cut) in [full.len() / 2, full.len() - 1, full.len() - 30, 100].into_iter().enumerate() {
        let m = read_err(&format!("truncated_{i}.pth"), &full[..cut]);
        assert_mentions(&m, &["truncated"]);
    }
}

#[test]
fn random_bytes_are_not_a_checkpoint() {
    let mut x: u64 = 0x1234_5678_9abc_def0;
    let bytes: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let m = read_err("random.pth", &bytes);
    assert_mentions(&m, &["not a pytorch checkpoint"]);
    let m = read_err("empty.pth", &[]);
    assert_mentions(&m, &["empty"]);
}

#[test]
fn legacy_pickle_checkpoint_is_reported() {
    // pickle.dump(0x1950a86a20f9469cfc6c, protocol=2) followed by the rest of a legacy file.
    let mut b = vec![0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, b'.'];
    b.extend_from_slice(b"\x80\x02M\xe9\x03.\x80\x02}q\x00(X\x10\x00\x00\x00protocol_version");
    let m = read_err("legacy.pth", &b);
    assert_mentions(&m, &["legacy", "_use_new_zipfile_serialization", "1.6"]);
}

#[test]
fn pickled_model_object_is_reported() {
    // torch.save(model): the top-level object is an instance of the model class.
    let mut p = Pk::new();
    p.global("models.grid_proto_fewshot", "FewShotSeg").op(b')').op(0x81);
    p.op(b'}').str("training").op(0x89).op(b's');
    p.str("_modules").empty_ordered_dict().op(b's').op(b'b');
    let b = checkpoint("model_pickle", p.finish(), &[], true);
    let m = read_err("model_object.pth", &b);
    assert_mentions(&m, &["pickled model object", "models.grid_proto_fewshot.FewShotSeg", "state_dict()"]);

    // torch.save({"model": model, "epoch": 3})
    let mut p = Pk::new();
    p.op(b'}').op(b'(').str("model").global("models.grid_proto_fewshot", "FewShotSeg").op(b')').op(0x81);
    p.op(b'}').op(b'b').str("epoch").int(3).op(b'u');
    let b = checkpoint("model_pickle", p.finish(), &[], false);
    let m = read_err("model_in_dict.pth", &b);
    assert_mentions(&m, &["pickled model object", "FewShotSeg", "\"model\"", "state_dict()"]);
}

#[test]
fn storage_outside_its_data_file_is_reported() {
    // View needs 100 floats; the data file holds 4.
    let mut p = Pk::new();
    p.state_dict(|p| {
        p.str("w").tensor("FloatStorage", "0", 4, 0, &[10, 10], &[10, 1]);
    });
    let b = checkpoint("oob", p.finish(), &[("0", f32_bytes(&[1.0; 4]))], true);
    let m = read_err("oob_view.pth", &b);
    assert_mentions(&m, &["points outside its data file", "'w'"]);

    // The storage record declares more elements than the data file holds.
    let mut p = Pk::new();
    p.state_dict(|p| {
        p.str("w").tensor("FloatStorage", "0", 400, 0, &[2], &[1]);
    });
    let b = checkpoint("oob", p.finish(), &[("0", f32_bytes(&[1.0; 4]))], true);
    let m = read_err("oob_storage.pth", &b);
    assert_mentions(&m, &["points outside its data file"]);

    // Storage offset past the end.
    let mut p = Pk::new();
    p.state_dict(|p| {
        p.str("w").tensor("FloatStorage", "0", 4, 7, &[1], &[1]);
    });
    let b = checkpoint("oob", p.finish(), &[("0", f32_bytes(&[1.0; 4]))], true);
    let m = read_err("oob_offset.pth", &b);
    assert_mentions(&m, &["points outside its data file"]);

    // No data file at all for the storage key.
    let mut p = Pk::new();
    p.state_dict(|p| {
        p.str("w").tensor("FloatStorage", "9", 4, 0, &[4], &[1]);
    });
    let b = checkpoint("oob", p.finish(), &[("0", f32_bytes(&[1.0; 4]))], true);
    let m = read_err("missing_storage.pth", &b);
    assert_mentions(&m, &["no data file", "oob/data/9"]);
}

#[test]
fn missing_file_is_an_io_error() {
    let p = tmp_dir().join("does_not_exist.pth");
    match read_checkpoint(&p) {
        Err(DspnetError::Io { path, .. }) => assert_eq!(path, p),
        other => panic!("expected an Io error, got {other:?}"),
    }
}

#[test]
fn missing_data_pkl_is_reported() {
    let b = make_zip(&[("archive/readme.txt".to_string(), b"hello".to_vec())], false, 0);
    let m = read_err("no_pkl.pth", &b);
    assert_mentions(&m, &["data.pkl"]);
}

#[test]
fn checkpoint_without_tensors_is_reported() {
    let mut p = Pk::new();
    p.op(b'}').op(b'(').str("epoch").int(3).str("model").op(b'}').str("best").str("x").op(b'u');
    let b = checkpoint("empty_ckpt", p.finish(), &[], true);
    let m = read_err("no_tensors.pth", &b);
    assert_mentions(&m, &["no tensors"]);

    let mut p = Pk::new();
    p.state_dict(|_| {});
    let b = checkpoint("empty_sd", p.finish(), &[], true);
    let m = read_err("empty_state_dict.pth", &b);
    assert_mentions(&m, &["no tensors"]);
}

#[test]
fn big_endian_checkpoint_is_reported() {
    let mut p = Pk::new();
    p.state_dict(|p| {
        p.str("w").tensor("FloatStorage", "0", 1, 0, &[1], &[1]);
    });
    let e = vec![
        ("be/data.pkl".to_string(), p.finish()),
        ("be/byteorder".to_string(), b"big".to_vec()),
        ("be/data/0".to_string(), 1.0f32.to_be_bytes().to_vec()),
    ];
    let m = read_err("big_endian.pth", &make_zip(&e, true, 0));
    assert_mentions(&m, &["big-endian"]);
}

#[test]
fn compressed_members_are_reported() {
    // Headers say deflate (8); both the zip crate (no deflate support built in) and the fallback
    // reader must refuse with a message about compression, not misread the bytes.
    let mut p = Pk::new();
    p.state_dict(|p| {
        p.str("w").tensor("FloatStorage", "0", 1, 0, &[1], &[1]);
    });
    let e = vec![("c/data.pkl".to_string(), p.finish()), ("c/data/0".to_string(), f32_bytes(&[1.0]))];
    let m = read_err("compressed.pth", &make_zip(&e, false, 8));
    assert_mentions(&m, &["compressed"]);
}

#[test]
fn malformed_pickles_give_errors_not_panics() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("no_stop.pth", b"\x80\x02}q\x00".to_vec()),
        ("bad_opcode.pth", b"\x80\x02\xff.".to_vec()),
        ("huge_string.pth", b"\x80\x02X\xff\xff\xff\x7f".to_vec()),
        ("underflow.pth", b"\x80\x02t.".to_vec()),
        ("bad_memo.pth", b"\x80\x02h\x09.".to_vec()),
    ];
    for (name, pkl) in cases {
        let b = checkpoint("bad", pkl, &[], true);
        let m = read_err(name, &b);
        assert_mentions(&m, &["data.pkl"]);
    }
}

#[test]
fn mutated_fixtures_never_panic() {
    let orig = std::fs::read(fixture("official_subset_zipedge.pth")).unwrap();
    let n = orig.len();
    let pkl_len = 19282usize; // data.pkl occupies the start of the file
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (mut ok, mut err) = (0, 0);
    for round in 0..600 {
        let mut b = orig.clone();
        let flips = 1 + (next() % 4) as usize;
        for _ in 0..flips {
            // Alternate between the pickle, the central directory / EOCD and anywhere.
            let at = match round % 3 {
                0 => 30 + (next() as usize % pkl_len),
                1 => n - 1 - (next() as usize % 3000),
                _ => next() as usize % n,
            };
            b[at] = next() as u8;
        }
        match read_checkpoint_bytes(&b) {
            Ok(_) => ok += 1,
            Err(DspnetError::ModelFormat(_)) => err += 1,
            Err(other) => panic!("unexpected error kind: {other:?}"),
        }
    }
    eprintln!("mutations: {ok} read, {err} rejected");
}
