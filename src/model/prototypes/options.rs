//! The head's hyper-parameters, under the official code's names (`max_num_sp`, `avg_sp_area`, ...), so
//! that a user who knows the official code (or its README's per-setting values) can set them as text:
//! `--head KEY=VALUE` on the command line, `dspnet eval --sweep KEY=V1,V2`, and the C ABI's fields.

use crate::error::{DspnetError, Result};

/// Head hyper-parameters. [`Default`] gives the official code defaults (docs/model.md, 'Head defaults').
#[derive(Debug, Clone, PartialEq)]
pub struct HeadOptions {
    /// BCMA α of the foreground-local path (`alpha`; the official `self.a`, code default 0.2; the README's
    /// per-setting α).
    pub alpha_fg: f32,
    /// BCMA α of the background path (`alpha_bg`; hard-coded 0.2 in the reference).
    pub alpha_bg: f32,
    /// (w1, w2, w3) of the tridiagonal `cal` matrix (`w1_w2_w3`, code default (0.3, 0.8, 0.3)).
    pub mixing_weights: [f32; 3],
    /// `fg_thresh` (FG_THRESH): fg-local prototypes need pooled fg > this; mode `gridconv+` needs a 4×4
    /// window ≥ it.
    pub fg_threshold: f32,
    /// `bg_thresh` (BG_THRESH): bg prototypes need pooled bg > this.
    pub bg_threshold: f32,
    /// `max_num_sp`: at most this many FSPA cluster seeds.
    pub max_seeds: usize,
    /// `avg_sp_area`: feature cells of support foreground per seed.
    pub area_per_seed: usize,
    /// Side of the local-prototype pooling window (`val_wsize`): 2 at inference (16×16 = 256 candidate
    /// local prototypes); training uses 4 (`proto_grid_size = 8`; docs/model.md, 'Training').
    pub local_pool: usize,
    /// SpCenterIter iterations (`n_iter`).
    pub cluster_iterations: usize,
    /// Optional C·C row-major `cal` override (a checkpoint's `cls_unit.cal`). `None` builds it from
    /// `mixing_weights`, which is what the official pipeline runs (it never reloads `cal`; docs/model.md, 'BCMA').
    pub calibration: Option<Vec<f32>>,
}

impl Default for HeadOptions {
    fn default() -> Self {
        HeadOptions {
            alpha_fg: 0.2,
            alpha_bg: 0.2,
            mixing_weights: [0.3, 0.8, 0.3],
            fg_threshold: 0.95,
            bg_threshold: 0.95,
            max_seeds: 5,
            area_per_seed: 100,
            local_pool: 2,
            cluster_iterations: 10,
            calibration: None,
        }
    }
}

/// Every settable head parameter: (official name, what it does). The order is the one of the docs.
pub const HEAD_KEYS: &[(&str, &str)] = &[
    ("max_num_sp", "at most this many FSPA cluster seeds (integer, 0-64; 0 or 1 = no clustering)"),
    ("avg_sp_area", "support foreground feature cells per seed (integer, 1-1024)"),
    ("fg_thresh", "pooled foreground above which a local fg prototype is kept; also the 4x4-window test for the local-prototype mode (0-1)"),
    ("bg_thresh", "pooled background above which a local bg prototype is kept (0-1)"),
    ("val_wsize", "side of the local-prototype pooling window in feature cells (1, 2, 4, 8, 16 or 32)"),
    ("alpha", "BCMA mixing strength of the fg-local prototypes (the official self.a; -10 to 10)"),
    ("alpha_bg", "BCMA mixing strength of the bg prototypes (hard-coded 0.2 in the official code; -10 to 10)"),
    ("w1_w2_w3", "BCMA channel-neighbour weights, three numbers separated by ':' or ',' (-10 to 10)"),
    ("n_iter", "SpCenterIter clustering iterations (integer, 0-1000)"),
];

/// Why [`HeadOptions::try_set`] refused a value.
#[derive(Debug)]
pub(crate) enum SetError {
    UnknownKey,
    /// The value's problem, e.g. "expected 0 to 1".
    Value(String),
}

