//! Per-dimension standardisation (z-scores) fitted on training features: z = (x − μ) / σ with the
//! training mean μ and population standard deviation σ of each column; a constant column keeps
//! σ = 1, so it maps to 0 instead of dividing by zero.

use ndarray::{Array1, Array2, ArrayView2, Axis};

/// Column means and standard deviations learned on the training features.
#[derive(Clone, Debug, PartialEq)]
pub struct Standardizer {
    pub mean: Array1<f32>,
    pub std: Array1<f32>,
}

impl Standardizer {
    /// μ and σ of the columns of x (accumulated in f64; σ ≤ 1e-12 → 1).
    pub fn fit(x: ArrayView2<f32>) -> Self {
        let n = x.nrows().max(1) as f64;
        let mean64 = x.mapv(|v| v as f64).sum_axis(Axis(0)) / n;
        let var =
            x.mapv(|v| v as f64).outer_iter().fold(Array1::<f64>::zeros(x.ncols()), |acc, r| acc + (&r - &mean64).mapv(|d| d * d)) / n;
        Self::from_moments(&mean64, &var)
    }

    /// The standardisation of columns with means `mean` and population variances `var` (σ ≤ 1e-12 → 1).
    pub fn from_moments(mean: &Array1<f64>, var: &Array1<f64>) -> Self {
        let std = var.mapv(|v| if v.sqrt() > 1e-12 { v.sqrt() as f32 } else { 1.0 });
        Self { mean: mean.mapv(|v| v as f32), std }
    }

    /// (x − μ) / σ.
    pub fn apply(&self, x: ArrayView2<f32>) -> Array2<f32> {
        (&x - &self.mean) / &self.std
    }

    /// The number of columns.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn standardizer_hand_worked() {
        // Column 0: mean 2, population variance ((−1)² + 0² + 1²)/3 = 2/3; column 1 is constant.
        let x = array![[1.0f32, 5.0], [2.0, 5.0], [3.0, 5.0]];
        let s = Standardizer::fit(x.view());
        assert_eq!(s.mean, array![2.0f32, 5.0]);
        let sd = (2.0f64 / 3.0).sqrt() as f32;
        assert!((s.std[0] - sd).abs() < 1e-6 && s.std[1] == 1.0);
        let z = s.apply(x.view());
        assert!((z[[0, 0]] + 1.0 / sd).abs() < 1e-5 && z[[1, 0]].abs() < 1e-6 && (z[[2, 0]] - 1.0 / sd).abs() < 1e-5);
        assert!(z.column(1).iter().all(|&v| v == 0.0));
        // New rows use the training μ and σ.
        let y = s.apply(array![[4.0f32, 6.0]].view());
        assert!((y[[0, 0]] - 2.0 / sd).abs() < 1e-5 && y[[0, 1]] == 1.0);
        assert_eq!(s.dim(), 2);
    }
}
