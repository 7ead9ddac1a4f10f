//! The health check every run makes of its codes: are the bits used, independent and spread over
//! the items, and do the codes retrieve better than random codes on the same split?
//!
//! Per code set (queries and database of each modality, and the learned training codes B when the
//! method learns them):
//! - `constant_bits`: the share of bits whose mean over the items, as ±1, has |mean| > 0.9 (a bit
//!   that is the same for 95 % of the items carries almost nothing);
//! - `mean_abs_correlation`: the mean |Pearson correlation| over pairs of bits that vary;
//! - `distinct_codes` / `items`: how many different codes there are.
//!
//! And per direction, the encoded-database mAP against the mAP of random codes on the same split
//! (`random_floor`). A run whose codes look degenerate gets a warning naming the cause:
//! more than half of the bits constant, fewer distinct codes than 5 % of the items and than the
//! classes among them (one code per class is a sound design, not a collapse), or an mAP
//! below 1.5× the random floor (when the floor is high, e.g. a zero-shot pool of two classes,
//! the margin is at most a tenth of the way from the floor to 1).

use crate::codes::BinaryCodes;
use crate::metrics::map;
use anyhow::Result;
use ndarray::{Array2, ArrayView2};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

/// More than this share of constant bits is degenerate.
pub const MAX_CONSTANT_SHARE: f64 = 0.5;
/// Fewer distinct codes than this share of the items is degenerate.
pub const MIN_DISTINCT_SHARE: f64 = 0.05;
/// An mAP below this multiple of the random floor is degenerate.
pub const MIN_FLOOR_RATIO: f64 = 1.5;

/// Statistics of one set of codes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CodeStats {
    pub items: usize,
    pub bits: usize,
    /// Share of bits whose mean (as ±1) over the items has |mean| > 0.9.
    pub constant_bits: f64,
    /// Mean |correlation| over pairs of bits that vary; `None` when fewer than two vary.
    pub mean_abs_correlation: Option<f64>,
    pub distinct_codes: usize,
}

impl CodeStats {
    pub fn distinct_share(&self) -> f64 {
        if self.items == 0 {
            0.0
        } else {
            self.distinct_codes as f64 / self.items as f64
        }
    }
}

/// Rows per block when accumulating bit statistics (bounds the memory to a block, not n × bits).
const BLOCK: usize = 4096;

/// The statistics of `codes`.
pub fn code_stats(codes: &BinaryCodes) -> CodeStats {
    let (n, b) = (codes.len(), codes.bits());
    // Sums of the ±1 values per bit and of their products per pair of bits, block by block.
    let mut sum = vec![0.0f64; b];
    let mut gram = Array2::<f64>::zeros((b, b));
    let mut start = 0;
    while start < n {
        let end = (start + BLOCK).min(n);
        let x = Array2::from_shape_fn((end - start, b), |(i, j)| if codes.bit(start + i, j) { 1.0 } else { -1.0 });
        for (j, s) in sum.iter_mut().enumerate() {
            *s += x.column(j).sum();
        }
        gram += &x.t().dot(&x);
        start = end;
    }
    let nf = n.max(1) as f64;
    let mean: Vec<f64> = sum.iter().map(|s| s / nf).collect();
    let constant = mean.iter().filter(|m| m.abs() > 0.9).count();
    // cov_ij = E[x_i x_j] − m_i m_j; for ±1 bits var_i = 1 − m_i².
    let var: Vec<f64> = mean.iter().map(|m| 1.0 - m * m).collect();
    let varying: Vec<usize> = (0..b).filter(|&j| var[j] > 1e-12).collect();
    let mut total = 0.0;
    let mut pairs = 0usize;
    for (a, &i) in varying.iter().enumerate() {
        for &j in &varying[a + 1..] {
            let cov = gram[[i, j]] / nf - mean[i] * mean[j];
            total += (cov / (var[i] * var[j]).sqrt()).abs().min(1.0);
            pairs += 1;
        }
    }
    let distinct: HashSet<&[u8]> = (0..n).map(|i| codes.row(i)).collect();
    CodeStats {
        items: n,
        bits: b,
        constant_bits: if b == 0 { 0.0 } else { constant as f64 / b as f64 },
        mean_abs_correlation: (pairs > 0).then(|| total / pairs as f64),
        distinct_codes: distinct.len(),
    }
}

