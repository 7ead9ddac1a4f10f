//! Attribute-regression hashing (`attr-ridge`): the linear zero-shot baseline.
//!
//! Each modality v is mapped by ridge regression toward the class-attribute vector of its items'
//! labels, learned on the labelled training items (seen classes only under the zero-shot
//! protocols); the code is the ITQ-rotated principal subspace of those attribute-space
//! predictions. Items of a class never seen in training land near where the class embeddings put
//! them, and nearby predictions share bits, so the codes keep attribute-space neighbourhoods.
//!
//! 1. Inputs: features standardised per dimension on the training rows, zᵛ = (xᵛ − x̄ᵛ) / sᵛ
//!    (`Standardizer`).
//! 2. Targets: tᵢ = the mean of the L2-normalised class embeddings a_k over item i's labels in
//!    modality v's label space (the category vector CA of CZHash, the attribute target of AgNet).
//! 3. Ridge regression on the rows labelled in v: Wᵛ = argmin ‖ZW − T‖² + λ n ‖W‖²
//!    = (ZᵀZ + λnI)⁻¹ZᵀT, solved in the dual form Zᵀ(ZZᵀ + λnI)⁻¹T when n < d.
//! 4. PCA of the stacked predictions [Z¹W¹; Z²W²] of all training rows (mean μ): the top
//!    k = min(bits, rank) principal directions Pₖ.
//! 5. ITQ (Gong & Lazebnik, CVPR 2011) on V = (ZW − μ)Pₖ, one rotation R for both modalities
//!    (`itq`). When bits > k (the predictions span at most as many dimensions as there
//!    are seen classes), the remaining bits are signs of random Gaussian projections G of the same
//!    k-dimensional subspace (sign random projections).
//! 6. Codes: sgn((zᵛ Wᵛ − μ) Pₖ [R G]).
//!
//! Closed form: seconds on thousands of items. No unified training codes are learned (both
//! database conventions encode the database). Needs class embeddings (`cmh data embed-classes`).

use crate::codes::BinaryCodes;
use crate::deep::zs_common::l2_normalise_rows;
use crate::method::{ensure_pos, Fit, FitContext, HashModel, TrainSet, View};
use crate::npy::{write_npy, write_text_atomic};
use crate::numerics::blocked::{par_dot, par_gram};
use crate::numerics::files::{expect_shape, load_matrix, load_vector};
use crate::numerics::itq::itq;
use crate::numerics::linalg::SpdFactor;
use crate::numerics::random::{randn, seeded_rng, ShallowRng};
use crate::numerics::sign::sign_codes;
use crate::numerics::Standardizer;
use crate::params::{Dim, Range, SearchSpace};
use anyhow::{bail, Context, Result};
use ndarray::{concatenate, Array1, Array2, ArrayView2, Axis};
use ndarray_linalg::{Eigh, UPLO};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const METHOD: &str = "attr-ridge";

/// Attribute-regression hashing hyper-parameters.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AttrRidgeParams {
    /// λ: ridge of the regression, relative to the number of labelled rows n (λ n I is added to
    /// ZᵀZ of the standardised features).
    pub ridge: f64,
    /// ITQ iterations.
    pub itq_iter: usize,
}

impl Default for AttrRidgeParams {
    fn default() -> Self {
        // λ chosen on validation splits carved from the training classes (docs/methods.md).
        Self { ridge: 1.0, itq_iter: 50 }
    }
}

/// What `cmh tune` searches for attr-ridge.
pub const SEARCH_SPACE: SearchSpace =
    SearchSpace { dims: &[Dim { name: "ridge", range: Range::Float { lo: 1e-2, hi: 10.0, log: true } }], fidelity: None };

// No paper preset: the method is the linear reference, not a published hasher.
crate::params::impl_method_params!(AttrRidgeParams, SEARCH_SPACE, []);

/// Ridge regression W = argmin ‖ZW − T‖² + lam ‖W‖², in the primal or the dual form, whichever
/// system is smaller.
pub(crate) fn ridge_regression(z: ArrayView2<f64>, t: ArrayView2<f64>, lam: f64) -> Result<Array2<f64>> {
    let (n, d) = z.dim();
    if d <= n {
        let mut g = par_gram(z);
        for i in 0..d {
            g[[i, i]] += lam;
        }
        SpdFactor::new(g.view())?.solve(z.t().dot(&t).view())
    } else {
        let mut g = par_dot(z, z.t());
        for i in 0..n {
            g[[i, i]] += lam;
        }
        Ok(z.t().dot(&SpdFactor::new(g.view())?.solve(t)?))
    }
}

