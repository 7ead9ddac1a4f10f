//! RBF anchor features (the kernel features of SePH, SCRATCH, SCH, SeGH …):
//! φ(x) = [exp(−‖x − aⱼ‖² / (2σ²))]ⱼ₌₁..c with c anchors aⱼ drawn without replacement from the
//! training rows (seeded), and the bandwidth σ = mean Euclidean distance between the training rows
//! and the anchors (the heuristic of the SePH / SCRATCH reference code), optionally multiplied by a
//! `sigma_scale` chosen on validation data. The features are then
//! centred with their training mean (φ − φ̄): centring raw features would not change any RBF
//! distance, centring φ removes the large common offset that a linear hash function would
//! otherwise have to absorb.

use super::blocked::{det_sum, fold_parts, par_t_dot, parts, sum_in_order, task_rows, BLOCK_ROWS, PAR_MIN_WORK};
use super::files::{load_matrix, load_vector};
use super::random::ShallowRng;
use crate::npy::write_npy;
use anyhow::{bail, Result};
use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array1, Array2, ArrayView2, Axis};
use rayon::prelude::*;
use std::path::Path;

/// Squared Euclidean distances between the rows of x (n × d, f32) and the anchors (c × d),
/// ‖x‖² + ‖a‖² − 2x·aᵀ by row blocks (clamped at 0 against rounding).
pub fn sq_distances(x: ArrayView2<f32>, anchors: ArrayView2<f64>) -> Array2<f64> {
    let (n, d) = x.dim();
    assert_eq!(d, anchors.ncols(), "sq_distances: dimensions differ");
    let c = anchors.nrows();
    let a_sq: Array1<f64> = anchors.rows().into_iter().map(|r| r.dot(&r)).collect();
    let mut out = Array2::<f64>::zeros((n, c));
    let rows = if n * c * d < PAR_MIN_WORK { n.max(1) } else { task_rows(n) };
    let outs: Vec<_> = out.axis_chunks_iter_mut(Axis(0), rows).collect();
    let ins: Vec<_> = x.axis_chunks_iter(Axis(0), rows).collect();
    outs.into_par_iter().zip(ins).for_each(|(mut o, xb)| {
        let xb = xb.mapv(|v| v as f64);
        general_mat_mul(-2.0, &xb, &anchors.t(), 0.0, &mut o);
        for (mut orow, xr) in o.outer_iter_mut().zip(xb.outer_iter()) {
            let x_sq = xr.dot(&xr);
            orow.iter_mut().zip(a_sq.iter()).for_each(|(v, &a2)| *v = (*v + x_sq + a2).max(0.0));
        }
    });
    out
}

/// The RBF anchor map of one modality, fitted on training rows.
#[derive(Clone, Debug, PartialEq)]
pub struct RbfMap {
    /// c × d anchors (training rows).
    pub anchors: Array2<f64>,
    /// Kernel bandwidth σ (mean training-row-to-anchor distance).
    pub sigma: f64,
    /// Training mean of φ (length c), subtracted from every φ(x).
    pub mean: Array1<f64>,
}

