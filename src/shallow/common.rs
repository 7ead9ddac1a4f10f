//! Building blocks shared by the shallow methods (SCH, CCA-ITQ): RBF anchor features, ITQ,
//! regularised CCA, orthogonal Procrustes, row-blocked BLAS products and small utilities.
//!
//! Everything computes in f64. Products whose size grows with the number of items n go through
//! [`par_dot`], [`par_t_dot`] and [`par_gram`]: the rows are cut into blocks, rayon runs the blocks
//! on its threads, and each block is one BLAS call (OpenBLAS `dgemm` / `dsyrk`). This assumes that
//! rayon owns the cores and OpenBLAS runs one thread per call ([`set_blas_threads`]`(1)`, which the
//! CLI calls at start-up): OpenBLAS threads competing with rayon's made small products orders of
//! magnitude slower in the numpy study. With OpenBLAS left multi-threaded the results are the same,
//! only slower.
//!
//! RBF anchor features (the kernel features of SePH, SCRATCH, SCH …):
//! φ(x) = [exp(−‖x − aⱼ‖² / (2σ²))]ⱼ₌₁..c with c anchors aⱼ drawn without replacement from the
//! training rows (seeded), and the bandwidth σ = mean Euclidean distance between the training rows
//! and the anchors (the heuristic of the SePH / SCRATCH reference code), optionally multiplied by a
//! `sigma_scale` chosen on validation data. The features are then
//! centred with their training mean (φ − φ̄): centring raw features would not change any RBF
//! distance, centring φ removes the large common offset that a linear hash function would
//! otherwise have to absorb.

use crate::codes::BinaryCodes;
use crate::npy::{read_npy, write_npy};
use anyhow::{bail, Context, Result};
use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array1, Array2, ArrayView2, ArrayViewMut2, Axis};
use ndarray_linalg::{Cholesky, Diag, Eigh, SolveTriangular, QR, SVD, UPLO};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;
use std::os::raw::c_int;
use std::path::Path;

extern "C" {
    fn openblas_set_num_threads(n: c_int);
    fn cblas_dsyrk(
        order: c_int,
        uplo: c_int,
        trans: c_int,
        n: c_int,
        k: c_int,
        alpha: f64,
        a: *const f64,
        lda: c_int,
        beta: f64,
        c: *mut f64,
        ldc: c_int,
    );
}
const CBLAS_ROW_MAJOR: c_int = 101;
const CBLAS_UPPER: c_int = 121;
const CBLAS_TRANS: c_int = 112;

/// Sets the number of threads OpenBLAS uses per call. cmh calls it with 1 at start-up: rayon owns
/// the cores, and each BLAS call inside a rayon task runs on the thread that made it.
pub fn set_blas_threads(n: usize) {
    let n = n.clamp(1, c_int::MAX as usize) as c_int;
    // SAFETY: plain setter exported by libopenblas (linked through openblas-src); no pointers.
    unsafe { openblas_set_num_threads(n) }
}

/// The seeded random generator of the shallow methods (ChaCha8: same stream on every platform).
pub type ShallowRng = ChaCha8Rng;

/// A generator for `seed`; `stream` separates independent uses of one seed.
pub fn seeded_rng(seed: u64, stream: u64) -> ShallowRng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(stream);
    r
}

/// sgn with the tie rule of [`BinaryCodes::from_signs`]: x ≥ 0 → +1, x < 0 → −1.
pub fn sgn(x: ArrayView2<f64>) -> Array2<f64> {
    x.mapv(|v| if v >= 0.0 { 1.0 } else { -1.0 })
}

/// Packed codes sgn(x) (x ≥ 0 → bit 1 = +1).
pub fn sign_codes(x: ArrayView2<f64>) -> BinaryCodes {
    BinaryCodes::from_signs(x)
}

/// Standard-normal matrix.
pub fn randn(rows: usize, cols: usize, rng: &mut ShallowRng) -> Array2<f64> {
    Array2::from_shape_simple_fn((rows, cols), || rng.sample::<f64, _>(StandardNormal))
}

/// A random k × k orthogonal matrix (Q of the QR decomposition of a Gaussian matrix).
pub fn random_orthogonal(k: usize, rng: &mut ShallowRng) -> Result<Array2<f64>> {
    let g = randn(k, k, rng);
    let (q, _) = g.qr().context("QR of a random matrix failed")?;
    Ok(q)
}