/// Random codes (fair coins), seeded.
pub fn random_codes(n: usize, bits: usize, seed: u64) -> BinaryCodes {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let x = Array2::from_shape_fn((n, bits), |_| if rng.gen::<bool>() { 1i8 } else { -1 });
    BinaryCodes::from_signs(x.view())
}

/// mAP of random codes for these query and database labels (the floor a method must clear).
pub fn random_floor(ql: ArrayView2<u8>, dl: ArrayView2<u8>, bits: usize, seed: u64) -> Result<f64> {
    let q = random_codes(ql.nrows(), bits, seed ^ 0x5eed_0001);
    let db = random_codes(dl.nrows(), bits, seed ^ 0x5eed_0002);
    map(q.view(), db.view(), ql, dl)
}

/// The mAP below which a direction counts as degenerate, given the random floor.
pub fn floor_threshold(floor: f64) -> f64 {
    floor + ((MIN_FLOOR_RATIO - 1.0) * floor).min(0.1 * (1.0 - floor))
}

/// One direction's mAP against the floor.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FloorComparison {
    /// Encoded-database mAP.
    pub map: f64,
    /// mAP of random codes on the same split.
    pub random_floor: f64,
    /// map / random_floor.
    pub ratio: f64,
}

/// The health section of a run's report.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Health {
    /// Per code set: `query_image`, `query_text`, `db_image`, `db_text`, and `learned_b`.
    pub codes: BTreeMap<String, CodeStats>,
    pub i2t: FloorComparison,
    pub t2i: FloorComparison,
    /// Degenerate codes, each naming the cause; empty when the codes look healthy.
    pub warnings: Vec<String>,
}

/// What a run hands the check.
pub struct HealthInput<'a> {
    pub method: &'a str,
    pub data: &'a std::path::Path,
    pub bits: usize,
    pub seed: u64,
    /// Named code sets (see [`Health::codes`]).
    pub sets: Vec<(&'static str, &'a BinaryCodes)>,
    pub query_labels: ArrayView2<'a, u8>,
    pub db_labels: ArrayView2<'a, u8>,
    /// Classes held by at least one database item.
    pub classes: usize,
    /// Encoded-database mAP, image→text and text→image.
    pub i2t: f64,
    pub t2i: f64,
}

/// Checks a run's codes.
pub fn check(h: &HealthInput) -> Result<Health> {
    let codes: BTreeMap<String, CodeStats> = h.sets.iter().map(|(name, c)| (name.to_string(), code_stats(c))).collect();
    let compare = |m: f64, salt: u64| -> Result<FloorComparison> {
        let f = random_floor(h.query_labels, h.db_labels, h.bits, h.seed.wrapping_mul(31).wrapping_add(salt))?;
        Ok(FloorComparison { map: m, random_floor: f, ratio: if f > 0.0 { m / f } else { f64::NAN } })
    };
    let (i2t, t2i) = (compare(h.i2t, 1)?, compare(h.t2i, 2)?);
    let tune = format!("`cmh tune --method {} --data {}` fits the settings to this data", h.method, h.data.display());
    let mut warnings = Vec::new();
    for (name, s) in &codes {
        if s.constant_bits > MAX_CONSTANT_SHARE {
            warnings.push(format!(
                "{} {} bits: {:.0}% of the bits of the {name} codes are (nearly) constant (|mean| > 0.9 over {} items), so they cannot \
                 tell items apart; training collapsed them (a learning rate or loss weight that does not suit this data, or too few \
                 epochs); {tune}",
                h.method,
                h.bits,
                100.0 * s.constant_bits,
                s.items
            ));
        }
        if s.items > 0 && s.distinct_share() < MIN_DISTINCT_SHARE && s.distinct_codes < h.classes {
            warnings.push(format!(
                "{} {} bits: only {} distinct codes among {} {name} items ({:.1}%), fewer than the {} classes, so most items share a \
                 code and tie in every ranking; the codes collapsed onto a few values; {tune}",
                h.method,
                h.bits,
                s.distinct_codes,
                s.items,
                100.0 * s.distinct_share(),
                h.classes
            ));
        }
    }
    if h.method != "random" {
        for (dir, c) in [("image→text", &i2t), ("text→image", &t2i)] {
            if c.map < floor_threshold(c.random_floor) {
                warnings.push(format!(
                    "{} {} bits: {dir} mAP {:.4} is {:.2}× the random-code floor {:.4} on this split (healthy: ≥ {:.4}), so the codes \
                     carry little of what makes items relevant; {tune}",
                    h.method,
                    h.bits,
                    c.map,
                    c.ratio,
                    c.random_floor,
                    floor_threshold(c.random_floor)
                ));
            }
        }
    }
    Ok(Health { codes, i2t, t2i, warnings })
}