impl RbfMap {
    /// Draws `n_anchors` anchors from the rows of x, sets σ = `sigma_scale` × (mean row-to-anchor
    /// distance) and the centring mean, and returns the map with the centred features of the
    /// training rows (n × c).
    pub fn fit(x: ArrayView2<f32>, n_anchors: usize, sigma_scale: f64, rng: &mut ShallowRng) -> Result<(Self, Array2<f64>)> {
        if !(sigma_scale.is_finite() && sigma_scale > 0.0) {
            bail!("the RBF bandwidth scale must be a finite number > 0, found {sigma_scale}");
        }
        let n = x.nrows();
        if n_anchors == 0 {
            bail!("RBF features need at least one anchor");
        }
        if n_anchors > n {
            bail!("{n_anchors} anchors requested but only {n} training rows to draw them from; use at most {n}");
        }
        check_finite(x)?;
        let mut idx = rand::seq::index::sample(rng, n, n_anchors).into_vec();
        idx.sort_unstable();
        let anchors = x.select(Axis(0), &idx).mapv(|v| v as f64);
        let mut phi = sq_distances(x, anchors.view());
        let mean_dist = det_sum(phi.view(), f64::sqrt) / (phi.len() as f64);
        if !(mean_dist.is_finite() && mean_dist > 0.0) {
            bail!("RBF bandwidth: every training row equals every anchor (mean distance {mean_dist}); the features are constant");
        }
        let sigma = sigma_scale * mean_dist;
        kernel_inplace(&mut phi, sigma);
        let ones = Array2::<f64>::ones((n, 1));
        let mean = par_t_dot(phi.view(), ones.view()).index_axis_move(Axis(1), 0) / n as f64;
        phi.axis_chunks_iter_mut(Axis(0), task_rows(n)).into_par_iter().for_each(|mut b| b -= &mean);
        Ok((Self { anchors, sigma, mean }, phi))
    }

    /// [`RbfMap::fit`] without ever holding the n × c features: the same anchors (same random
    /// draws), σ and centring mean, computed over the row blocks of `fold_parts` in two passes
    /// that recompute one block's distances at a time (the result equals `fit`'s up to the order
    /// of floating-point sums). `rows` selects the training rows of `x` (all rows when `None`).
    pub fn fit_streamed(
        x: ArrayView2<f32>,
        rows: Option<&[usize]>,
        n_anchors: usize,
        sigma_scale: f64,
        rng: &mut ShallowRng,
    ) -> Result<Self> {
        if !(sigma_scale.is_finite() && sigma_scale > 0.0) {
            bail!("the RBF bandwidth scale must be a finite number > 0, found {sigma_scale}");
        }
        let n = rows.map_or(x.nrows(), |r| r.len());
        if n_anchors == 0 {
            bail!("RBF features need at least one anchor");
        }
        if n_anchors > n {
            bail!("{n_anchors} anchors requested but only {n} training rows to draw them from; use at most {n}");
        }
        let mut idx = rand::seq::index::sample(rng, n, n_anchors).into_vec();
        idx.sort_unstable();
        let anchors = row_block(x, rows, 0, n).select(Axis(0), &idx).mapv(|v| v as f64);
        let c = anchors.nrows();
        // Pass 1: finiteness and Σ ‖x − a‖ (σ), summed as `fit` sums it (per part, row-major).
        let sums = fold_parts(
            n,
            || Ok(0.0f64),
            |s, e, acc: &mut Result<f64>| {
                let Ok(sum) = acc else { return };
                let xb = row_block(x, rows, s, e);
                if let Some(((i, j), v)) = xb.indexed_iter().find(|(_, v)| !v.is_finite()) {
                    *acc = Err(anyhow::anyhow!("feature value {v} at row {}, column {j} is not finite", rows.map_or(s + i, |r| r[s + i])));
                    return;
                }
                *sum = sq_distances(xb.view(), anchors.view()).iter().fold(*sum, |a, &v| a + v.sqrt());
            },
        );
        let mut total = 0.0;
        for part in sums {
            total += part?;
        }
        let mean_dist = total / ((n * c) as f64);
        if !(mean_dist.is_finite() && mean_dist > 0.0) {
            bail!("RBF bandwidth: every training row equals every anchor (mean distance {mean_dist}); the features are constant");
        }
        let mut map = Self { anchors, sigma: sigma_scale * mean_dist, mean: Array1::zeros(c) };
        // Pass 2: the mean of the uncentred features.
        let ones = Array2::<f64>::ones((BLOCK_ROWS, 1));
        let partials = fold_parts(
            n,
            || Array2::<f64>::zeros((c, 1)),
            |s, e, acc| {
                let mut phi = sq_distances(row_block(x, rows, s, e).view(), map.anchors.view());
                kernel_inplace(&mut phi, map.sigma);
                general_mat_mul(1.0, &phi.t(), &ones.slice(s![..e - s, ..]), 1.0, acc);
            },
        );
        map.mean = sum_in_order(partials, (c, 1)).index_axis_move(Axis(1), 0) / n as f64;
        Ok(map)
    }

