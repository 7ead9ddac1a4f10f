//! Iterative quantisation (Gong & Lazebnik, CVPR 2011): the orthogonal rotation R minimising the
//! quantisation loss ‖B − VR‖²_F over B ∈ {−1, 1}ⁿˣʳ for centred data V (n × r).
//! Alternates B = sgn(VR) and R = U Wᵀ from the SVD VᵀB = U Σ Wᵀ (orthogonal Procrustes);
//! each step cannot increase the loss.

use anyhow::{bail, Result};
use ndarray::{Array2, ArrayView2};
use ndarray_linalg::{QR, SVD};
use rand::Rng;
use rand_distr::StandardNormal;

/// sgn with sgn(0) = +1 (the code convention of [`crate::codes::BinaryCodes::from_signs`]).
pub fn sign(x: &Array2<f64>) -> Array2<f64> {
    x.mapv(|v| if v >= 0.0 { 1.0 } else { -1.0 })
}

/// ‖sgn(VR) − VR‖²_F.
pub fn quantisation_loss(v: ArrayView2<f64>, r: &Array2<f64>) -> f64 {
    let vr = v.dot(r);
    let b = sign(&vr);
    (&b - &vr).mapv(|x| x * x).sum()
}

/// A random r × r orthogonal matrix (Q of the QR decomposition of a Gaussian matrix).
pub fn random_rotation(r: usize, rng: &mut impl Rng) -> Result<Array2<f64>> {
    let g = Array2::from_shape_simple_fn((r, r), || rng.sample::<f64, _>(StandardNormal));
    let (q, _) = g.qr()?;
    Ok(q)
}

/// ITQ rotation of centred `v` (n × r) after `iterations` alternations, from a random rotation.
/// Returns R and the loss after each iteration.
pub fn itq(v: ArrayView2<f64>, iterations: usize, rng: &mut impl Rng) -> Result<(Array2<f64>, Vec<f64>)> {
    let r = v.ncols();
    if r == 0 || v.nrows() == 0 {
        bail!("ITQ needs a non-empty matrix, found {:?}", v.dim());
    }
    itq_from(v, random_rotation(r, rng)?, iterations)
}

/// ITQ from a given starting rotation `rot`.
pub fn itq_from(v: ArrayView2<f64>, mut rot: Array2<f64>, iterations: usize) -> Result<(Array2<f64>, Vec<f64>)> {
    let mut losses = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let b = sign(&v.dot(&rot)); // fix R, update B
        let c = v.t().dot(&b); // fix B, update R: max tr(Rᵀ VᵀB)
        let (u, _, wt) = c.svd(true, true)?;
        rot = u.unwrap().dot(&wt.unwrap());
        losses.push(quantisation_loss(v, &rot));
    }
    Ok((rot, losses))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn loss_never_increases_and_r_is_orthogonal() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut v = Array2::from_shape_simple_fn((200, 8), || rng.sample::<f64, _>(StandardNormal));
        let mean = v.mean_axis(ndarray::Axis(0)).unwrap();
        v -= &mean;
        let (r, losses) = itq(v.view(), 30, &mut rng).unwrap();
        for w in losses.windows(2) {
            assert!(w[1] <= w[0] + 1e-9, "{losses:?}");
        }
        let eye = Array2::<f64>::eye(8);
        assert!((r.t().dot(&r) - &eye).mapv(f64::abs).sum() < 1e-9);
    }

    #[test]
    fn recovers_a_rotated_code_from_nearby() {
        // V = B₀Q for ±1 codes B₀ and a rotation Q: Qᵀ gives zero loss. Started from a perturbed
        // Qᵀ, the alternation must reach it (ITQ is a local method: from a random start it may
        // stop in a local minimum, so only descent is asserted there).
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let b0 = Array2::from_shape_simple_fn((300, 4), || if rng.gen::<bool>() { 1.0 } else { -1.0 });
        let q = random_rotation(4, &mut rng).unwrap();
        let v = b0.dot(&q);
        assert!(quantisation_loss(v.view(), &q.t().to_owned()) < 1e-12);
        let noise = Array2::from_shape_simple_fn((4, 4), || 0.15 * rng.sample::<f64, _>(StandardNormal));
        let (start, _) = (&q.t() + &noise).qr().unwrap();
        let start_loss = quantisation_loss(v.view(), &start);
        let (r, losses) = itq_from(v.view(), start, 20).unwrap();
        assert!(start_loss > 1.0, "the start is not already optimal: {start_loss}");
        assert!(*losses.last().unwrap() < 1e-9, "{losses:?}");
        assert!(quantisation_loss(v.view(), &r) < 1e-9);
    }
}
