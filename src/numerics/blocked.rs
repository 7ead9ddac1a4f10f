//! Row-blocked BLAS products for tall matrices (n items × a few columns).
//!
//! Products whose size grows with the number of items n go through [`par_dot`], [`par_t_dot`] and
//! [`par_gram`]: the rows are cut into blocks, rayon runs the blocks on its threads, and each block
//! is one BLAS call (OpenBLAS `dgemm` / `dsyrk`). This assumes that rayon owns the cores and
//! OpenBLAS runs one thread per call ([`set_blas_threads`]`(1)`, which the CLI calls at start-up):
//! OpenBLAS threads competing with rayon's make small products orders of magnitude slower. With
//! OpenBLAS left multi-threaded the results are the same, only slower.
//!
//! Reductions over rows add per-part results in a fixed order, so every result is bit-identical
//! from run to run and on any number of threads.

use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array2, ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;
use std::os::raw::c_int;

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

/// Rows per BLAS call in the blocked products: large enough for BLAS to run at full speed,
/// bounded so that the f64 copy of a block of raw features stays small.
pub(crate) const BLOCK_ROWS: usize = 4096;
/// Below this many multiply-adds a product runs as one BLAS call on the calling thread.
pub(crate) const PAR_MIN_WORK: usize = 1 << 22;
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
pub(crate) fn task_rows(n: usize) -> usize {
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
    let mut out = Array2::<f64>::zeros((a.nrows(), b.ncols()));
    par_dot_into(a, b, &mut out);
    out
}

/// [`par_dot`] into an existing n × k matrix (overwritten), for loops that reuse one buffer.
pub fn par_dot_into(a: ArrayView2<f64>, b: ArrayView2<f64>, out: &mut Array2<f64>) {
    let (n, m) = a.dim();
    assert_eq!(m, b.nrows(), "par_dot: inner dimensions differ");
    let k = b.ncols();
    assert_eq!(out.dim(), (n, k), "par_dot_into: output shape");
    if n * m * k < PAR_MIN_WORK {
        general_mat_mul(1.0, &a, &b, 0.0, out);
        return;
    }
    let rows = task_rows(n);
    let outs: Vec<_> = out.axis_chunks_iter_mut(Axis(0), rows).collect();
    let ins: Vec<_> = a.axis_chunks_iter(Axis(0), rows).collect();
    outs.into_par_iter().zip(ins).for_each(|(mut o, ab)| general_mat_mul(1.0, &ab, &b, 0.0, &mut o));
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
pub(crate) fn det_sum(a: ArrayView2<f64>, f: impl Fn(f64) -> f64 + Sync) -> f64 {
    let n = a.nrows();
    let partials: Vec<f64> = parts(n).into_par_iter().map(|(s0, e)| a.slice(s![s0..e, ..]).iter().map(|&v| f(v)).sum()).collect();
    partials.into_iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::numerics::random::{randn, seeded_rng};

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
}