    /// Centred features of rows already known to be finite (the streamed fits' blocks).
    pub(crate) fn features_of(&self, x: ArrayView2<f32>) -> Array2<f64> {
        let mut phi = sq_distances(x, self.anchors.view());
        kernel_inplace(&mut phi, self.sigma);
        phi -= &self.mean;
        phi
    }

    pub fn n_anchors(&self) -> usize {
        self.anchors.nrows()
    }
    pub fn dim(&self) -> usize {
        self.anchors.ncols()
    }

    /// Centred features φ(x) − φ̄ of new rows.
    pub fn transform(&self, x: ArrayView2<f32>) -> Result<Array2<f64>> {
        if x.ncols() != self.dim() {
            bail!("features have {} columns but the model was trained on {}", x.ncols(), self.dim());
        }
        check_finite(x)?;
        let mut phi = sq_distances(x, self.anchors.view());
        kernel_inplace(&mut phi, self.sigma);
        let n = phi.nrows();
        phi.axis_chunks_iter_mut(Axis(0), task_rows(n).max(1)).into_par_iter().for_each(|mut b| b -= &self.mean);
        Ok(phi)
    }

    /// Writes `<stem>_anchors.npy` (c × d) and `<stem>_phi_mean.npy` (c); σ goes into model.json.
    pub fn save(&self, dir: &Path, stem: &str) -> Result<()> {
        write_npy(&dir.join(format!("{stem}_anchors.npy")), &self.anchors)?;
        write_npy(&dir.join(format!("{stem}_phi_mean.npy")), &self.mean)?;
        Ok(())
    }

    /// Reads what [`RbfMap::save`] wrote.
    pub fn load(dir: &Path, stem: &str, sigma: f64) -> Result<Self> {
        let anchors = load_matrix(&dir.join(format!("{stem}_anchors.npy")))?;
        let mean = load_vector(&dir.join(format!("{stem}_phi_mean.npy")))?;
        if mean.len() != anchors.nrows() {
            bail!(
                "{}: {} entries, but {stem}_anchors.npy has {} anchors",
                dir.join(format!("{stem}_phi_mean.npy")).display(),
                mean.len(),
                anchors.nrows()
            );
        }
        if !(sigma.is_finite() && sigma > 0.0) {
            bail!("{}: sigma of {stem} must be a finite number > 0, found {sigma}", dir.join("model.json").display());
        }
        Ok(Self { anchors, sigma, mean })
    }
}

/// Rows s..e of x, or of x's rows `rows[s..e]` (copied) when a row selection is given.
pub(crate) fn row_block<'a>(
    x: ArrayView2<'a, f32>,
    rows: Option<&[usize]>,
    s: usize,
    e: usize,
) -> ndarray::CowArray<'a, f32, ndarray::Ix2> {
    match rows {
        None => x.slice_move(s![s..e, ..]).into(),
        Some(r) => x.select(Axis(0), &r[s..e]).into(),
    }
}

/// Refuses NaN / infinite features, naming the first position.
fn check_finite(x: ArrayView2<f32>) -> Result<()> {
    let bad = parts(x.nrows()).into_par_iter().any(|(s0, e)| x.slice(s![s0..e, ..]).iter().any(|v| !v.is_finite()));
    if bad {
        if let Some(((i, j), v)) = x.indexed_iter().find(|(_, v)| !v.is_finite()) {
            bail!("feature value {v} at row {i}, column {j} is not finite");
        }
    }
    Ok(())
}

/// d² → exp(−d² / (2σ²)) in place.
fn kernel_inplace(d2: &mut Array2<f64>, sigma: f64) {
    let g = 1.0 / (2.0 * sigma * sigma);
    d2.par_mapv_inplace(|v| (-v * g).exp());
}

