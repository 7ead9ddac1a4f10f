//! Retrieval metrics over Hamming rankings.
//!
//! Conventions (README "Evaluation conventions"):
//! - relevance: query and database item share at least one label;
//! - ranking: by (Hamming distance, database index), so results are deterministic;
//! - mAP: mean over queries of AP = (1/R) Σ_{r: item r relevant} P@r over the full ranking, R =
//!   relevant items in the database; queries with R = 0 are excluded from the mean and counted;
//! - mAP@k: AP@k = (1/R_k) Σ_{r ≤ k, relevant} P@r with R_k = relevant items in the top k (the
//!   DCMH-style `calc_map_k`); 0 when the top k holds none; same excluded queries as mAP;
//! - precision@N: mean over the same queries of (relevant in top N) / N;
//! - precision–recall by Hamming radius r = 0..bits: over items within distance ≤ r, precision
//!   averaged over queries that retrieve at least one item, recall over all counted queries.

use crate::codes::CodesRef;
use anyhow::{bail, Result};
use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default)]
pub struct EvalOptions {
    /// Also compute mAP@k.
    pub topk: Option<usize>,
    /// Points N of the precision@N curve (empty = none).
    pub precision_at: Vec<usize>,
    /// Compute the precision–recall curve by Hamming radius.
    pub pr_curve: bool,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct PrPoint {
    pub radius: usize,
    pub precision: f64,
    pub recall: f64,
}

/// Metrics of one retrieval direction.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DirectionMetrics {
    pub map: f64,
    #[serde(rename = "map@k", skip_serializing_if = "Option::is_none")]
    pub map_at_k: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k: Option<usize>,
    pub n_queries: usize,
    /// Queries with no relevant database item (left out of every mean).
    pub excluded_queries: usize,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub precision_at_n: Vec<(usize, f64)>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub pr_curve: Vec<PrPoint>,
}

/// Label rows packed into u64 bitsets, for the "share ≥ 1 label" test.
pub(crate) struct LabelSets {
    words: usize,
    data: Vec<u64>,
}

impl LabelSets {
    pub(crate) fn new(l: ArrayView2<u8>) -> Self {
        let words = l.ncols().div_ceil(64).max(1);
        let mut data = vec![0u64; l.nrows() * words];
        for (i, row) in l.outer_iter().enumerate() {
            for (c, &v) in row.iter().enumerate() {
                if v != 0 {
                    data[i * words + c / 64] |= 1 << (c % 64);
                }
            }
        }
        Self { words, data }
    }
    #[inline]
    pub(crate) fn row(&self, i: usize) -> &[u64] {
        &self.data[i * self.words..(i + 1) * self.words]
    }
    #[inline]
    pub(crate) fn shares(&self, i: usize, other: &LabelSets, j: usize) -> bool {
        self.row(i).iter().zip(other.row(j)).any(|(a, b)| a & b != 0)
    }
}

pub(crate) fn check_inputs(q: CodesRef, db: CodesRef, ql: ArrayView2<u8>, dl: ArrayView2<u8>) -> Result<()> {
    if q.bits != db.bits {
        bail!("query codes have {} bits but database codes have {}", q.bits, db.bits);
    }
    if ql.nrows() != q.n {
        bail!("{} query codes but {} query label rows", q.n, ql.nrows());
    }
    if dl.nrows() != db.n {
        bail!("{} database codes but {} database label rows", db.n, dl.nrows());
    }
    if ql.ncols() != dl.ncols() {
        bail!("query labels have {} classes, database labels {}", ql.ncols(), dl.ncols());
    }
    if db.n == 0 || q.n == 0 {
        bail!("evaluation needs at least one query and one database item");
    }
    Ok(())
}