/// Bounds of the numeric parameters: wide enough for any study, narrow enough that a typo cannot make a
/// run take hours (`n_iter`) or turn the scores into infinities (`alpha`, weights).
const MAX_SEEDS: usize = 64;
const MAX_AREA_PER_SEED: usize = 1024;
const MAX_ITERATIONS: usize = 1000;
const MAX_MIXING: f32 = 10.0;

impl HeadOptions {
    /// Set one parameter from text under its official name (see [`HEAD_KEYS`]); the value is checked
    /// against the parameter's range.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        self.try_set(key, value).map_err(|why| match why {
            SetError::UnknownKey => {
                let known: Vec<&str> = HEAD_KEYS.iter().map(|(k, _)| *k).collect();
                DspnetError::InvalidArgument(format!(
                    "unknown head option '{key}'; expected one of {}",
                    known.join(", ")
                ))
            }
            SetError::Value(why) => DspnetError::InvalidArgument(format!("head option {key}={value}: {why}")),
        })
    }

    /// [`set`](Self::set) with the reason alone, for callers that name the parameter their own way.
    pub(crate) fn try_set(&mut self, key: &str, value: &str) -> std::result::Result<(), SetError> {
        let bad = |why: String| SetError::Value(why);
        let int = |lo: usize, hi: usize| -> std::result::Result<usize, SetError> {
            let v: usize = value.trim().parse().map_err(|_| bad("expected a whole number".into()))?;
            if !(lo..=hi).contains(&v) {
                return Err(bad(format!("expected {lo} to {hi}")));
            }
            Ok(v)
        };
        let real = |text: &str, lo: f32, hi: f32| -> std::result::Result<f32, SetError> {
            let v: f32 = text.trim().parse().map_err(|_| bad("expected a number".into()))?;
            if !(v.is_finite() && (lo..=hi).contains(&v)) {
                return Err(bad(format!("expected {lo} to {hi}")));
            }
            Ok(v)
        };
        match key {
            "max_num_sp" => self.max_seeds = int(0, MAX_SEEDS)?,
            "avg_sp_area" => self.area_per_seed = int(1, MAX_AREA_PER_SEED)?,
            "fg_thresh" => self.fg_threshold = real(value, 0.0, 1.0)?,
            "bg_thresh" => self.bg_threshold = real(value, 0.0, 1.0)?,
            "val_wsize" => {
                let v = int(1, 32)?;
                if !v.is_power_of_two() {
                    return Err(bad("expected 1, 2, 4, 8, 16 or 32 (it must divide the 32x32 feature grid)".into()));
                }
                self.local_pool = v;
            }
            "alpha" => self.alpha_fg = real(value, -MAX_MIXING, MAX_MIXING)?,
            "alpha_bg" => self.alpha_bg = real(value, -MAX_MIXING, MAX_MIXING)?,
            "w1_w2_w3" => {
                let parts: Vec<&str> = value.split([':', ',']).collect();
                if parts.len() != 3 {
                    return Err(bad("expected three numbers, e.g. 0.3:0.8:0.3".into()));
                }
                let mut w = [0.0f32; 3];
                for (slot, part) in w.iter_mut().zip(&parts) {
                    *slot = real(part, -MAX_MIXING, MAX_MIXING)?;
                }
                self.mixing_weights = w;
            }
            "n_iter" => self.cluster_iterations = int(0, MAX_ITERATIONS)?,
            _ => return Err(SetError::UnknownKey),
        }
        Ok(())
    }

    /// Set parameters from `KEY=VALUE` items, in order.
    pub fn set_all<'a>(&mut self, items: impl IntoIterator<Item = &'a str>) -> Result<()> {
        for item in items {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| DspnetError::InvalidArgument(format!("head option '{item}': expected KEY=VALUE")))?;
            self.set(key.trim(), value)?;
        }
        Ok(())
    }

    /// The value of one parameter as text, in the form [`set`](Self::set) reads (None for an unknown key).
    pub fn get(&self, key: &str) -> Option<String> {
        Some(match key {
            "max_num_sp" => self.max_seeds.to_string(),
            "avg_sp_area" => self.area_per_seed.to_string(),
            "fg_thresh" => self.fg_threshold.to_string(),
            "bg_thresh" => self.bg_threshold.to_string(),
            "val_wsize" => self.local_pool.to_string(),
            "alpha" => self.alpha_fg.to_string(),
            "alpha_bg" => self.alpha_bg.to_string(),
            "w1_w2_w3" => self.mixing_weights.map(|w| w.to_string()).join(":"),
            "n_iter" => self.cluster_iterations.to_string(),
            _ => return None,
        })
    }

    /// The parameters that differ from the defaults, as `KEY=VALUE` (empty when none do).
    pub fn changed(&self) -> Vec<String> {
        let d = HeadOptions::default();
        HEAD_KEYS
            .iter()
            .filter_map(|(k, _)| {
                let v = self.get(k)?;
                (Some(&v) != d.get(k).as_ref()).then(|| format!("{k}={v}"))
            })
            .collect()
    }

    /// The checks a support episode makes before any work (options built in code skip [`set`](Self::set)).
    pub fn check(&self) -> Result<()> {
        let finite = [self.alpha_fg, self.alpha_bg, self.fg_threshold, self.bg_threshold]
            .iter()
            .chain(self.mixing_weights.iter())
            .all(|v| v.is_finite());
        if !finite {
            return Err(DspnetError::InvalidArgument("head options must be finite".into()));
        }
        if self.local_pool == 0 {
            return Err(DspnetError::InvalidArgument("local_pool (val_wsize) must be >= 1".into()));
        }
        if self.area_per_seed == 0 {
            return Err(DspnetError::InvalidArgument("area_per_seed (avg_sp_area) must be >= 1".into()));
        }
        if self.cluster_iterations > MAX_ITERATIONS {
            return Err(DspnetError::InvalidArgument(format!(
                "cluster_iterations (n_iter) must be at most {MAX_ITERATIONS}"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_round_trips_and_defaults_are_unchanged() {
        let d = HeadOptions::default();
        assert!(d.changed().is_empty());
        for (key, _) in HEAD_KEYS {
            let mut o = HeadOptions::default();
            let v = d.get(key).unwrap();
            o.set(key, &v).unwrap();
            assert_eq!(o, d, "{key}={v} must give back the default");
        }
        let mut o = HeadOptions::default();
        o.set_all([
            "max_num_sp=8",
            "avg_sp_area=25",
            "fg_thresh=0.8",
            "bg_thresh=0.9",
            "val_wsize=4",
            "alpha=0.3",
            "alpha_bg=0",
            "w1_w2_w3=0.2,0.8,0.2",
            "n_iter=3",
        ])
        .unwrap();
        assert_eq!(
            (
                o.max_seeds,
                o.area_per_seed,
                o.fg_threshold,
                o.bg_threshold,
                o.local_pool,
                o.alpha_fg,
                o.alpha_bg,
                o.mixing_weights,
                o.cluster_iterations
            ),
            (8, 25, 0.8, 0.9, 4, 0.3, 0.0, [0.2, 0.8, 0.2], 3)
        );
        assert_eq!(o.changed().len(), HEAD_KEYS.len());
        assert_eq!(o.get("w1_w2_w3").unwrap(), "0.2:0.8:0.2");
    }

    #[test]
    fn bad_values_are_refused_with_the_key_named() {
        for item in [
            "max_num_sp=65",
            "max_num_sp=-1",
            "avg_sp_area=0",
            "fg_thresh=1.5",
            "bg_thresh=NaN",
            "val_wsize=3",
            "val_wsize=0",
            "alpha=inf",
            "w1_w2_w3=0.3:0.8",
            "n_iter=5000",
            "n_iter=x",
        ] {
            let err = HeadOptions::default().set_all([item]).unwrap_err().to_string();
            let key = item.split('=').next().unwrap();
            assert!(err.contains(key), "{item}: {err}");
        }
        let err = HeadOptions::default().set_all(["max_seeds=3"]).unwrap_err().to_string();
        assert!(err.contains("unknown head option 'max_seeds'") && err.contains("max_num_sp"), "{err}");
        assert!(HeadOptions::default().set_all(["alpha"]).unwrap_err().to_string().contains("KEY=VALUE"));
        let o = HeadOptions { cluster_iterations: 100_000, ..Default::default() };
        assert!(o.check().is_err());
    }
}