/// A ±1 code per class (c × k) taken from a Sylvester–Hadamard matrix H of order
/// K = next power of two ≥ max(k, c + 1), H[i][j] = (−1)^popcount(i & j): c distinct random rows
/// other than the constant row 0, k distinct random columns, and a random sign per column.
/// When K = k, any two class codes differ in exactly k/2 bits (rows of H are orthogonal, and the
/// column signs and order preserve Hamming distances); otherwise in about k/2. Random ±1 codes
/// instead collide in many bits at short lengths.
pub fn hadamard_class_codes(c: usize, k: usize, rng: &mut ShallowRng) -> Array2<f64> {
    let big = (c + 1).max(k).next_power_of_two();
    let rows: Vec<usize> = rand::seq::index::sample(rng, big - 1, c).into_iter().map(|r| r + 1).collect();
    let cols: Vec<usize> = rand::seq::index::sample(rng, big, k).into_vec();
    let signs: Vec<f64> = (0..k).map(|_| if rng.gen::<bool>() { 1.0 } else { -1.0 }).collect();
    Array2::from_shape_fn((c, k), |(i, j)| {
        let h = if (rows[i] & cols[j]).count_ones().is_multiple_of(2) { 1.0 } else { -1.0 };
        h * signs[j]
    })
}

/// Random ±1 codes (c × k), each entry a fair coin.
pub fn random_class_codes(c: usize, k: usize, rng: &mut ShallowRng) -> Array2<f64> {
    Array2::from_shape_simple_fn((c, k), || if rng.gen::<bool>() { 1.0 } else { -1.0 })
}

// ---------------------------------------------------------------------------------------------
// Row-blocked BLAS products
// ---------------------------------------------------------------------------------------------

/// Rows per BLAS call in the blocked products: large enough for BLAS to run at full speed,
/// bounded so that the f64 copy of a block of raw features stays small.
pub(crate) const BLOCK_ROWS: usize = 4096;
/// Below this many multiply-adds a product runs as one BLAS call on the calling thread.
const PAR_MIN_WORK: usize = 1 << 22;
/// Reductions over rows (aᵀb, aᵀa, sums) split the rows into this many fixed contiguous parts,
/// whatever the number of threads; each part accumulates its blocks in order and the parts are
/// added in order, so results are bit-identical from run to run and on any number of threads
/// (a rayon fold/reduce would add in a schedule-dependent order).
const PARTS: usize = 8;

/// The fixed contiguous row ranges of the parallel reductions (empty ones dropped).
pub(crate) fn parts(n: usize) -> Vec<(usize, usize)> {
    let len = n.div_ceil(PARTS).max(1);
    (0..n).step_by(len).map(|s0| (s0, (s0 + len).min(n))).collect()
}

/// The BLOCK_ROWS-sized blocks of one part, in order.
pub(crate) fn part_blocks(s0: usize, e0: usize) -> impl Iterator<Item = (usize, usize)> {
    (s0..e0).step_by(BLOCK_ROWS).map(move |s| (s, (s + BLOCK_ROWS).min(e0)))
}

/// [`fold_parts`] with each block's rows of `a` (n × ·) passed mutably: `f(start, end, a[start..end], acc)`.
pub(crate) fn fold_parts_mut<A: Send>(
    a: &mut Array2<f64>,
    init: impl Fn() -> A + Sync,
    f: impl Fn(usize, usize, ArrayViewMut2<f64>, &mut A) + Sync,
) -> Vec<A> {
    let n = a.nrows();
    let chunks: Vec<_> = a.axis_chunks_iter_mut(Axis(0), n.div_ceil(PARTS).max(1)).collect();
    parts(n)
        .into_par_iter()
        .zip(chunks)
        .map(|((s0, e0), mut chunk)| {
            let mut acc = init();
            part_blocks(s0, e0).for_each(|(s, e)| f(s, e, chunk.slice_mut(s![s - s0..e - s0, ..]), &mut acc));
            acc
        })
        .collect()
}

/// Rows per parallel task of the row-wise (non-reducing) products: a fixed function of n.
fn task_rows(n: usize) -> usize {
    n.div_ceil(PARTS).clamp(1, BLOCK_ROWS)
}

/// Runs `f(start, end, acc)` over the blocks of each part ([`part_blocks`]), the parts in
/// parallel, each with its own accumulator from `init`; returns the accumulators in part order.
/// Every reduction over rows goes through this, so its summation order is a fixed function of n.
pub(crate) fn fold_parts<A: Send>(n: usize, init: impl Fn() -> A + Sync, f: impl Fn(usize, usize, &mut A) + Sync) -> Vec<A> {
    parts(n)
        .into_par_iter()
        .map(|(s0, e0)| {
            let mut acc = init();
            part_blocks(s0, e0).for_each(|(s, e)| f(s, e, &mut acc));
            acc
        })
        .collect()
}

/// Runs `f(start, end, acc)` over the BLOCK_ROWS-sized blocks of each part, the parts in
/// parallel, then adds the parts' accumulators in order.
fn reduce_rows(n: usize, shape: (usize, usize), f: impl Fn(usize, usize, &mut Array2<f64>) + Sync) -> Array2<f64> {
    sum_in_order(fold_parts(n, || Array2::<f64>::zeros(shape), f), shape)
}

