//! Per-slice confidence and where the user should look next.
//!
//! A slice's confidence is its presence score (the mean foreground margin of its prediction as a fraction
//! of the painted slice's own margin, see [`propagate`](super::propagate)), clipped to [0, 1]: 1 where the
//! model is as sure of the new slice as of the painted one, 0 where it predicts nothing. With several
//! classes a slice gets the lowest of its classes' confidences. The suggested slices are the least
//! confident slices inside the predicted extent, kept apart from the painted slices and from each other
//! so that they point at different places.

use std::collections::BTreeMap;

/// At most this many slices are suggested.
pub const MAX_SUGGESTIONS: usize = 3;

/// Confidence of each slice along the axis (None: not scored, e.g. painted or outside the extent).
pub fn slice_confidence(slices: usize, presence: &BTreeMap<u16, Vec<(usize, f32)>>) -> Vec<Option<f32>> {
    let mut out: Vec<Option<f32>> = vec![None; slices];
    for scores in presence.values() {
        for &(z, p) in scores {
            // NaN (cannot happen from finite logits) counts as no confidence at all.
            let c = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
            if z < slices {
                out[z] = Some(out[z].map_or(c, |o: f32| o.min(c)));
            }
        }
    }
    out
}

/// Up to [`MAX_SUGGESTIONS`] slices to check or paint next, least confident first: scored slices between
/// the first and last slice that hold any output label (`labelled[z]`), at least `gap` slices from every
/// painted slice and from each other, where `gap` is a tenth of that extent (at least 2).
pub fn suggest_slices(confidence: &[Option<f32>], labelled: &[bool], painted: &[usize]) -> Vec<usize> {
    let (Some(first), Some(last)) = (labelled.iter().position(|&l| l), labelled.iter().rposition(|&l| l)) else {
        return Vec::new();
    };
    let gap = ((last - first + 1) / 10).max(2);
    let mut candidates: Vec<(f32, usize)> =
        (first..=last).filter_map(|z| confidence.get(z).copied().flatten().map(|c| (c, z))).collect();
    // Least confident first; ties: nearer the middle of the extent, then the lower slice.
    let mid = (first + last) / 2;
    candidates.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.abs_diff(mid).cmp(&b.1.abs_diff(mid))).then(a.1.cmp(&b.1)));
    let mut picked: Vec<usize> = Vec::new();
    for (_, z) in candidates {
        if picked.len() == MAX_SUGGESTIONS {
            break;
        }
        if painted.iter().chain(&picked).all(|&p| p.abs_diff(z) >= gap) {
            picked.push(z);
        }
    }
    picked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confidence_is_clipped_and_the_lowest_class_wins() {
        let mut presence = BTreeMap::new();
        presence.insert(1u16, vec![(1, 0.5), (2, 1.7), (3, f32::NEG_INFINITY)]);
        presence.insert(2u16, vec![(1, 0.3), (4, f32::NAN)]);
        let c = slice_confidence(6, &presence);
        assert_eq!(c, vec![None, Some(0.3), Some(1.0), Some(0.0), Some(0.0), None]);
    }

    #[test]
    fn suggestions_stay_inside_the_extent_and_apart() {
        // Extent 10..=39 (gap 3); painted 25.
        let mut labelled = vec![false; 50];
        labelled[10..40].iter_mut().for_each(|l| *l = true);
        let mut conf: Vec<Option<f32>> = (0..50).map(|z| if z == 25 { None } else { Some(0.9) }).collect();
        conf[5] = Some(0.0); // outside the extent
        conf[26] = Some(0.1); // too near the painted slice
        conf[33] = Some(0.2);
        conf[34] = Some(0.25); // too near 33
        conf[12] = Some(0.3);
        let s = suggest_slices(&conf, &labelled, &[25]);
        assert_eq!(&s[..2], &[33, 12]);
        assert_eq!(s.len(), 3);
        assert!(s[2].abs_diff(25) >= 3 && s[2].abs_diff(33) >= 3 && s[2].abs_diff(12) >= 3 && (10..40).contains(&s[2]));
        assert!(suggest_slices(&conf, &[false; 50], &[25]).is_empty());
    }
}
