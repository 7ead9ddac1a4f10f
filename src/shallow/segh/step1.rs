//! Step 1, the semantic encoder–decoder: S (eq. 1) and Wₘ from the Sylvester equation (eq. 7) of
//! the auto-encoder objective (eq. 2).

use super::*;

/// Eq. 1: S (rows: labelled items × e), row i = mean of the embeddings of item i's classes.
pub(super) fn semantic_matrix(labels: &Array2<u8>, rows: &[usize], emb: &Array2<f64>) -> Array2<f64> {
    let mut s = Array2::<f64>::zeros((rows.len(), emb.ncols()));
    for (r, &i) in rows.iter().enumerate() {
        let classes: Vec<usize> = labels.row(i).iter().enumerate().filter(|(_, &v)| v != 0).map(|(c, _)| c).collect();
        let mut out = s.row_mut(r);
        for &c in &classes {
            out.scaled_add(1.0 / classes.len() as f64, &emb.row(c));
        }
    }
    s
}

/// Eq. 7: Wₘ solving S Sᵀ Wₘ + λₘ Wₘ Xₘ Xₘᵀ = (1 + λₘ) S Xₘᵀ (rows: `s` is n × e, `x` n × dₘ;
/// returns Wₘ, e × dₘ).
pub(super) fn update_w(s: &Array2<f64>, x: &Array2<f64>, lambda: f64) -> Result<Array2<f64>> {
    let a = s.t().dot(s);
    let b = x.t().dot(x) * lambda;
    let c = s.t().dot(x) * (1.0 + lambda);
    solve_sylvester_psd(&a, &b, &c)
}

/// Solves A W + W B = C for symmetric positive semi-definite A (p × p) and B (q × q) with two
/// symmetric eigendecompositions: W = Pₐ [(Pₐᵀ C P_b) ⊘ (aᵢ + b_j)] P_bᵀ. Entries whose
/// denominator is below 1e-12 of the largest are set to 0 (the minimum-norm solution).
pub(super) fn solve_sylvester_psd(a: &Array2<f64>, b: &Array2<f64>, c: &Array2<f64>) -> Result<Array2<f64>> {
    let (ea, pa) = a.eigh(UPLO::Lower).context("eigendecomposition of S Sᵀ")?;
    let (eb, pb) = b.eigh(UPLO::Lower).context("eigendecomposition of λ X Xᵀ")?;
    let scale = ea.iter().chain(eb.iter()).fold(0.0f64, |m, v| m.max(v.abs()));
    let tol = 1e-12 * scale.max(f64::MIN_POSITIVE);
    let mut t = pa.t().dot(c).dot(&pb);
    for ((i, j), v) in t.indexed_iter_mut() {
        let den = ea[i] + eb[j];
        *v = if den > tol { *v / den } else { 0.0 };
    }
    Ok(pa.dot(&t).dot(&pb.t()))
}