/// A table of the health of several runs (database codes, encoded-database mAP over the floor).
pub fn format_health(rows: &[(&str, usize, u64, &Health)]) -> String {
    let mut s = format!(
        "{:<10} {:>5} {:>5}  {:>15}  {:>15}  {:>15}  {:>13}\n",
        "health", "bits", "seed", "constant img/txt", "mean|corr| i/t", "distinct/items", "mAP/floor I→T"
    );
    s = s.trim_end().to_string() + " / T→I\n";
    for (method, bits, seed, h) in rows {
        let get = |k: &str| h.codes.get(k);
        let pct = |k: &str| get(k).map_or("-".to_string(), |c| format!("{:.0}%", 100.0 * c.constant_bits));
        let corr = |k: &str| get(k).and_then(|c| c.mean_abs_correlation).map_or("-".to_string(), |v| format!("{v:.3}"));
        let dist = |k: &str| get(k).map_or("-".to_string(), |c| format!("{:.0}%", 100.0 * c.distinct_share()));
        s += &format!(
            "{:<10} {:>5} {:>5}  {:>15}  {:>15}  {:>15}  {:>8.2}× / {:.2}×\n",
            method,
            bits,
            seed,
            format!("{} / {}", pct("db_image"), pct("db_text")),
            format!("{} / {}", corr("db_image"), corr("db_text")),
            format!("{} / {}", dist("db_image"), dist("db_text")),
            h.i2t.ratio,
            h.t2i.ratio
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn codes(x: Array2<i8>) -> BinaryCodes {
        BinaryCodes::from_pm1(x.view()).unwrap()
    }

    /// Hand-worked: 4 items, 3 bits. Bit 0 = (+,+,+,+) constant; bit 1 = (+,−,+,−), bit 2 =
    /// (+,−,−,+): means 0, uncorrelated (E[x1 x2] = (1+1−1−1)/4 = 0). Distinct rows: (+,+,+),
    /// (+,−,−), (+,+,−), (+,−,+) = 4.
    #[test]
    fn code_stats_by_hand() {
        let s = code_stats(&codes(array![[1, 1, 1], [1, -1, -1], [1, 1, -1], [1, -1, 1]]));
        assert_eq!((s.items, s.bits, s.distinct_codes), (4, 3, 4));
        assert!((s.constant_bits - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.mean_abs_correlation, Some(0.0));
        // Bit 2 = bit 1: correlation 1; two distinct codes of four items.
        let s = code_stats(&codes(array![[1, 1, 1], [1, -1, -1], [1, 1, 1], [1, -1, -1]]));
        assert_eq!(s.mean_abs_correlation, Some(1.0));
        assert_eq!(s.distinct_codes, 2);
        // Bit 0 = (+,−,+,−): mean 0, var 1; bit 1 = (+,+,+,−): mean 0.5, var 0.75; bit 2 = −bit 1.
        // cov(0, 1) = E[x0 x1] − 0 = (1 − 1 + 1 + 1)/4 = 0.5 → |corr| 0.5/√0.75 = 1/√3, the same for
        // (0, 2); |corr(1, 2)| = 1. Mean over the 3 pairs: (2/√3 + 1)/3.
        let s = code_stats(&codes(array![[1, 1, -1], [-1, 1, -1], [1, 1, -1], [-1, -1, 1]]));
        assert!((s.mean_abs_correlation.unwrap() - (2.0 / 3f64.sqrt() + 1.0) / 3.0).abs() < 1e-12, "{s:?}");
        assert_eq!(s.constant_bits, 0.0);
    }

    /// Blocks give the same statistics as one pass (more rows than a block).
    #[test]
    fn code_stats_over_blocks_match_a_direct_computation() {
        let n = BLOCK + 123;
        let c = random_codes(n, 16, 3);
        let s = code_stats(&c);
        let x = c.to_pm1_f64();
        let m = x.mean_axis(ndarray::Axis(0)).unwrap();
        let mut tot = 0.0;
        for i in 0..16 {
            for j in i + 1..16 {
                let cov = (&x.column(i) * &x.column(j)).mean().unwrap() - m[i] * m[j];
                tot += (cov / ((1.0 - m[i] * m[i]) * (1.0 - m[j] * m[j])).sqrt()).abs();
            }
        }
        assert!((s.mean_abs_correlation.unwrap() - tot / 120.0).abs() < 1e-9);
        assert!(s.mean_abs_correlation.unwrap() < 0.05, "fair coins are nearly uncorrelated");
        assert_eq!(s.constant_bits, 0.0);
    }

    fn labels(n: usize, classes: usize) -> Array2<u8> {
        Array2::from_shape_fn((n, classes), |(i, c)| (i % classes == c) as u8)
    }

    /// Collapsed codes raise the constant-bit, distinct-code and floor warnings, each naming its
    /// cause and `cmh tune`; codes equal to the labels' class code raise none.
    #[test]
    fn degenerate_codes_are_named_and_good_codes_pass() {
        let (ql, dl) = (labels(40, 4), labels(200, 4));
        // One bit that varies, unrelated to the classes (i % 4): two codes, mAP at the floor.
        let collapse =
            |n: usize| BinaryCodes::from_signs(Array2::from_shape_fn((n, 16), |(i, j)| if j == 0 && i % 3 == 0 { 1i8 } else { -1 }).view());
        let (collapsed, q) = (collapse(200), collapse(40));
        let m = map(q.view(), collapsed.view(), ql.view(), dl.view()).unwrap();
        let input = HealthInput {
            method: "sdch",
            data: std::path::Path::new("B"),
            bits: 16,
            seed: 0,
            sets: vec![("db_image", &collapsed)],
            query_labels: ql.view(),
            db_labels: dl.view(),
            classes: 4,
            i2t: m,
            t2i: m,
        };
        let h = check(&input).unwrap();
        let w = h.warnings.join("\n");
        assert!(w.contains("94% of the bits of the db_image codes are (nearly) constant"), "{w}");
        assert!(w.contains("only 2 distinct codes among 200 db_image items (1.0%), fewer than the 4 classes"), "{w}");
        assert!(w.contains("image→text mAP") && w.contains("random-code floor"), "{w}");
        assert!(h.warnings.iter().all(|w| w.contains("cmh tune --method sdch --data B")), "{w}");
        assert!((h.i2t.random_floor - 0.25).abs() < 0.1, "{}", h.i2t.random_floor);
        // Class codes: every bit used, items of a class share a code (4 codes, 2% of the items, as
        // many as the classes: no warning), mAP 1.
        let class_code = |n: usize| {
            BinaryCodes::from_signs(Array2::from_shape_fn((n, 2), |(i, j)| if (((i % 4) >> j) & 1) == 1 { 1i8 } else { -1 }).view())
        };
        let (qc, dc) = (class_code(40), class_code(200));
        let m = map(qc.view(), dc.view(), ql.view(), dl.view()).unwrap();
        assert_eq!(m, 1.0);
        let good = HealthInput { bits: 2, sets: vec![("db_image", &dc), ("query_image", &qc)], i2t: m, t2i: m, ..input };
        let h = check(&good).unwrap();
        assert!(h.warnings.is_empty(), "{:?}", h.warnings);
        assert!(h.i2t.ratio > 3.0);
        let table = format_health(&[("sdch", 2, 0, &h)]);
        assert!(table.contains("0% / -") && table.contains("2%"), "{table}");
    }

    #[test]
    fn floor_threshold_is_one_and_a_half_floors_until_the_floor_is_high() {
        assert!((floor_threshold(0.1) - 0.15).abs() < 1e-12);
        assert!((floor_threshold(0.5) - 0.55).abs() < 1e-12);
    }
}
