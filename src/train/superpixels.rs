//! Pseudo-labels for self-supervision (docs/model.md, 'Training'): Felzenszwalb–Huttenlocher graph segmentation of each
//! slice, restricted to the body.
//!
//! [`felzenszwalb`] follows `skimage.segmentation.felzenszwalb` (the reference's pseudo-label tool):
//! Gaussian pre-smoothing (scipy `gaussian_filter`, truncate 4, mode reflect), an 8-connected grid graph
//! weighted by intensity difference, edges merged in increasing weight order when the weight is below
//! both segments' internal difference + (scale/255)/size, then every edge joining a segment smaller than
//! `min_size` merged. The image is expected on a 0–255 scale (the official CT input).

/// Union-find with segment sizes and internal differences.
struct Forest {
    parent: Vec<u32>,
    size: Vec<u32>,
    internal: Vec<f32>,
}

impl Forest {
    fn new(n: usize) -> Self {
        Forest { parent: (0..n as u32).collect(), size: vec![1; n], internal: vec![0.0; n] }
    }

    fn find(&mut self, mut x: u32) -> u32 {
        while self.parent[x as usize] != x {
            let p = self.parent[x as usize];
            self.parent[x as usize] = self.parent[p as usize]; // path halving
            x = p;
        }
        x
    }

    /// Join two roots; returns the new root.
    fn join(&mut self, a: u32, b: u32) -> u32 {
        let (big, small) = if self.size[a as usize] >= self.size[b as usize] { (a, b) } else { (b, a) };
        self.parent[small as usize] = big;
        self.size[big as usize] += self.size[small as usize];
        big
    }
}

/// Separable Gaussian blur of a `h x w` image, scipy `gaussian_filter` semantics (radius
/// ⌊4σ + 0.5⌋, mode 'reflect': d c b a | a b c d).
pub fn gaussian_blur(img: &[f32], h: usize, w: usize, sigma: f64) -> Vec<f32> {
    if sigma <= 0.0 {
        return img.to_vec();
    }
    let radius = (4.0 * sigma + 0.5) as isize;
    let mut kernel: Vec<f64> = (-radius..=radius).map(|x| (-(x * x) as f64 / (2.0 * sigma * sigma)).exp()).collect();
    let total: f64 = kernel.iter().sum();
    kernel.iter_mut().for_each(|k| *k /= total);
    let reflect = |i: isize, n: usize| -> usize {
        let n = n as isize;
        let period = 2 * n;
        let m = i.rem_euclid(period);
        (if m < n { m } else { period - 1 - m }) as usize
    };
    let pass = |src: &[f32], along_rows: bool| -> Vec<f32> {
        let mut out = vec![0f32; h * w];
        for r in 0..h {
            for c in 0..w {
                let mut acc = 0f64;
                for (t, k) in kernel.iter().enumerate() {
                    let off = t as isize - radius;
                    let v = if along_rows {
                        src[reflect(r as isize + off, h) * w + c]
                    } else {
                        src[r * w + reflect(c as isize + off, w)]
                    };
                    acc += k * v as f64;
                }
                out[r * w + c] = acc as f32;
            }
        }
        out
    };
    pass(&pass(img, true), false)
}

/// Segment labels 0..K−1 (row-major, numbered in order of first appearance) of a grey `h x w` image.
pub fn felzenszwalb(img: &[f32], h: usize, w: usize, scale: f64, sigma: f64, min_size: usize) -> Vec<u32> {
    let n = h * w;
    if n == 0 {
        return Vec::new();
    }
    let s = gaussian_blur(img, h, w, sigma);
    // 8-connectivity without duplicates: right, down, down-right, up-right.
    let mut edges: Vec<(f32, u32, u32)> = Vec::with_capacity(4 * n);
    for r in 0..h {
        for c in 0..w {
            let p = r * w + c;
            let mut add = |q: usize| edges.push(((s[p] - s[q]).abs(), p as u32, q as u32));
            if c + 1 < w {
                add(p + 1);
            }
            if r + 1 < h {
                add(p + w);
                if c + 1 < w {
                    add(p + w + 1);
                }
            }
            if r > 0 && c + 1 < w {
                add(p - w + 1);
            }
        }
    }
    edges.sort_by(|a, b| a.0.total_cmp(&b.0));
    // skimage rescales `scale` by 1/255 "to behave like the reference implementation".
    let k = (scale / 255.0) as f32;
    let mut f = Forest::new(n);
    for &(wt, p, q) in &edges {
        let (a, b) = (f.find(p), f.find(q));
        if a == b {
            continue;
        }
        let ta = f.internal[a as usize] + k / f.size[a as usize] as f32;
        let tb = f.internal[b as usize] + k / f.size[b as usize] as f32;
        if wt < ta.min(tb) {
            let root = f.join(a, b);
            f.internal[root as usize] = wt; // edges come sorted: the new edge is the largest inside
        }
    }
    for &(_, p, q) in &edges {
        let (a, b) = (f.find(p), f.find(q));
        if a != b && ((f.size[a as usize] as usize) < min_size || (f.size[b as usize] as usize) < min_size) {
            f.join(a, b);
        }
    }
    let mut ids = vec![u32::MAX; n];
    let mut next = 0;
    (0..n)
        .map(|p| {
            let root = f.find(p as u32) as usize;
            if ids[root] == u32::MAX {
                ids[root] = next;
                next += 1;
            }
            ids[root]
        })
        .collect()
}

