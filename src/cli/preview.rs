//! `--preview`: a PNG montage of a few slices, image in grey, labels as a coloured overlay.

use std::path::Path;

use dspnet::volume::normalize::percentile;
use dspnet::volume::slicing::{extract_slice, in_plane_axes, slice_shape};
use dspnet::{util::write_atomically, DspnetError, Result};

/// Distinct colours for label values 1, 2, ... (cycled).
const PALETTE: [[u8; 3]; 8] = [
    [230, 25, 75],
    [60, 180, 75],
    [255, 225, 25],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
];

/// Write a montage of `slices` (indices along `axis`), each scaled to `tile` px high with square pixels.
pub fn write_montage(
    path: &Path,
    image: &[f32],
    labels: &[u16],
    dims: [usize; 3],
    spacing: [f64; 3],
    axis: usize,
    slices: &[usize],
) -> Result<()> {
    if slices.is_empty() {
        return Err(DspnetError::InvalidArgument("no slice to preview".into()));
    }
    let (rows, cols) = slice_shape(dims, axis);
    let (ra, ca) = in_plane_axes(axis);
    let tile_h = 256usize;
    let aspect = (cols as f64 * spacing[ca]) / (rows as f64 * spacing[ra]);
    let tile_w = ((tile_h as f64 * aspect).round() as usize).clamp(16, 1024);
    let lo = percentile(image, 1.0) as f32;
    let hi = (percentile(image, 99.0) as f32).max(lo + 1e-6);
    let per_row = slices.len().min(3);
    let grid_rows = slices.len().div_ceil(per_row);
    let (w, h) = (per_row * tile_w, grid_rows * tile_h);
    let mut rgb = vec![0u8; w * h * 3];
    for (t, &z) in slices.iter().enumerate() {
        let img = extract_slice(image, dims, axis, z);
        let lab = extract_slice(labels, dims, axis, z);
        let (ox, oy) = ((t % per_row) * tile_w, (t / per_row) * tile_h);
        for y in 0..tile_h {
            // Rows are flipped so that "up" on screen is the higher row index (superior/anterior for
            // the usual RAS-stored volumes), as viewers show it.
            let r = rows - 1 - (y * rows / tile_h).min(rows - 1);
            for x in 0..tile_w {
                let c = (x * cols / tile_w).min(cols - 1);
                let g = (((img[r * cols + c] - lo) / (hi - lo)).clamp(0.0, 1.0) * 255.0) as f32;
                let mut px = [g; 3];
                let l = lab[r * cols + c];
                if l != 0 {
                    let col = PALETTE[(l as usize - 1) % PALETTE.len()];
                    for ch in 0..3 {
                        px[ch] = 0.55 * px[ch] + 0.45 * col[ch] as f32;
                    }
                }
                let o = ((oy + y) * w + ox + x) * 3;
                for ch in 0..3 {
                    rgb[o + ch] = px[ch] as u8;
                }
            }
        }
    }
    write_atomically(path, |tmp| {
        let file = std::fs::File::create(tmp).map_err(|e| DspnetError::io(tmp, e))?;
        let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w as u32, h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let io = |e: png::EncodingError| DspnetError::io(path, std::io::Error::other(e.to_string()));
        let mut writer = enc.write_header().map_err(io)?;
        writer.write_image_data(&rgb).map_err(io)?;
        writer.finish().map_err(io)
    })
}

/// Up to six slices worth showing: the first support slice, and slices spread over the labelled range.
pub fn pick_slices(labels: &[u16], dims: [usize; 3], axis: usize, supports: &[usize]) -> Vec<usize> {
    let n = dims[axis];
    let labelled: Vec<usize> =
        (0..n).filter(|&z| dspnet::volume::slicing::slice_indices(dims, axis, z).any(|v| labels[v] != 0)).collect();
    let mut out: Vec<usize> = supports.iter().take(1).copied().collect();
    if let (Some(&a), Some(&b)) = (labelled.first(), labelled.last()) {
        for t in 0..5 {
            out.push(a + (b - a) * t / 4);
        }
    }
    out.sort_unstable();
    out.dedup();
    out.truncate(6);
    if out.is_empty() {
        out.push(n / 2);
    }
    out
}