/// The anchor count a fit can use: `requested`, capped at the `rows` training rows the anchors are
/// drawn from (with a note on stderr), so that a default suited to large training sets still fits
/// a small one.
pub fn capped_anchors(param: &str, requested: usize, rows: usize) -> usize {
    if requested > rows {
        log::info!("note: {param} = {requested} capped at the {rows} training rows");
        rows
    } else {
        requested
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::numerics::random::seeded_rng;
    use ndarray::array;

    fn max_abs(a: &Array2<f64>) -> f64 {
        a.iter().fold(0.0f64, |m, &v| m.max(v.abs()))
    }

    #[test]
    fn squared_distances_match_definition() {
        let x = array![[0.0f32, 0.0], [1.0, 2.0], [3.0, -1.0]];
        let a = array![[1.0, 1.0], [0.0, 0.0]];
        let d = sq_distances(x.view(), a.view());
        assert_eq!(d, array![[2.0, 0.0], [1.0, 5.0], [8.0, 10.0]]);
    }

    #[test]
    fn rbf_map_hand_example_and_transform_consistency() {
        // Two rows, both anchors: distances [[0, √2], [√2, 0]] → σ = mean = √2/2.
        let x = array![[0.0f32, 0.0], [1.0, 1.0]];
        let mut rng = seeded_rng(0, 0);
        let (map, phi) = RbfMap::fit(x.view(), 2, 1.0, &mut rng).unwrap();
        let sigma = 2f64.sqrt() / 2.0;
        assert!((map.sigma - sigma).abs() < 1e-12);
        // φ = [[1, e^{-2/(2·0.5)}], [e^{-1}... ]]: off-diagonal exp(−2 / (2σ²)) = exp(−2).
        let off = (-2.0f64).exp();
        let mean = (1.0 + off) / 2.0;
        assert!((map.mean[0] - mean).abs() < 1e-12 && (map.mean[1] - mean).abs() < 1e-12);
        // Rows are anchors in sorted index order [0, 1] → row 0 = [1 − mean, off − mean].
        assert!((phi[[0, 0]] - (1.0 - mean)).abs() < 1e-12);
        assert!((phi[[0, 1]] - (off - mean)).abs() < 1e-12);
        // transform on the training rows reproduces the training features.
        let again = map.transform(x.view()).unwrap();
        assert!(max_abs(&(&again - &phi)) < 1e-12);
        // Column means of the training features are zero (centring).
        assert!(phi.mean_axis(Axis(0)).unwrap().iter().all(|v| v.abs() < 1e-12));
        assert!(map.transform(array![[1.0f32, 2.0, 3.0]].view()).is_err());
    }

    #[test]
    fn rbf_refuses_bad_input() {
        let mut rng = seeded_rng(0, 0);
        let x = array![[0.0f32, 1.0], [1.0, 0.0]];
        assert!(RbfMap::fit(x.view(), 3, 1.0, &mut rng).unwrap_err().to_string().contains("3 anchors"));
        assert!(RbfMap::fit(x.view(), 0, 1.0, &mut rng).is_err());
        assert!(RbfMap::fit(x.view(), 1, 0.0, &mut rng).is_err());
        // The scale multiplies the heuristic σ.
        let (m1, _) = RbfMap::fit(x.view(), 2, 1.0, &mut seeded_rng(0, 0)).unwrap();
        let (m2, _) = RbfMap::fit(x.view(), 2, 0.5, &mut seeded_rng(0, 0)).unwrap();
        assert!((m2.sigma - 0.5 * m1.sigma).abs() < 1e-15);
        let c = array![[1.0f32, 1.0], [1.0, 1.0]];
        assert!(RbfMap::fit(c.view(), 2, 1.0, &mut rng).unwrap_err().to_string().contains("constant"));
        let nan = array![[f32::NAN, 1.0], [1.0, 0.0]];
        assert!(RbfMap::fit(nan.view(), 1, 1.0, &mut rng).is_err());
    }
}
