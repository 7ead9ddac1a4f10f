//! Step 2, semantic representations to Hamming space: the H update (eq. 10) under the code
//! constraints, the P update (eq. 9) and the objective (eq. 8).

use super::*;

/// Coordinates of the rows of `z` (n × e) in an orthonormal basis of their span (dimension ≤ the
/// number of classes), so kNN distances are exact and the kd-tree works in few dimensions.
pub(super) fn semantic_coordinates(z: &Array2<f64>) -> Result<Array2<f64>> {
    let (ev, u) = z.t().dot(z).eigh(UPLO::Lower).context("eigendecomposition of Zᵀ Z")?;
    let max = ev.iter().fold(0.0f64, |m, &v| m.max(v));
    let keep: Vec<usize> = (0..ev.len()).filter(|&i| ev[i] > 1e-12 * max && max > 0.0).collect();
    if keep.is_empty() {
        return Ok(Array2::zeros((z.nrows(), 1)));
    }
    Ok(z.dot(&u.select(Axis(1), &keep)))
}

/// [`semantic_coordinates`] written over z's own buffer (row block by row block; a row's
/// coordinates never reach past its own old values), given ZᵀZ.
pub(super) fn semantic_coordinates_in_place(z: Array2<f64>, ztz: &Array2<f64>) -> Result<Array2<f64>> {
    let (n, e) = z.dim();
    let (ev, u) = ztz.eigh(UPLO::Lower).context("eigendecomposition of Zᵀ Z")?;
    let max = ev.iter().fold(0.0f64, |m, &v| m.max(v));
    let keep: Vec<usize> = (0..ev.len()).filter(|&i| ev[i] > 1e-12 * max && max > 0.0).collect();
    if keep.is_empty() {
        return Ok(Array2::zeros((n, 1)));
    }
    let u = u.select(Axis(1), &keep);
    let q = keep.len();
    let z = if z.is_standard_layout() { z } else { z.as_standard_layout().into_owned() };
    let (mut buf, offset) = z.into_raw_vec_and_offset();
    buf.drain(..offset.unwrap_or(0));
    for s0 in (0..n).step_by(crate::numerics::blocked::BLOCK_ROWS) {
        let e0 = (s0 + crate::numerics::blocked::BLOCK_ROWS).min(n);
        let c = ArrayView2::from_shape((e0 - s0, e), &buf[s0 * e..e0 * e]).expect("row-major block").dot(&u);
        buf[s0 * q..e0 * q].copy_from_slice(c.as_slice().expect("standard layout"));
    }
    buf.truncate(n * q);
    Ok(Array2::from_shape_vec((n, q), buf)?)
}

/// H update (eq. 10) under the constraint H = V Rᵀ, VᵀV = nI, 1ᵀV = 0, RᵀR = I (rows), in the
/// coordinates of R (`pv` = RᵀP, r × e). The unconstrained minimiser H̃ = M⁻¹ (Σμ Zₘ) Pᵀ is
/// projected onto the constraint set: V = √n polar(centred H̃ R), the nearest V with VᵀV = nI
/// (orthogonal Procrustes), where H̃ R = M⁻¹ Rz Pᵥᵀ needs only r right-hand sides. Returns V.
pub(super) fn update_v(
    rz: &Array2<f64>,
    pv: &Array2<f64>,
    mut solve: impl FnMut(&dyn Fn(usize, usize) -> Array2<f64>, usize) -> Result<Array2<f64>>,
    project: impl Fn(Array2<f64>) -> Result<Array2<f64>>,
) -> Result<Array2<f64>> {
    let n = rz.nrows();
    // Columns j0..j1 of Rz Pᵥᵀ.
    let mut vt = solve(&|j0, j1| rz.dot(&pv.slice(s![j0..j1, ..]).t()), pv.nrows())?;
    let mean = vt.mean_axis(Axis(0)).expect("n > 0");
    vt -= &mean;
    Ok(project(vt)? * (n as f64).sqrt())
}

/// P update (eq. 9): P = (Σₘ μₘ H Zₘᵀ)(Σₘ μₘ Zₘ Zₘᵀ + ηI)⁻¹ (rows: Hᵀ Rz G⁻¹, Rz = Σ μₘ Zₘ).
pub(super) fn update_p(h: &Array2<f64>, rz: &Array2<f64>, g_inv: &Array2<f64>) -> Array2<f64> {
    h.t().dot(rz).dot(g_inv)
}

/// Eq. 8: Σₘ μₘ ‖H − P Zₘ‖² + γ tr(H L Hᵀ) + η ‖P‖².
pub(super) fn objective(h: &Array2<f64>, p: &Array2<f64>, zs: &[Array2<f64>], mu: &[f64], sys: &System, eta: f64) -> f64 {
    let mut f = 0.0;
    for (z, &m) in zs.iter().zip(mu) {
        let d = h - &z.dot(&p.t());
        f += m * d.iter().map(|v| v * v).sum::<f64>();
    }
    let lh = sys.graph.laplacian_mul(h.view());
    f += sys.gamma * (h * &lh).sum();
    f + eta * p.iter().map(|v| v * v).sum::<f64>()
}

/// Eq. 8 from the sums the streamed fit keeps, Rz = Σₘ μₘZₘ and Gz = Σₘ μₘZₘᵀZₘ (rows):
/// Σₘ μₘ‖H − ZₘPᵀ‖² = (Σμ)‖H‖² − 2⟨HᵀRz, P⟩ + ⟨P Gz, P⟩, plus γ tr(HᵀLH) + η‖P‖².
pub(super) fn objective_from_sums(
    h: &Array2<f64>,
    p: &Array2<f64>,
    rz: &Array2<f64>,
    gz: &Array2<f64>,
    mu_sum: f64,
    sys: &System,
    eta: f64,
) -> f64 {
    let sq = |a: &Array2<f64>| a.iter().map(|v| v * v).sum::<f64>();
    let data = mu_sum * sq(h) - 2.0 * (&h.t().dot(rz) * p).sum() + (&p.dot(gz) * p).sum();
    data + sys.gamma * sys.graph.quadratic_form(h.view()) + eta * sq(p)
}

/// Solves M X = B column group by column group: `rhs(j0, j1)` gives columns j0..j1 of B (`cols`
/// in all), `group` columns per solve. Returns X and the most iterations of any group (what one
/// solve of all columns needs: conjugate gradient treats every column on its own).
pub(super) fn solve_columns(
    sys: &System,
    rhs: &dyn Fn(usize, usize) -> Array2<f64>,
    cols: usize,
    group: usize,
    solver: Solver,
    tol: f64,
    max_iter: usize,
) -> Result<(Array2<f64>, usize)> {
    if group >= cols {
        return solve_system(sys, &rhs(0, cols), solver, tol, max_iter);
    }
    let mut x = crate::numerics::pages::zeros((sys.graph.len(), cols));
    let mut iters = 0;
    for j0 in (0..cols).step_by(group) {
        let j1 = (j0 + group).min(cols);
        let (xg, it) = solve_system(sys, &rhs(j0, j1), solver, tol, max_iter)?;
        x.slice_mut(s![.., j0..j1]).assign(&xg);
        iters = iters.max(it);
    }
    Ok((x, iters))
}