/// The attribute target of each row (mean of the L2-normalised embeddings of its labels among
/// `classes`); rows without such a label are zero.
fn attribute_targets(labels: ArrayView2<u8>, classes: &[usize], emb: &Array2<f64>) -> Array2<f64> {
    let mut t = Array2::<f64>::zeros((labels.nrows(), emb.ncols()));
    for (i, row) in labels.outer_iter().enumerate() {
        let on: Vec<usize> = classes.iter().copied().filter(|&c| row[c] != 0).collect();
        for &c in &on {
            t.row_mut(i).scaled_add(1.0 / on.len() as f64, &emb.row(c));
        }
    }
    t
}

/// Top principal directions of the rows of `x` around `mean`: (directions d × k, variances k),
/// k = min(max_k, rank), directions with variance ≤ 1e-10 × the largest dropped.
pub(crate) fn principal_directions(x: ArrayView2<f64>, mean: &Array1<f64>, max_k: usize) -> Result<(Array2<f64>, Array1<f64>)> {
    let xc = &x - mean;
    let cov = par_gram(xc.view()) / x.nrows().max(1) as f64;
    let (vals, vecs) = cov.eigh(UPLO::Lower).context("eigendecomposition of the covariance failed")?;
    let top = vals.iter().cloned().fold(0.0f64, f64::max);
    let order: Vec<usize> = (0..vals.len()).rev().filter(|&i| vals[i] > 1e-10 * top && top > 0.0).take(max_k).collect();
    if order.is_empty() {
        bail!("the predictions are constant: no principal direction");
    }
    Ok((vecs.select(Axis(1), &order), order.iter().map(|&i| vals[i]).collect()))
}

/// PCA + ITQ of the rows of `x`: their mean μ and a basis Pₖ [R G] (d × bits) such that
/// sgn((x − μ) Pₖ [R G]) are the codes of steps 4–5 of the module docs (the top k = min(bits,
/// rank) principal directions, their ITQ rotation R, random Gaussian directions G of the same
/// subspace for the bits beyond k); also the ITQ loss per iteration.
pub(crate) fn pca_itq_basis(
    x: ArrayView2<f64>,
    bits: usize,
    itq_iter: usize,
    rng: &mut ShallowRng,
) -> Result<(Array1<f64>, Array2<f64>, Vec<f64>)> {
    let mean = x.mean_axis(Axis(0)).ok_or_else(|| anyhow::anyhow!("PCA of an empty matrix"))?;
    let (dirs, _) = principal_directions(x, &mean, bits)?;
    let k = dirs.ncols();
    let v = par_dot((&x - &mean).view(), dirs.view());
    let (r, history) = itq(v.view(), itq_iter, rng).context("ITQ")?;
    let q = if bits > k { concatenate(Axis(1), &[r.view(), randn(k, bits - k, rng).view()])? } else { r };
    Ok((mean, dirs.dot(&q), history))
}

impl Fit for AttrRidgeParams {
    type Model = AttrRidgeModel;

    fn check(&self, data: &TrainSet, _bits: usize) -> Result<()> {
        ensure_pos("attr-ridge.ridge", self.ridge)?;
        if data.n_modalities() != 2 {
            bail!("attr-ridge needs exactly two modalities, the data has {}", data.n_modalities());
        }
        for (m, v) in data.views.iter().enumerate() {
            v.features(METHOD, m)?;
        }
        let emb = data.require_class_embeddings(METHOD)?;
        if emb.nrows() != data.n_classes() {
            bail!("attr-ridge: class embeddings have {} rows, but the data has {} classes", emb.nrows(), data.n_classes());
        }
        if emb.iter().any(|v| !v.is_finite()) {
            bail!("attr-ridge: class embeddings hold a non-finite value");
        }
        for m in 0..2 {
            if !data.labelled[m].iter().any(|&b| b) {
                bail!("attr-ridge: no training item has a visible label in modality {m}");
            }
        }
        Ok(())
    }

