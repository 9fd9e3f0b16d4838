//! The episode augmentation `sabs_aug` (docs/model.md, 'Training'): a random affine map, an elastic deformation and a
//! gamma change of the image. Support and query are two independent draws from the same slice.
//!
//! The affine map and the elastic displacement are composed into one sampling of the source (bilinear,
//! 0 outside), where the reference resamples twice (cv2.warpAffine, then scipy map_coordinates); the
//! mask goes through the same map as a float and is re-binarised at 0.5 (the reference's argmax of the
//! warped one-hot label).

use super::rng::Rng;
use super::superpixels::gaussian_blur;

/// Ranges of the random transformation (the reference's values by default).
#[derive(Clone, Debug, PartialEq)]
pub struct AugmentOptions {
    /// Rotation, ± degrees.
    pub rotation: f64,
    /// Translation in x and y, ± pixels.
    pub translation: f64,
    /// Shear, ± degrees.
    pub shear: f64,
    /// Isotropic zoom range.
    pub zoom: (f64, f64),
    /// Elastic displacement: uniform noise in ±1, blurred with this σ (pixels), times `elastic_alpha`.
    pub elastic_sigma: f64,
    pub elastic_alpha: f64,
    /// Gamma range (image only).
    pub gamma: (f64, f64),
}

impl Default for AugmentOptions {
    fn default() -> Self {
        AugmentOptions {
            rotation: 5.0,
            translation: 5.0,
            shear: 5.0,
            zoom: (0.9, 1.2),
            elastic_sigma: 5.0,
            elastic_alpha: 10.0,
            gamma: (0.5, 1.5),
        }
    }
}

/// 2x3 affine matrix (x, y) → (x', y') in pixel coordinates.
type Affine = [[f64; 3]; 2];

fn compose(a: &Affine, b: &Affine) -> Affine {
    let mut m = [[0.0; 3]; 2];
    for r in 0..2 {
        for c in 0..3 {
            m[r][c] = a[r][0] * b[0][c] + a[r][1] * b[1][c] + if c == 2 { a[r][2] } else { 0.0 };
        }
    }
    m
}

fn invert(m: &Affine) -> Affine {
    let det = m[0][0] * m[1][1] - m[0][1] * m[1][0];
    let (a, b, c, d) = (m[1][1] / det, -m[0][1] / det, -m[1][0] / det, m[0][0] / det);
    [[a, b, -(a * m[0][2] + b * m[1][2])], [c, d, -(c * m[0][2] + d * m[1][2])]]
}

/// `m` applied about the image centre.
fn about_centre(m: [[f64; 2]; 2], centre: f64) -> Affine {
    let shift = centre - (m[0][0] + m[0][1]) * centre;
    let shift_y = centre - (m[1][0] + m[1][1]) * centre;
    [[m[0][0], m[0][1], shift], [m[1][0], m[1][1], shift_y]]
}

/// Bilinear sample of an `n x n` image at (x, y); 0 outside.
fn sample(img: &[f32], n: usize, x: f64, y: f64) -> f32 {
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = ((x - x0) as f32, (y - y0) as f32);
    let at = |yy: f64, xx: f64| -> f32 {
        if xx < 0.0 || yy < 0.0 || xx >= n as f64 || yy >= n as f64 {
            0.0
        } else {
            img[yy as usize * n + xx as usize]
        }
    };
    let top = at(y0, x0) * (1.0 - fx) + at(y0, x0 + 1.0) * fx;
    let bottom = at(y0 + 1.0, x0) * (1.0 - fx) + at(y0 + 1.0, x0 + 1.0) * fx;
    top * (1.0 - fy) + bottom * fy
}

/// One random augmentation of an `n x n` image and its binary mask.
pub fn augment(image: &[f32], mask: &[u8], n: usize, opts: &AugmentOptions, rng: &mut Rng) -> (Vec<f32>, Vec<u8>) {
    let centre = (n as f64 - 1.0) / 2.0;
    let rot = rng.range(-opts.rotation, opts.rotation).to_radians();
    let (tx, ty) = (rng.range(-opts.translation, opts.translation), rng.range(-opts.translation, opts.translation));
    let shear = rng.range(-opts.shear, opts.shear).to_radians();
    let zoom = rng.range(opts.zoom.0, opts.zoom.1);
    // zoom · shear · translate · rotate, rotation, shear and zoom about the centre.
    let rotate = about_centre([[rot.cos(), -rot.sin()], [rot.sin(), rot.cos()]], centre);
    let translate: Affine = [[1.0, 0.0, tx], [0.0, 1.0, ty]];
    let shear_m = about_centre([[1.0, -shear.sin()], [0.0, shear.cos()]], centre);
    let zoom_m = about_centre([[zoom, 0.0], [0.0, zoom]], centre);
    let forward = compose(&zoom_m, &compose(&shear_m, &compose(&translate, &rotate)));
    let inverse = invert(&forward);

    let mut noise = || -> Vec<f32> {
        let u: Vec<f32> = (0..n * n).map(|_| rng.range(-1.0, 1.0) as f32).collect();
        gaussian_blur(&u, n, n, opts.elastic_sigma).into_iter().map(|v| v * opts.elastic_alpha as f32).collect()
    };
    let (dx, dy) = (noise(), noise());
    let gamma = rng.range(opts.gamma.0, opts.gamma.1);

    let maskf: Vec<f32> = mask.iter().map(|&m| f32::from(m != 0)).collect();
    let mut out_img = vec![0f32; n * n];
    let mut out_mask = vec![0u8; n * n];
    for y in 0..n {
        for x in 0..n {
            let p = y * n + x;
            // The elastic field displaces the affine output; map back through the inverse affine.
            let (ex, ey) = (x as f64 + dx[p] as f64, y as f64 + dy[p] as f64);
            let sx = inverse[0][0] * ex + inverse[0][1] * ey + inverse[0][2];
            let sy = inverse[1][0] * ex + inverse[1][1] * ey + inverse[1][2];
            out_img[p] = sample(image, n, sx, sy);
            out_mask[p] = u8::from(sample(&maskf, n, sx, sy) > 0.5);
        }
    }
    // Gamma: I' = r·((I − min + 1e-5)/r)^γ + min, r = max − min + 1e-5.
    let (lo, hi) = out_img.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let r = (hi - lo) as f64 + 1e-5;
    out_img.iter_mut().for_each(|v| *v = (r * (((*v - lo) as f64 + 1e-5) / r).powf(gamma) + lo as f64) as f32);
    (out_img, out_mask)
}
