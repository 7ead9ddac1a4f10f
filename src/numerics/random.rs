//! Seeded random matrices: the generator, Gaussian matrices and random orthogonal matrices.

use anyhow::{Context, Result};
use ndarray::Array2;
use ndarray_linalg::QR;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// The seeded random generator of the shallow methods (ChaCha8: same stream on every platform).
pub type ShallowRng = ChaCha8Rng;

/// A generator for `seed`; `stream` separates independent uses of one seed.
pub fn seeded_rng(seed: u64, stream: u64) -> ShallowRng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(stream);
    r
}

/// Standard-normal matrix, drawn row by row.
pub fn randn(rows: usize, cols: usize, rng: &mut impl Rng) -> Array2<f64> {
    Array2::from_shape_simple_fn((rows, cols), || rng.sample::<f64, _>(StandardNormal))
}

/// A random k × k orthogonal matrix (Q of the QR decomposition of a Gaussian matrix).
pub fn random_orthogonal(k: usize, rng: &mut impl Rng) -> Result<Array2<f64>> {
    let g = randn(k, k, rng);
    let (q, _) = g.qr().context("QR of a random matrix failed")?;
    Ok(q)
}

/// A random m × r matrix with orthonormal columns (m ≥ r): the polar factor of a Gaussian matrix.
pub fn random_orthonormal(m: usize, r: usize, rng: &mut impl Rng) -> Result<Array2<f64>> {
    super::linalg::polar(&randn(m, r, rng), false)
}