    fn fit_checked(&self, data: &TrainSet, ctx: &FitContext) -> Result<AttrRidgeModel> {
        let emb = l2_normalise_rows(data.require_class_embeddings(METHOD)?).mapv(|v| v as f64);
        let mut std = Vec::new();
        let mut w = Vec::new();
        let mut pred = Vec::new();
        for m in 0..2 {
            let x = data.views[m].features(METHOD, m)?;
            let s = Standardizer::fit(x.view());
            let z = s.apply(x.view()).mapv(|v| v as f64);
            let rows: Vec<usize> = (0..data.len()).filter(|&i| data.labelled[m][i]).collect();
            let t = attribute_targets(data.labels[m].select(Axis(0), &rows).view(), &data.modality_classes[m], &emb);
            let zl = z.select(Axis(0), &rows);
            let wm = ridge_regression(zl.view(), t.view(), self.ridge * rows.len() as f64)
                .with_context(|| format!("attr-ridge: ridge regression of modality {m}"))?;
            pred.push(par_dot(z.view(), wm.view()));
            std.push(s);
            w.push(wm);
        }
        let stacked = concatenate(Axis(0), &[pred[0].view(), pred[1].view()])?;
        let (mean, basis, history) =
            pca_itq_basis(stacked.view(), ctx.bits, self.itq_iter, &mut seeded_rng(ctx.seed, 0)).context("attr-ridge")?;
        Ok(AttrRidgeModel::from_parts(ctx.bits, self.clone(), std, w, mean, basis, history))
    }
}

/// A fitted attribute-regression hasher.
#[derive(Clone, Debug)]
pub struct AttrRidgeModel {
    bits: usize,
    params: AttrRidgeParams,
    std: Vec<Standardizer>,
    /// Wᵛ (dᵛ × e): standardised features → attribute space.
    w: Vec<Array2<f64>>,
    /// μ (e): mean prediction.
    mean: Array1<f64>,
    /// Pₖ [R G] (e × bits).
    basis: Array2<f64>,
    /// Per modality Wᵛ Pₖ [R G] (dᵛ × bits) and μ Pₖ [R G] (bits).
    proj: Vec<Array2<f64>>,
    offset: Array1<f64>,
    history: Vec<f64>,
}

#[derive(Serialize, Deserialize)]
struct AttrRidgeFile {
    method: String,
    bits: usize,
    params: AttrRidgeParams,
    #[serde(default)]
    encode: String,
}

impl AttrRidgeModel {
    fn from_parts(
        bits: usize,
        params: AttrRidgeParams,
        std: Vec<Standardizer>,
        w: Vec<Array2<f64>>,
        mean: Array1<f64>,
        basis: Array2<f64>,
        history: Vec<f64>,
    ) -> Self {
        let proj = w.iter().map(|wm| wm.dot(&basis)).collect();
        let offset = mean.dot(&basis);
        Self { bits, params, std, w, mean, basis, proj, offset, history }
    }

    /// Predicted attribute vectors zᵛ Wᵛ of items of `modality`.
    pub fn attributes(&self, modality: usize, view: &View) -> Result<Array2<f64>> {
        let z = self.standardised(modality, view)?;
        Ok(par_dot(z.view(), self.w[modality].view()))
    }

    /// Real-valued code projections (zᵛ Wᵛ − μ) Pₖ [R G] (before the sign).
    pub fn project(&self, modality: usize, view: &View) -> Result<Array2<f64>> {
        let z = self.standardised(modality, view)?;
        Ok(par_dot(z.view(), self.proj[modality].view()) - &self.offset)
    }

    fn standardised(&self, modality: usize, view: &View) -> Result<Array2<f64>> {
        if modality >= 2 {
            bail!("attr-ridge has two modalities; modality {modality} requested");
        }
        let x = view.features(METHOD, modality)?;
        let s = &self.std[modality];
        if x.ncols() != s.dim() {
            bail!("attr-ridge: modality {modality} items have {} features, the model was trained on {}", x.ncols(), s.dim());
        }
        Ok(s.apply(x.view()).mapv(|v| v as f64))
    }