/// The sum of per-part matrices, added in order (zeros of `shape` when there are none).
pub(crate) fn sum_in_order(partials: Vec<Array2<f64>>, shape: (usize, usize)) -> Array2<f64> {
    let mut it = partials.into_iter();
    let mut total = it.next().unwrap_or_else(|| Array2::zeros(shape));
    for p in it {
        total += &p;
    }
    total
}

/// a · b for a tall a (n × m) and a small b (m × k): row blocks of a in parallel.
pub fn par_dot(a: ArrayView2<f64>, b: ArrayView2<f64>) -> Array2<f64> {
    let (n, m) = a.dim();
    assert_eq!(m, b.nrows(), "par_dot: inner dimensions differ");
    let k = b.ncols();
    let mut out = Array2::<f64>::zeros((n, k));
    if n * m * k < PAR_MIN_WORK {
        general_mat_mul(1.0, &a, &b, 0.0, &mut out);
        return out;
    }
    let rows = task_rows(n);
    let outs: Vec<_> = out.axis_chunks_iter_mut(Axis(0), rows).collect();
    let ins: Vec<_> = a.axis_chunks_iter(Axis(0), rows).collect();
    outs.into_par_iter().zip(ins).for_each(|(mut o, ab)| general_mat_mul(1.0, &ab, &b, 0.0, &mut o));
    out
}

/// aᵀ · b for tall a (n × m) and b (n × k): per-block products summed in a fixed order.
pub fn par_t_dot(a: ArrayView2<f64>, b: ArrayView2<f64>) -> Array2<f64> {
    let (n, m) = a.dim();
    assert_eq!(n, b.nrows(), "par_t_dot: row counts differ");
    let k = b.ncols();
    if n * m * k < PAR_MIN_WORK {
        return a.t().dot(&b);
    }
    reduce_rows(n, (m, k), |s0, e, acc| general_mat_mul(1.0, &a.slice(s![s0..e, ..]).t(), &b.slice(s![s0..e, ..]), 1.0, acc))
}

/// acc += blkᵀblk on acc's upper triangle, by `dsyrk` when both are in standard layout (the
/// whole of acc otherwise); [`mirror_upper`] completes the matrix after the last block.
pub(crate) fn gram_add(blk: ArrayView2<f64>, acc: &mut Array2<f64>) {
    let (r, mm) = blk.dim();
    match (c_int::try_from(mm), c_int::try_from(r)) {
        (Ok(mi), Ok(ri)) if blk.is_standard_layout() && acc.is_standard_layout() => {
            // SAFETY: blk is a standard-layout r × m block (lda = m), acc an owned standard
            // m × m matrix (ldc = m); dsyrk writes only acc's upper triangle.
            unsafe {
                cblas_dsyrk(
                    CBLAS_ROW_MAJOR,
                    CBLAS_UPPER,
                    CBLAS_TRANS,
                    mi,
                    ri,
                    1.0,
                    blk.as_ptr(),
                    mi.max(1),
                    1.0,
                    acc.as_mut_ptr(),
                    mi.max(1),
                )
            }
        }
        _ => general_mat_mul(1.0, &blk.t(), &blk, 1.0, acc),
    }
}

/// Copies the upper triangle of a square matrix onto its lower triangle.
pub(crate) fn mirror_upper(g: &mut Array2<f64>) {
    for i in 0..g.nrows() {
        for j in 0..i {
            g[[i, j]] = g[[j, i]];
        }
    }
}

/// aᵀa (m × m) for a tall a (n × m), by `dsyrk` on row blocks (half the work of a general
/// product), summed in a fixed order.
pub fn par_gram(a: ArrayView2<f64>) -> Array2<f64> {
    let (n, m) = a.dim();
    let a = a.as_standard_layout();
    let syrk = |s0: usize, e: usize, acc: &mut Array2<f64>| gram_add(a.slice(s![s0..e, ..]), acc);
    let mut g = if n * m * m < PAR_MIN_WORK {
        let mut acc = Array2::<f64>::zeros((m, m));
        if n > 0 {
            syrk(0, n, &mut acc);
        }
        acc
    } else {
        reduce_rows(n, (m, m), syrk)
    };
    // dsyrk filled the upper triangle (the fallback the whole matrix): mirror upper onto lower.
    mirror_upper(&mut g);
    g
}

/// Σ f(x) over all entries of a, with a fixed summation order (see [`PARTS`]).
fn det_sum(a: ArrayView2<f64>, f: impl Fn(f64) -> f64 + Sync) -> f64 {
    let n = a.nrows();
    let partials: Vec<f64> = parts(n).into_par_iter().map(|(s0, e)| a.slice(s![s0..e, ..]).iter().map(|&v| f(v)).sum()).collect();
    partials.into_iter().sum()
}

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

// ---------------------------------------------------------------------------------------------
// RBF anchor features
// ---------------------------------------------------------------------------------------------

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
    /// draws), σ and centring mean, computed over the row blocks of [`fold_parts`] in two passes
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

