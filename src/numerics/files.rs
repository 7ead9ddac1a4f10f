//! Reading a fitted model's matrices back from `.npy` files, with errors that name the file.

use crate::npy::read_npy;
use anyhow::{bail, Result};
use ndarray::{Array1, Array2};
use std::path::Path;

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
