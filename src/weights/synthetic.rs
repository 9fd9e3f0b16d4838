//! The deterministic synthetic-weight generator of the golden vectors (docs/model.md, 'Parity tests').
//!
//! Tests, C/C++ consumers and the Slicer extension use these weights instead of a 170 MB checkpoint:
//! any IEEE implementation rebuilds them bit for bit from a key name and a seed, so a golden vector
//! produced by the official PyTorch code can be reproduced here without shipping the weights.

const PHI: u64 = 0x9E37_79B9_7F4A_7C15;

/// FNV-1a over the UTF-8 bytes of `key`.
pub fn fnv1a(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// SplitMix64 finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// 24-bit uniform in [0, 1) for element `index` (row-major) of the tensor named `key`.
pub fn uniform(key: &str, seed: u64, index: u64) -> f64 {
    let h = fnv1a(key) ^ seed.wrapping_mul(PHI);
    (mix(h.wrapping_add((index + 1).wrapping_mul(PHI))) >> 40) as f64 / (1u64 << 24) as f64
}

/// Is `key` the last BatchNorm weight of a bottleneck (`layer<L>.<b>.bn3.weight`)? Those are damped
/// by 1/8 so that features stay O(1) through 100+ residual blocks.
fn is_bottleneck_bn3_weight(key: &str) -> bool {
    let Some(prefix) = key.strip_suffix(".bn3.weight") else { return false };
    let mut parts = prefix.rsplit('.');
    let block = parts.next().unwrap_or("");
    let layer = parts.next().unwrap_or("");
    !block.is_empty()
        && block.bytes().all(|b| b.is_ascii_digit())
        && layer.strip_prefix("layer").is_some_and(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
}

/// Generator values of a float tensor, as f32 (formula evaluated in f64, rounded once).
/// Returns `None` for `num_batches_tracked`, which is an int64 zero and draws no random numbers.
pub fn tensor_values(key: &str, shape: &[usize], seed: u64) -> Option<Vec<f32>> {
    let last = key.rsplit('.').next().unwrap_or(key);
    if last == "num_batches_tracked" {
        return None;
    }
    let n: usize = shape.iter().product();
    let fan_in = if shape.len() == 4 { (shape[1] * shape[2] * shape[3]) as f64 } else { 1.0 };
    let damped = is_bottleneck_bn3_weight(key);
    let values = (0..n as u64)
        .map(|i| {
            let x = uniform(key, seed, i);
            let v = match (shape.len(), last) {
                (4, "weight") => (2.0 * x - 1.0) * (6.0 / fan_in).sqrt(),
                (1, "weight") => {
                    let g = 1.0 + 0.25 * (x - 0.5);
                    if damped {
                        g * 0.125
                    } else {
                        g
                    }
                }
                (1, "bias") | (1, "running_mean") => 0.125 * (x - 0.5),
                (1, "running_var") => 0.75 + 0.5 * x,
                _ => 2.0 * x - 1.0,
            };
            v as f32
        })
        .collect();
    Some(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check table of the golden set (seed 1, first four elements, f32 bits).
    #[test]
    fn matches_reference_table() {
        let table: [(&str, &[usize], u64, [u32; 4]); 4] = [
            (
                "encoder.backbone.conv1.weight",
                &[64, 3, 7, 7],
                0x9e6261724329ece9,
                [0x3e2414c8, 0xbda5028c, 0x3d6cf35b, 0xbe45f249],
            ),
            (
                "encoder.backbone.layer1.0.bn3.weight",
                &[256],
                0x064a893458c4fe01,
                [0x3dfed811, 0x3de06f47, 0x3e0fd3b7, 0x3df40026],
            ),
            (
                "encoder.backbone.bn1.running_var",
                &[64],
                0x2bec069899b224ec,
                [0x3f4a4d66, 0x3f4790ee, 0x3f8c8410, 0x3f896e64],
            ),
            (
                "encoder.localconv.weight",
                &[256, 2048, 1, 1],
                0x5760b667895d6e1a,
                [0x3ca128b1, 0xbd2225fe, 0xbcec52c0, 0x3cf1a7c1],
            ),
        ];
        for (key, shape, fnv, bits) in table {
            assert_eq!(fnv1a(key), fnv, "fnv1a({key})");
            let v = tensor_values(key, shape, 1).unwrap();
            assert_eq!(v.len(), shape.iter().product::<usize>());
            let got: Vec<u32> = v[..4].iter().map(|x| x.to_bits()).collect();
            assert_eq!(got, bits, "{key}");
        }
        // u·2^24 integers of the first row.
        let ints: Vec<u64> =
            (0..4).map(|i| (uniform("encoder.backbone.conv1.weight", 1, i) * (1u64 << 24) as f64) as u64).collect();
        assert_eq!(ints, [15041826, 5043169, 10790596, 362211]);
    }

    #[test]
    fn only_bottleneck_bn3_is_damped() {
        assert!(is_bottleneck_bn3_weight("encoder.backbone.layer3.22.bn3.weight"));
        assert!(!is_bottleneck_bn3_weight("encoder.backbone.layer1.0.downsample.1.weight"));
        assert!(!is_bottleneck_bn3_weight("encoder.backbone.bn1.weight"));
        assert!(tensor_values("x.num_batches_tracked", &[], 1).is_none());
    }
}