    /// Reads a model written by [`HashModel::save`].
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("model.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
        let mf: AttrRidgeFile = serde_json::from_str(&text).with_context(|| format!("{}: not an attr-ridge model file", path.display()))?;
        if mf.method != METHOD {
            bail!("{}: method is {:?}, expected {METHOD:?}", path.display(), mf.method);
        }
        let mean = load_vector(&dir.join("mean.npy"))?;
        let basis = load_matrix(&dir.join("basis.npy"))?;
        expect_shape(dir, "basis.npy", &basis, (mean.len(), mf.bits))?;
        let mut std = Vec::new();
        let mut w = Vec::new();
        for m in 0..2 {
            let mu = load_vector(&dir.join(format!("m{m}_feature_mean.npy")))?;
            let sd = load_vector(&dir.join(format!("m{m}_feature_std.npy")))?;
            if sd.len() != mu.len() || sd.iter().any(|&v| v <= 0.0) {
                bail!("{}: m{m}_feature_std.npy must hold {} positive values", dir.display(), mu.len());
            }
            let wm = load_matrix(&dir.join(format!("m{m}_W.npy")))?;
            expect_shape(dir, &format!("m{m}_W.npy"), &wm, (mu.len(), mean.len()))?;
            std.push(Standardizer { mean: mu.mapv(|v| v as f32), std: sd.mapv(|v| v as f32) });
            w.push(wm);
        }
        let history = load_vector(&dir.join("history.npy"))?.to_vec();
        Ok(Self::from_parts(mf.bits, mf.params, std, w, mean, basis, history))
    }
}

impl HashModel for AttrRidgeModel {
    fn method(&self) -> &'static str {
        METHOD
    }
    fn bits(&self) -> usize {
        self.bits
    }
    fn encode(&self, modality: usize, view: &View) -> Result<BinaryCodes> {
        Ok(sign_codes(self.project(modality, view)?.view()))
    }
    /// The ITQ quantisation loss per iteration.
    fn history(&self) -> &[f64] {
        &self.history
    }
    fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
        for m in 0..2 {
            write_npy(&dir.join(format!("m{m}_feature_mean.npy")), &self.std[m].mean)?;
            write_npy(&dir.join(format!("m{m}_feature_std.npy")), &self.std[m].std)?;
            write_npy(&dir.join(format!("m{m}_W.npy")), &self.w[m])?;
        }
        write_npy(&dir.join("mean.npy"), &self.mean)?;
        write_npy(&dir.join("basis.npy"), &self.basis)?;
        write_npy(&dir.join("history.npy"), &Array1::from(self.history.clone()))?;
        let mf = AttrRidgeFile {
            method: METHOD.into(),
            bits: self.bits,
            params: self.params.clone(),
            encode: "modality m (0 = image, 1 = text): z = (x - m{m}_feature_mean) / m{m}_feature_std; \
                     codes = sign((z @ m{m}_W - mean) @ basis) with sign(0) = +1"
                .into(),
        };
        write_text_atomic(&dir.join("model.json"), &serde_json::to_string_pretty(&mf)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ridge_regression_primal_and_dual_agree_and_solve_the_normal_equations() {
        let mut rng = seeded_rng(3, 0);
        let t = randn(6, 2, &mut rng);
        for d in [3, 9] {
            let z = randn(6, d, &mut rng);
            let w = ridge_regression(z.view(), t.view(), 0.5).unwrap();
            // (ZᵀZ + λI) W = ZᵀT
            let lhs = z.t().dot(&z).dot(&w) + &(&w * 0.5);
            let rhs = z.t().dot(&t);
            assert!((&lhs - &rhs).iter().all(|v| v.abs() < 1e-9), "d = {d}");
        }
    }

    #[test]
    fn principal_directions_hand_worked() {
        // Points on the line y = 2x (variance along (1, 2)/√5) plus nothing else: rank 1.
        let x = ndarray::array![[1.0, 2.0], [-1.0, -2.0], [2.0, 4.0], [-2.0, -4.0]];
        let (d, var) = principal_directions(x.view(), &Array1::zeros(2), 5).unwrap();
        assert_eq!(d.dim(), (2, 1));
        assert!((d[[0, 0]].abs() - 1.0 / 5f64.sqrt()).abs() < 1e-12 && (d[[1, 0]].abs() - 2.0 / 5f64.sqrt()).abs() < 1e-12);
        // Variance = mean of squared projections: (5 + 5 + 20 + 20) / 4.
        assert!((var[0] - 12.5).abs() < 1e-9);
    }

    #[test]
    fn attribute_targets_average_the_labels_in_the_modality_space() {
        let emb = ndarray::array![[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]];
        let labels = ndarray::array![[1u8, 1, 0], [0, 0, 1], [0, 1, 1]];
        // Class 2 is outside this modality's label space.
        let t = attribute_targets(labels.view(), &[0, 1], &emb);
        assert_eq!(t, ndarray::array![[0.5, 0.5], [0.0, 0.0], [0.0, 1.0]]);
    }
}
