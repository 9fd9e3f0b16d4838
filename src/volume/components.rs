//! 3D connectivity: keep the parts of a prediction that are connected to what the user painted.

/// Keep only the voxels of `mask` that are 6-connected (face neighbours, ITK's default) to a voxel
/// in `seeds`. Both are flat volumes of `dims` (i fastest). Seeds outside the mask start nothing.
pub fn keep_connected_to(mask: &[bool], seeds: impl IntoIterator<Item = usize>, dims: [usize; 3]) -> Vec<bool> {
    let [ni, nj, nk] = dims;
    let mut keep = vec![false; mask.len()];
    let mut stack: Vec<usize> = Vec::new();
    for s in seeds {
        if s < mask.len() && mask[s] && !keep[s] {
            keep[s] = true;
            stack.push(s);
        }
    }
    while let Some(v) = stack.pop() {
        let i = v % ni;
        let j = (v / ni) % nj;
        let k = v / (ni * nj);
        let mut visit = |n: usize| {
            if mask[n] && !keep[n] {
                keep[n] = true;
                stack.push(n);
            }
        };
        if i > 0 {
            visit(v - 1)
        }
        if i + 1 < ni {
            visit(v + 1)
        }
        if j > 0 {
            visit(v - ni)
        }
        if j + 1 < nj {
            visit(v + ni)
        }
        if k > 0 {
            visit(v - ni * nj)
        }
        if k + 1 < nk {
            visit(v + ni * nj)
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_seeded_component() {
        // Two blobs along i on a 5x1x1 line: [x x . x x]; seed at 0.
        let mask = [true, true, false, true, true];
        assert_eq!(keep_connected_to(&mask, [0], [5, 1, 1]), vec![true, true, false, false, false]);
        // Diagonal neighbours are not face-connected.
        let dims = [2, 2, 1];
        let diag = [true, false, false, true];
        assert_eq!(keep_connected_to(&diag, [0], dims), vec![true, false, false, false]);
        // Connection through k.
        let dims = [1, 1, 3];
        assert_eq!(keep_connected_to(&[true, true, true], [2], dims), vec![true; 3]);
    }
}