// ---------------------------------------------------------------------------------------------
// Linear algebra
// ---------------------------------------------------------------------------------------------

/// The anchor count a fit can use: `requested`, capped at the `rows` training rows the anchors are
/// drawn from (with a note on stderr), so that a default suited to large training sets still fits
/// a small one.
pub fn capped_anchors(param: &str, requested: usize, rows: usize) -> usize {
    if requested > rows {
        eprintln!("note: {param} = {requested} capped at the {rows} training rows");
        rows
    } else {
        requested
    }
}

/// Solves X · A = B for X, A symmetric positive definite (k × k, small), B (n × k): X = B A⁻¹.
pub fn solve_right_spd(b: ArrayView2<f64>, a: ArrayView2<f64>) -> Result<Array2<f64>> {
    // X A = B ⇔ A Xᵀ = Bᵀ (A symmetric).
    let l = a.cholesky(UPLO::Lower).context("Cholesky factorisation failed: the system matrix is not positive definite")?;
    solve_right_cholesky(b, &l)
}

/// X with X · (L Lᵀ) = B, for the lower Cholesky factor L of a small k × k matrix and B (n × k).
pub fn solve_right_cholesky(b: ArrayView2<f64>, l: &Array2<f64>) -> Result<Array2<f64>> {
    let z = l.solve_triangular(UPLO::Lower, Diag::NonUnit, &b.t().to_owned())?;
    let xt = l.t().to_owned().solve_triangular(UPLO::Upper, Diag::NonUnit, &z)?;
    Ok(xt.reversed_axes().as_standard_layout().into_owned())
}

/// A cached Cholesky factor L (A = LLᵀ) of a symmetric positive definite matrix.
#[derive(Clone, Debug)]
pub struct SpdFactor {
    l: Array2<f64>,
    lt: Array2<f64>,
}

impl SpdFactor {
    pub fn new(a: ArrayView2<f64>) -> Result<Self> {
        let l = a.cholesky(UPLO::Lower).context("Cholesky factorisation failed: the matrix is not positive definite")?;
        let lt = l.t().as_standard_layout().into_owned();
        Ok(Self { l, lt })
    }
    /// A⁻¹ b.
    pub fn solve(&self, b: ArrayView2<f64>) -> Result<Array2<f64>> {
        let z = self.l.solve_triangular(UPLO::Lower, Diag::NonUnit, &b.to_owned())?;
        Ok(self.lt.solve_triangular(UPLO::Upper, Diag::NonUnit, &z)?)
    }
}

/// Orthogonal Procrustes: the orthogonal R maximising tr(Rᵀ M), i.e. minimising ‖B − FR‖² when
/// M = FᵀB. With the SVD M = PΣQᵀ, R = PQᵀ.
pub fn procrustes(m: ArrayView2<f64>) -> Result<Array2<f64>> {
    let (p, _s, qt) = m.svd(true, true).context("SVD failed in the Procrustes rotation")?;
    let (p, qt) = (p.expect("u requested"), qt.expect("vt requested"));
    Ok(p.dot(&qt))
}

/// [`procrustes`] with a rule for the case where the maximiser is not unique. When M is rank
/// deficient (singular values below 1e-9 σ_max count as zero), tr(RᵀM) is the same for every
/// R = PᵣQᵣᵀ + P₀ZQ₀ᵀ, Z orthogonal (Pᵣ, Qᵣ: the singular vectors of the non-zero singular values;
/// P₀, Q₀: those of the zero ones), and the SVD would pick Z from rounding noise. This takes the Z
/// nearest `prev` (max tr((P₀ZQ₀ᵀ)ᵀ prev), itself a Procrustes problem: Z = polar(P₀ᵀ prev Q₀)),
/// which depends only on the subspaces, not on the bases the SVD returns for them.
pub fn procrustes_nearest(m: ArrayView2<f64>, prev: ArrayView2<f64>) -> Result<Array2<f64>> {
    let (p, s, qt) = m.svd(true, true).context("SVD failed in the Procrustes rotation")?;
    let (p, qt) = (p.expect("u requested"), qt.expect("vt requested"));
    let smax = s.iter().fold(0.0f64, |a, &v| a.max(v));
    let r = s.iter().filter(|&&v| v > 1e-9 * smax).count();
    let mut rot = p.slice(s![.., ..r]).dot(&qt.slice(s![..r, ..]));
    if r < s.len() {
        let (p0, q0t) = (p.slice(s![.., r..]), qt.slice(s![r.., ..]));
        let z = procrustes(p0.t().dot(&prev).dot(&q0t.t()).view())?;
        rot += &p0.dot(&z).dot(&q0t);
    }
    Ok(rot)
}