/// The body: pixels above `threshold`, largest 8-connected component, holes filled (background not
/// 4-connected to the image border). An empty threshold mask is returned as is.
pub fn body_mask(img: &[f32], h: usize, w: usize, threshold: f32) -> Vec<bool> {
    let above: Vec<bool> = img.iter().map(|&v| v > threshold).collect();
    let mut comp = vec![u32::MAX; h * w];
    let (mut best, mut best_size, mut id) = (u32::MAX, 0usize, 0u32);
    let mut stack = Vec::new();
    for start in 0..h * w {
        if !above[start] || comp[start] != u32::MAX {
            continue;
        }
        comp[start] = id;
        stack.push(start);
        let mut size = 0;
        while let Some(p) = stack.pop() {
            size += 1;
            let (r, c) = ((p / w) as isize, (p % w) as isize);
            for dr in -1..=1 {
                for dc in -1..=1 {
                    let (rr, cc) = (r + dr, c + dc);
                    if rr < 0 || cc < 0 || rr >= h as isize || cc >= w as isize {
                        continue;
                    }
                    let q = rr as usize * w + cc as usize;
                    if above[q] && comp[q] == u32::MAX {
                        comp[q] = id;
                        stack.push(q);
                    }
                }
            }
        }
        if size > best_size {
            (best, best_size) = (id, size);
        }
        id += 1;
    }
    if best_size == 0 {
        return above;
    }
    // Fill holes: flood the outside from the border through non-body pixels (4-connected).
    let body: Vec<bool> = comp.iter().map(|&c| c == best).collect();
    let mut outside = vec![false; h * w];
    for p in 0..h * w {
        let (r, c) = (p / w, p % w);
        if (r == 0 || c == 0 || r + 1 == h || c + 1 == w) && !body[p] && !outside[p] {
            outside[p] = true;
            stack.push(p);
        }
    }
    while let Some(p) = stack.pop() {
        let (r, c) = (p / w, p % w);
        let mut visit = |q: usize| {
            if !body[q] && !outside[q] {
                outside[q] = true;
                stack.push(q);
            }
        };
        if r > 0 {
            visit(p - w)
        }
        if r + 1 < h {
            visit(p + w)
        }
        if c > 0 {
            visit(p - 1)
        }
        if c + 1 < w {
            visit(p + 1)
        }
    }
    outside.iter().map(|o| !o).collect()
}

/// Superpixel settings ("MIDDLE" in docs/model.md, 'Training': scale 1, sigma 1, min_size 400 at 256×256).
#[derive(Clone, Debug, PartialEq)]
pub struct SuperpixelOptions {
    pub scale: f64,
    pub sigma: f64,
    pub min_size: usize,
    /// Body threshold on the 0–255 scale; `None` picks the modality's (see [`default_body_threshold`]).
    pub body_threshold: Option<f32>,
}

impl Default for SuperpixelOptions {
    fn default() -> Self {
        SuperpixelOptions { scale: 1.0, sigma: 1.0, min_size: 400, body_threshold: None }
    }
}

/// CT: 1e-4 on the windowed [0, 255] image, as the reference (everything above −125 HU). MRI: the
/// reference thresholds raw intensities at 50, a scanner-dependent number; 10 on the 0–255 scale
/// (about 4% of the clipped range) plays the same role of cutting the air noise.
pub fn default_body_threshold(modality: crate::volume::normalize::Modality) -> f32 {
    match modality {
        crate::volume::normalize::Modality::Ct => 1e-4,
        crate::volume::normalize::Modality::Mri => 10.0,
    }
}

/// Superpixel labels of one slice (0 = outside the body, 1..=K) and K. Each superpixel is a
/// Felzenszwalb segment cut to the body mask, as the reference does; unlike the reference, no segment is
/// dropped (its segment 0 and largest id are artefacts of its relabelling).
pub fn pseudo_labels(
    img255: &[f32],
    h: usize,
    w: usize,
    body_threshold: f32,
    opts: &SuperpixelOptions,
) -> (Vec<u16>, usize) {
    let segments = felzenszwalb(img255, h, w, opts.scale, opts.sigma, opts.min_size);
    let body = body_mask(img255, h, w, body_threshold);
    let mut ids: std::collections::HashMap<u32, u16> = std::collections::HashMap::new();
    let labels = segments
        .iter()
        .zip(&body)
        .map(|(&s, &inside)| {
            if !inside {
                return 0;
            }
            let next = ids.len() as u16 + 1;
            *ids.entry(s).or_insert(next)
        })
        .collect();
    (labels, ids.len())
}
