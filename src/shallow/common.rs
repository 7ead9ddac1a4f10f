//! Class codes of the supervised shallow methods, and the shared numerics under the names the
//! shallow methods use (`crate::numerics` holds them).

pub use crate::numerics::blocked::{par_dot, par_gram, par_t_dot, set_blas_threads};
pub use crate::numerics::cca::{cca, Cca};
pub use crate::numerics::files::{expect_shape, load_matrix, load_vector};
pub use crate::numerics::linalg::{procrustes, procrustes_nearest, solve_right_cholesky, solve_right_spd, SpdFactor};
pub use crate::numerics::random::{randn, random_orthogonal, seeded_rng, ShallowRng};
pub use crate::numerics::rbf::{capped_anchors, sq_distances, RbfMap};
pub use crate::numerics::sign::{sgn, sign_codes};
use ndarray::Array2;
use rand::Rng;

/// A ±1 code per class (c × k) taken from a Sylvester–Hadamard matrix H of order
/// K = next power of two ≥ max(k, c + 1), H[i][j] = (−1)^popcount(i & j): c distinct random rows
/// other than the constant row 0, k distinct random columns, and a random sign per column.
/// When K = k, any two class codes differ in exactly k/2 bits (rows of H are orthogonal, and the
/// column signs and order preserve Hamming distances); otherwise in about k/2. Random ±1 codes
/// instead collide in many bits at short lengths.
pub(crate) fn hadamard_class_codes(c: usize, k: usize, rng: &mut ShallowRng) -> Array2<f64> {
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
pub(crate) fn random_class_codes(c: usize, k: usize, rng: &mut ShallowRng) -> Array2<f64> {
    Array2::from_shape_simple_fn((c, k), || if rng.gen::<bool>() { 1.0 } else { -1.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