/// ITQ (Gong & Lazebnik, CVPR 2011): the rotation R minimising the quantisation loss
/// ‖sgn(VR) − VR‖² of the (centred, projected) data V (n × k), by alternating B = sgn(VR) and
/// R = Procrustes(VᵀB), from a random orthogonal start. Returns R and the loss per iteration.
pub fn itq_rotation(v: ArrayView2<f64>, iters: usize, rng: &mut ShallowRng) -> Result<(Array2<f64>, Vec<f64>)> {
    let k = v.ncols();
    let mut r = random_orthogonal(k, rng)?;
    let mut losses = Vec::with_capacity(iters + 1);
    for _ in 0..iters {
        let vr = par_dot(v, r.view());
        let b = sgn(vr.view());
        losses.push((&b - &vr).mapv(|x| x * x).sum());
        r = procrustes(par_t_dot(v, b.view()).view())?;
    }
    let vr = par_dot(v, r.view());
    losses.push((&sgn(vr.view()) - &vr).mapv(|x| x * x).sum());
    Ok((r, losses))
}

/// Regularised CCA between two views.
#[derive(Clone, Debug)]
pub struct Cca {
    /// dx × k and dy × k projections, normalised so that Wxᵀ(Cxx + rx I)Wx = I (same for y).
    pub wx: Array2<f64>,
    pub wy: Array2<f64>,
    /// Canonical correlations, descending (length k).
    pub corr: Array1<f64>,
    /// Column means the projections expect subtracted.
    pub mean_x: Array1<f64>,
    pub mean_y: Array1<f64>,
}

/// Regularised CCA of x (n × dx) and y (n × dy) to k dimensions: with the covariances C (of the
/// column-centred data, divided by n) and ridges rₓ = reg·tr(Cxx)/dx, r_y = reg·tr(Cyy)/dy,
/// solves the generalised symmetric eigenproblem
///   Cxy (Cyy + r_y I)⁻¹ Cyx wx = ρ² (Cxx + rₓ I) wx          (LAPACK dsygv)
/// for the k largest ρ², and wy = (Cyy + r_y I)⁻¹ Cyx wx / ρ.
pub fn cca(x: ArrayView2<f64>, y: ArrayView2<f64>, k: usize, reg: f64) -> Result<Cca> {
    let n = x.nrows();
    if y.nrows() != n {
        bail!("CCA: the two views have {} and {} rows", n, y.nrows());
    }
    let (dx, dy) = (x.ncols(), y.ncols());
    if k == 0 || k > dx.min(dy) {
        bail!("CCA yields at most min(dx, dy) = {} dimensions, {k} requested", dx.min(dy));
    }
    if n < 2 {
        bail!("CCA needs at least two rows");
    }
    if !(reg.is_finite() && reg > 0.0) {
        bail!("CCA regularisation must be > 0, found {reg}");
    }
    let mean_x = x.mean_axis(Axis(0)).expect("n >= 2");
    let mean_y = y.mean_axis(Axis(0)).expect("n >= 2");
    let nf = n as f64;
    // C = (XᵀX − n x̄x̄ᵀ)/n, without copying the centred data.
    let outer = |a: &Array1<f64>, b: &Array1<f64>| a.view().insert_axis(Axis(1)).dot(&b.view().insert_axis(Axis(0)));
    let mut cxx = (par_gram(x) - outer(&mean_x, &mean_x) * nf) / nf;
    let mut cyy = (par_gram(y) - outer(&mean_y, &mean_y) * nf) / nf;
    let cxy = (par_t_dot(x, y) - outer(&mean_x, &mean_y) * nf) / nf;
    let rx = reg * cxx.diag().sum() / dx as f64;
    let ry = reg * cyy.diag().sum() / dy as f64;
    if rx.is_nan() || ry.is_nan() || rx <= 0.0 || ry <= 0.0 {
        bail!("CCA: one view is constant (zero variance)");
    }
    cxx.diag_mut().mapv_inplace(|v| v + rx);
    cyy.diag_mut().mapv_inplace(|v| v + ry);
    let fy = SpdFactor::new(cyy.view()).context("CCA: covariance of the second view")?;
    let cyy_inv_cyx = fy.solve(cxy.t())?; // dy × dx
    let mut a = cxy.dot(&cyy_inv_cyx);
    // Symmetrise against rounding before the symmetric eigensolver.
    a = (&a + &a.t()) * 0.5;
    let (vals, (vecs, _)) = (a, cxx).eigh(UPLO::Lower).context("CCA: generalised eigenproblem (dsygv) failed")?;
    // dsygv returns ascending eigenvalues with eigenvectors normalised as wᵀ Cxx w = 1.
    let order: Vec<usize> = (0..dx).rev().take(k).collect();
    let wx = vecs.select(Axis(1), &order);
    let corr: Array1<f64> = order.iter().map(|&i| vals[i].max(0.0).sqrt()).collect();
    let mut wy = cyy_inv_cyx.dot(&wx);
    for (mut col, &c) in wy.axis_iter_mut(Axis(1)).zip(corr.iter()) {
        col /= c.max(1e-12);
    }
    Ok(Cca { wx, wy, corr, mean_x, mean_y })
}

