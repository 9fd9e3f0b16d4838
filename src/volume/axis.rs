//! The slice axis: the one the user painted along.

use super::options::AxisChoice;
use crate::{DspnetError, Result};

/// Number of slices along each axis that hold a non-zero label.
pub fn labelled_slice_counts(labels: &[u16], dims: [usize; 3]) -> [usize; 3] {
    slice_counts_where(labels, dims, |l| l != 0)
}

/// Number of slices along each axis that hold a label accepted by `counted`.
pub(crate) fn slice_counts_where(labels: &[u16], dims: [usize; 3], counted: impl Fn(u16) -> bool) -> [usize; 3] {
    let mut seen = [vec![false; dims[0]], vec![false; dims[1]], vec![false; dims[2]]];
    for (n, &l) in labels.iter().enumerate() {
        if counted(l) {
            let i = n % dims[0];
            let j = (n / dims[0]) % dims[1];
            let k = n / (dims[0] * dims[1]);
            seen[0][i] = true;
            seen[1][j] = true;
            seen[2][k] = true;
        }
    }
    [0, 1, 2].map(|a| seen[a].iter().filter(|&&s| s).count())
}

const AXIS_NAMES: [&str; 3] = ["i", "j", "k"];

/// The slice axis: the one along which the labels lie on clearly fewer slices than along the others.
pub fn choose_axis(labels: &[u16], dims: [usize; 3], choice: AxisChoice) -> Result<usize> {
    axis_from_counts(labelled_slice_counts(labels, dims), dims, choice)
}

/// [`choose_axis`] from the labelled slice counts along each axis.
pub(crate) fn axis_from_counts(counts: [usize; 3], dims: [usize; 3], choice: AxisChoice) -> Result<usize> {
    let describe =
        || format!("labels lie on {} slices along i, {} along j, {} along k", counts[0], counts[1], counts[2]);
    let mut order = [0usize, 1, 2];
    order.sort_by_key(|&a| (counts[a], a));
    match choice {
        AxisChoice::Fixed(a) if a > 2 => Err(DspnetError::InvalidArgument(format!("slice axis {a} is not 0, 1 or 2"))),
        AxisChoice::Fixed(a) => {
            let best = order[0];
            // The user named an axis, but the painting says otherwise: a labelled sagittal slice spans
            // many axial slices, which would silently turn into many support slices.
            if best != a && counts[a] > 3 && counts[a] >= 2 * counts[best] {
                return Err(DspnetError::InvalidArgument(format!(
                    "the labels do not look painted on {} slices ({}); were they painted along {}?",
                    AXIS_NAMES[a],
                    describe(),
                    AXIS_NAMES[best]
                )));
            }
            Ok(a)
        }
        AxisChoice::Auto => {
            let (a, b) = (order[0], order[1]);
            if 2 * counts[a] <= counts[b] && counts[a] < dims[a].max(2) {
                Ok(a)
            } else {
                Err(DspnetError::InvalidArgument(format!(
                    "cannot tell the slice axis: {}; choose it explicitly (--axis i|j|k on the command line, slice_axis in the C API)",
                    describe()
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_choice() {
        let dims = [20, 20, 10];
        let mut labels = vec![0u16; 4000];
        // A 6x5 blob on axial slice k = 4.
        for j in 5..10 {
            for i in 3..9 {
                labels[i + 20 * (j + 20 * 4)] = 1;
            }
        }
        assert_eq!(choose_axis(&labels, dims, AxisChoice::Auto).unwrap(), 2);
        assert_eq!(choose_axis(&labels, dims, AxisChoice::Fixed(2)).unwrap(), 2);
        let e = choose_axis(&labels, dims, AxisChoice::Fixed(0)).unwrap_err().to_string();
        assert!(e.contains("painted along k"), "{e}");
        // Add a sagittal painting (i = 15, many k): now ambiguous.
        for k in 0..10 {
            for j in 2..12 {
                labels[15 + 20 * (j + 20 * k)] = 1;
            }
        }
        let e = choose_axis(&labels, dims, AxisChoice::Auto).unwrap_err().to_string();
        assert!(e.contains("cannot tell the slice axis"), "{e}");
    }
}