/// Evaluates one direction: queries of one modality against a database of (usually) the other.
pub fn evaluate(q: CodesRef, db: CodesRef, ql: ArrayView2<u8>, dl: ArrayView2<u8>, opts: &EvalOptions) -> Result<DirectionMetrics> {
    check_inputs(q, db, ql, dl)?;
    if opts.topk == Some(0) {
        bail!("mAP@k needs k >= 1");
    }
    let qs = LabelSets::new(ql);
    let ds = LabelSets::new(dl);
    let bits = q.bits;
    let n = db.n;
    let mut sum_ap = 0.0;
    let mut sum_apk = 0.0;
    let mut excluded = 0;
    let mut pn_sum = vec![0.0; opts.precision_at.len()];
    let mut pr_prec = vec![0.0; bits + 1];
    let mut pr_prec_cnt = vec![0usize; bits + 1];
    let mut pr_rec = vec![0.0; bits + 1];
    let mut dist = vec![0u32; n];
    let mut order: Vec<u32> = Vec::with_capacity(n);
    for i in 0..q.n {
        crate::search::distances(q.row(i), db, &mut dist);
        // Stable counting sort by distance = order by (distance, index).
        let mut counts = vec![0usize; bits + 2];
        for &d in &dist {
            counts[d as usize + 1] += 1;
        }
        for b in 1..counts.len() {
            counts[b] += counts[b - 1];
        }
        let starts = counts.clone();
        order.clear();
        order.resize(n, 0);
        let mut next = counts;
        for (j, &d) in dist.iter().enumerate() {
            order[next[d as usize]] = j as u32;
            next[d as usize] += 1;
        }
        let total_rel = (0..n).filter(|&j| qs.shares(i, &ds, j)).count();
        if total_rel == 0 {
            excluded += 1;
            continue;
        }
        let mut hits = 0usize;
        let mut ap = 0.0;
        let mut apk = 0.0;
        let mut hits_k = 0usize;
        let mut pn_idx = 0;
        for (r, &j) in order.iter().enumerate() {
            if qs.shares(i, &ds, j as usize) {
                hits += 1;
                let p = hits as f64 / (r + 1) as f64;
                ap += p;
                if let Some(k) = opts.topk {
                    if r < k {
                        apk += p;
                        hits_k += 1;
                    }
                }
            }
            while pn_idx < opts.precision_at.len() && opts.precision_at[pn_idx] == r + 1 {
                pn_sum[pn_idx] += hits as f64 / (r + 1) as f64;
                pn_idx += 1;
            }
        }
        // precision@N beyond the database size: all n retrieved.
        while pn_idx < opts.precision_at.len() {
            pn_sum[pn_idx] += hits as f64 / opts.precision_at[pn_idx] as f64;
            pn_idx += 1;
        }
        sum_ap += ap / total_rel as f64;
        if hits_k > 0 {
            sum_apk += apk / hits_k as f64;
        }
        if opts.pr_curve {
            let mut rel_within = 0usize;
            for r in 0..=bits {
                let (s, e) = (starts[r], starts[r + 1]);
                rel_within += order[s..e].iter().filter(|&&j| qs.shares(i, &ds, j as usize)).count();
                let retrieved = e;
                if retrieved > 0 {
                    pr_prec[r] += rel_within as f64 / retrieved as f64;
                    pr_prec_cnt[r] += 1;
                }
                pr_rec[r] += rel_within as f64 / total_rel as f64;
            }
        }
    }
    let counted = q.n - excluded;
    let denom = counted.max(1) as f64;
    let pr_curve = if opts.pr_curve {
        (0..=bits)
            .map(|r| PrPoint {
                radius: r,
                precision: if pr_prec_cnt[r] > 0 { pr_prec[r] / pr_prec_cnt[r] as f64 } else { 0.0 },
                recall: pr_rec[r] / denom,
            })
            .collect()
    } else {
        vec![]
    };
    Ok(DirectionMetrics {
        map: sum_ap / denom,
        map_at_k: opts.topk.map(|_| sum_apk / denom),
        k: opts.topk,
        n_queries: q.n,
        excluded_queries: excluded,
        precision_at_n: opts.precision_at.iter().zip(&pn_sum).map(|(&n, &s)| (n, s / denom)).collect(),
        pr_curve,
    })
}

/// mAP over the full ranking (shorthand).
pub fn map(q: CodesRef, db: CodesRef, ql: ArrayView2<u8>, dl: ArrayView2<u8>) -> Result<f64> {
    Ok(evaluate(q, db, ql, dl, &EvalOptions::default())?.map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes::BinaryCodes;
    use ndarray::array;

    #[test]
    fn hand_worked_example() {
        // One query 0000; database distances 1, 0, 2, 1 -> ranking by (distance, index): 1, 0, 3, 2.
        let q = BinaryCodes::from_bits(array![[0u8, 0, 0, 0]].view()).unwrap();
        let db = BinaryCodes::from_bits(array![[1u8, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 1]].view()).unwrap();
        let ql = array![[1u8, 0]];
        // Relevant: items 0 and 2. Ranks: item1 (no), item0 (yes, P=1/2), item3 (no), item2 (yes, P=2/4).
        let dl = array![[1u8, 0], [0, 1], [1, 1], [0, 1]];
        let opts = EvalOptions { topk: Some(2), precision_at: vec![1, 2, 4], pr_curve: true };
        let m = evaluate(q.view(), db.view(), ql.view(), dl.view(), &opts).unwrap();
        assert!((m.map - (0.5 + 0.5) / 2.0).abs() < 1e-12);
        assert!((m.map_at_k.unwrap() - 0.5).abs() < 1e-12); // one hit in top 2, P=1/2
        assert_eq!(m.precision_at_n, vec![(1, 0.0), (2, 0.5), (4, 0.5)]);
        // radius 0: {1} -> P 0, R 0; radius 1: {1,0,3} -> P 1/3, R 1/2; radius 2: all -> P 1/2, R 1.
        assert_eq!(m.pr_curve[0], PrPoint { radius: 0, precision: 0.0, recall: 0.0 });
        assert!((m.pr_curve[1].precision - 1.0 / 3.0).abs() < 1e-12 && (m.pr_curve[1].recall - 0.5).abs() < 1e-12);
        assert!((m.pr_curve[2].precision - 0.5).abs() < 1e-12 && (m.pr_curve[2].recall - 1.0).abs() < 1e-12);
        // A query with no relevant item is excluded and counted.
        let q2 = BinaryCodes::from_bits(array![[0u8, 0, 0, 0], [1, 1, 1, 1]].view()).unwrap();
        let ql2 = array![[1u8, 0, 0], [0, 0, 1]];
        let dl2 = array![[1u8, 0, 0], [0, 1, 0], [1, 1, 0], [0, 1, 0]];
        let m2 = evaluate(q2.view(), db.view(), ql2.view(), dl2.view(), &EvalOptions::default()).unwrap();
        assert_eq!(m2.excluded_queries, 1);
        assert!((m2.map - 0.5).abs() < 1e-12);
    }
}