// ---------------------------------------------------------------------------------------------
// Model files
// ---------------------------------------------------------------------------------------------

/// Reads a 2-d numeric `.npy` as f64, naming the file in errors.
pub fn load_matrix(path: &Path) -> Result<Array2<f64>> {
    let a = read_npy(path)?.to_f64();
    let shape = a.shape().to_vec();
    let m = a
        .into_dimensionality::<ndarray::Ix2>()
        .map_err(|_| anyhow::anyhow!("{}: expected a 2-d array, found shape {shape:?}", path.display()))?;
    if m.iter().any(|v| !v.is_finite()) {
        bail!("{}: holds NaN or infinite values", path.display());
    }
    Ok(m)
}

/// Reads a 1-d numeric `.npy` as f64, naming the file in errors.
pub fn load_vector(path: &Path) -> Result<Array1<f64>> {
    let a = read_npy(path)?.to_f64();
    let shape = a.shape().to_vec();
    let v = a
        .into_dimensionality::<ndarray::Ix1>()
        .map_err(|_| anyhow::anyhow!("{}: expected a 1-d array, found shape {shape:?}", path.display()))?;
    if v.iter().any(|x| !x.is_finite()) {
        bail!("{}: holds NaN or infinite values", path.display());
    }
    Ok(v)
}

/// Checks a loaded matrix's shape, naming the file.
pub fn expect_shape(dir: &Path, file: &str, m: &Array2<f64>, shape: (usize, usize)) -> Result<()> {
    if m.dim() != shape {
        bail!("{}: expected shape {:?}, found {:?}", dir.join(file).display(), shape, m.dim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn naive_dot(a: &Array2<f64>, b: &Array2<f64>) -> Array2<f64> {
        let mut c = Array2::zeros((a.nrows(), b.ncols()));
        for i in 0..a.nrows() {
            for j in 0..b.ncols() {
                c[[i, j]] = (0..a.ncols()).map(|l| a[[i, l]] * b[[l, j]]).sum();
            }
        }
        c
    }

    fn max_abs(a: &Array2<f64>) -> f64 {
        a.iter().fold(0.0f64, |m, &v| m.max(v.abs()))
    }

    #[test]
    fn blocked_products_match_naive_ones() {
        let mut rng = seeded_rng(1, 0);
        // Large enough to take the parallel path (n·m·k ≥ PAR_MIN_WORK) with a ragged last block.
        let a = randn(9001, 23, &mut rng);
        let b = randn(23, 31, &mut rng);
        let c = randn(9001, 29, &mut rng);
        assert!(max_abs(&(par_dot(a.view(), b.view()) - naive_dot(&a, &b))) < 1e-9);
        let atc = naive_dot(&a.t().to_owned(), &c);
        assert!(max_abs(&(par_t_dot(a.view(), c.view()) - &atc)) < 1e-8);
        let g = naive_dot(&a.t().to_owned(), &a);
        assert!(max_abs(&(par_gram(a.view()) - &g)) < 1e-8);
        // Small sizes take the single-call path.
        let s = randn(5, 3, &mut rng);
        assert!(max_abs(&(par_gram(s.view()) - naive_dot(&s.t().to_owned(), &s))) < 1e-12);
        // Non-standard layout input.
        let at = a.t().to_owned();
        assert!(max_abs(&(par_gram(at.t()) - &g)) < 1e-8);
    }

    #[test]
    fn blocked_products_are_bit_identical_on_any_thread_count() {
        let mut rng = seeded_rng(4, 0);
        let a = randn(20011, 40, &mut rng);
        let b = randn(20011, 16, &mut rng);
        let w = randn(40, 16, &mut rng);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| (par_t_dot(a.view(), b.view()), par_gram(a.view()), par_dot(a.view(), w.view()), det_sum(a.view(), f64::abs)))
        };
        let one = run(1);
        for t in [2, 3, 7] {
            let other = run(t);
            assert!(one.0 == other.0 && one.1 == other.1 && one.2 == other.2 && one.3 == other.3, "{t} threads differ");
        }
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

    #[test]
    fn procrustes_hand_cases() {
        // M = diag(2, 1): R = I.
        let r = procrustes(array![[2.0, 0.0], [0.0, 1.0]].view()).unwrap();
        assert!(max_abs(&(&r - &Array2::<f64>::eye(2))) < 1e-12);
        // M orthogonal (a rotation by 90°) times a positive scale: R = M / scale.
        let m = array![[0.0, -3.0], [3.0, 0.0]];
        let r = procrustes(m.view()).unwrap();
        assert!(max_abs(&(&r - &(&m / 3.0))) < 1e-12);
        // Maximality against random orthogonal matrices.
        let mut rng = seeded_rng(3, 0);
        let m = randn(4, 4, &mut rng);
        let r = procrustes(m.view()).unwrap();
        let best = (r.t().dot(&m)).diag().sum();
        for _ in 0..50 {
            let q = random_orthogonal(4, &mut rng).unwrap();
            assert!(q.t().dot(&m).diag().sum() <= best + 1e-12);
        }
        assert!(max_abs(&(r.t().dot(&r) - Array2::<f64>::eye(4))) < 1e-12);
    }

    #[test]
    fn procrustes_nearest_breaks_ties_by_the_previous_rotation() {
        // Full rank: the unique maximiser, whatever `prev` is.
        let mut rng = seeded_rng(4, 0);
        let m = randn(4, 4, &mut rng);
        let prev = random_orthogonal(4, &mut rng).unwrap();
        assert!(max_abs(&(procrustes_nearest(m.view(), prev.view()).unwrap() - procrustes(m.view()).unwrap())) < 1e-12);
        // M = diag(2, 0): any R = diag(1, ±1) maximises tr(RᵀM) = 2; the one nearest prev is kept.
        let m = array![[2.0, 0.0], [0.0, 0.0]];
        let flip = array![[1.0, 0.0], [0.0, -1.0]];
        assert!(max_abs(&(procrustes_nearest(m.view(), flip.view()).unwrap() - &flip)) < 1e-12);
        assert!(max_abs(&(procrustes_nearest(m.view(), Array2::<f64>::eye(2).view()).unwrap() - Array2::<f64>::eye(2))) < 1e-12);
        // Rank 2 of 5, M = FᵀB with B of two distinct rows: a maximiser (tr(RᵀM) = Σσ, orthogonal),
        // and the same R when M carries rounding-sized noise, where the plain SVD's null-space
        // vectors are noise.
        let f = randn(40, 5, &mut rng);
        let rows = randn(2, 5, &mut rng).mapv(|v| if v < 0.0 { -1.0 } else { 1.0 });
        let b = Array2::from_shape_fn((40, 5), |(i, j)| rows[[i % 2, j]]);
        let m = f.t().dot(&b);
        let prev = random_orthogonal(5, &mut rng).unwrap();
        let r = procrustes_nearest(m.view(), prev.view()).unwrap();
        assert!(max_abs(&(r.t().dot(&r) - Array2::<f64>::eye(5))) < 1e-12);
        let (_, s, _) = m.svd(false, false).unwrap();
        assert!((r.t().dot(&m).diag().sum() - s.sum()).abs() < 1e-9 * s.sum());
        let noisy = &m + &(randn(5, 5, &mut rng) * 1e-13 * s[0]);
        let rn = procrustes_nearest(noisy.view(), prev.view()).unwrap();
        assert!(max_abs(&(&rn - &r)) < 1e-8, "{}", max_abs(&(&rn - &r)));
        // The tie-break matters: other maximisers are further from prev.
        let plain = procrustes(m.view()).unwrap();
        assert!((plain.t().dot(&m).diag().sum() - s.sum()).abs() < 1e-9 * s.sum());
        assert!(r.t().dot(&prev).diag().sum() >= plain.t().dot(&prev).diag().sum() - 1e-12);
    }

    #[test]
    fn itq_loss_never_increases_and_rotation_is_orthogonal() {
        let mut rng = seeded_rng(5, 0);
        let v = randn(300, 6, &mut rng);
        let (r, losses) = itq_rotation(v.view(), 30, &mut rng).unwrap();
        assert_eq!(losses.len(), 31);
        for w in losses.windows(2) {
            assert!(w[1] <= w[0] + 1e-9 * w[0].abs(), "ITQ loss rose: {w:?}");
        }
        assert!(losses.last().unwrap() < &losses[0]);
        assert!(max_abs(&(r.t().dot(&r) - Array2::<f64>::eye(6))) < 1e-10);
    }

    #[test]
    fn itq_recovers_a_rotated_hypercube() {
        // Points at the vertices of a square, rotated by 30°: ITQ's optimum has zero loss after
        // rotating back (up to the sign/permutation symmetry of the hypercube).
        let th = std::f64::consts::PI / 6.0;
        let rot = array![[th.cos(), -th.sin()], [th.sin(), th.cos()]];
        let verts = array![[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]];
        let v = verts.dot(&rot);
        let mut rng = seeded_rng(9, 0);
        let (r, losses) = itq_rotation(v.view(), 50, &mut rng).unwrap();
        assert!(*losses.last().unwrap() < 1e-10, "final loss {:?}", losses.last());
        let vr = v.dot(&r);
        assert!(vr.iter().all(|x| (x.abs() - 1.0).abs() < 1e-6));
    }

    #[test]
    fn cca_satisfies_its_constraints_and_matches_whitened_svd() {
        let mut rng = seeded_rng(11, 0);
        let n = 400;
        let z = randn(n, 2, &mut rng);
        let x = z.dot(&randn(2, 5, &mut rng)) + randn(n, 5, &mut rng) * 0.5 + 3.0;
        let y = z.dot(&randn(2, 4, &mut rng)) + randn(n, 4, &mut rng) * 0.5 - 1.0;
        let reg = 1e-3;
        let c = cca(x.view(), y.view(), 3, reg).unwrap();
        // Independent computation: covariances by explicit centring, whitening by Cholesky,
        // singular values of Lx⁻¹ Cxy Ly⁻ᵀ are the canonical correlations.
        let xc = &x - &x.mean_axis(Axis(0)).unwrap();
        let yc = &y - &y.mean_axis(Axis(0)).unwrap();
        let nf = n as f64;
        let mut cxx = xc.t().dot(&xc) / nf;
        let mut cyy = yc.t().dot(&yc) / nf;
        let cxy = xc.t().dot(&yc) / nf;
        let rx = reg * cxx.diag().sum() / 5.0;
        let ry = reg * cyy.diag().sum() / 4.0;
        cxx.diag_mut().mapv_inplace(|v| v + rx);
        cyy.diag_mut().mapv_inplace(|v| v + ry);
        let lx = cxx.cholesky(UPLO::Lower).unwrap();
        let ly = cyy.cholesky(UPLO::Lower).unwrap();
        let t1 = lx.solve_triangular(UPLO::Lower, Diag::NonUnit, &cxy).unwrap();
        let t = ly.solve_triangular(UPLO::Lower, Diag::NonUnit, &t1.t().to_owned()).unwrap().reversed_axes();
        let (_, sv, _) = t.svd(false, false).unwrap();
        for i in 0..3 {
            assert!((c.corr[i] - sv[i]).abs() < 1e-9, "corr {} vs sv {}", c.corr[i], sv[i]);
        }
        // Constraints: Wxᵀ Cxx Wx = I, Wyᵀ Cyy Wy = I, Wxᵀ Cxy Wy = diag(ρ).
        let eye = Array2::<f64>::eye(3);
        assert!(max_abs(&(c.wx.t().dot(&cxx).dot(&c.wx) - &eye)) < 1e-9);
        assert!(max_abs(&(c.wy.t().dot(&cyy).dot(&c.wy) - &eye)) < 1e-9);
        let cross = c.wx.t().dot(&cxy).dot(&c.wy);
        assert!(max_abs(&(cross - Array2::from_diag(&c.corr))) < 1e-9);
        assert!(c.corr[0] > 0.8 && c.corr[2] < c.corr[1]);
        assert!(cca(x.view(), y.view(), 5, reg).is_err());
        assert!(cca(x.view(), y.view(), 2, 0.0).is_err());
    }

    #[test]
    fn hadamard_class_codes_are_equidistant() {
        let mut rng = seeded_rng(2, 0);
        let hamming = |g: &Array2<f64>, a: usize, b: usize| g.row(a).iter().zip(g.row(b).iter()).filter(|(x, y)| x != y).count();
        // k a power of two and c < k: every pair of class codes differs in exactly k/2 bits.
        for (c, k) in [(10, 16), (10, 32), (3, 4), (15, 16)] {
            let g = hadamard_class_codes(c, k, &mut rng);
            assert_eq!(g.dim(), (c, k));
            for a in 0..c {
                for b in 0..a {
                    assert_eq!(hamming(&g, a, b), k / 2, "c={c} k={k}");
                }
            }
        }
        // Other shapes: valid ±1 codes, distinct rows.
        for (c, k) in [(24, 16), (5, 12), (2, 1)] {
            let g = hadamard_class_codes(c, k, &mut rng);
            assert!(g.iter().all(|&v| v == 1.0 || v == -1.0));
            if k >= 8 {
                for a in 0..c {
                    for b in 0..a {
                        assert!(hamming(&g, a, b) > 0);
                    }
                }
            }
        }
        // Seeded.
        assert_eq!(hadamard_class_codes(10, 16, &mut seeded_rng(1, 1)), hadamard_class_codes(10, 16, &mut seeded_rng(1, 1)));
    }

    #[test]
    fn spd_solves() {
        let a = array![[4.0, 1.0], [1.0, 3.0]];
        let b = array![[1.0, 2.0], [0.5, -1.0], [3.0, 0.0]];
        let x = solve_right_spd(b.view(), a.view()).unwrap();
        assert!(max_abs(&(x.dot(&a) - &b)) < 1e-12);
        let f = SpdFactor::new(a.view()).unwrap();
        let y = f.solve(b.t()).unwrap();
        assert!(max_abs(&(a.dot(&y) - b.t())) < 1e-12);
        assert!(SpdFactor::new(array![[1.0, 2.0], [2.0, 1.0]].view()).is_err());
    }
}
