//! Turning MATLAB variables into bundle arrays: orientation, features, images, labels, indices.
//!
//! Orientation. Every release read here stores one item per row in MATLAB (`N × d` features,
//! `N × C` labels, `H × W × 3 × N` image stacks), and the reader returns MATLAB's orientation, so
//! rows are items. A few files store `d × N` instead; [`item_count`] finds the one size shared by
//! every array of a set (rows first) and each array is turned so that its rows are items.
//!
//! Labels are either class indices (an `N × 1` or `1 × N` vector; 1-based in MATLAB files) or a
//! 0/1 matrix (`N × C`, one-hot or multi-hot, any numeric type). In an index vector a value below
//! the base (0 in a 1-based vector, −1 in a 0-based one) or NaN marks a row with no label.

use super::mat::MatVar;
use crate::npy::NpyData;
use anyhow::{bail, Result};
use ndarray::{Array2, Array4, ArrayD, Axis, Ix2, Ix4, IxDyn};

/// Base of class-index labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LabelBase {
    /// 0-based when a 0 appears in the index vectors, 1-based otherwise (formats from MATLAB
    /// releases use 1 unless this is set explicitly).
    #[default]
    Auto,
    Zero,
    One,
}

/// The item count of a set of arrays that describe the same items.
///
/// Rows are items when all arrays agree on their row count (image stacks: the `N` of
/// `H × W × 3 × N` or `N × …`); otherwise the one size every array has somewhere.
pub(crate) fn item_count(vars: &[&MatVar]) -> Result<usize> {
    let primary: Vec<usize> = vars.iter().map(|v| primary_len(v.shape())).collect();
    if primary.windows(2).all(|w| w[0] == w[1]) {
        return Ok(primary[0]);
    }
    let mut common: Vec<usize> = vars[0].shape().to_vec();
    for v in &vars[1..] {
        common.retain(|d| v.shape().contains(d));
    }
    common.sort_unstable();
    common.dedup();
    if common.len() == 1 {
        return Ok(common[0]);
    }
    let shapes: Vec<String> = vars.iter().map(|v| format!("{} has shape {:?}", v.what(), v.shape())).collect();
    bail!("item count mismatch: these arrays should describe the same items (one per row) but their sizes disagree: {}", shapes.join("; "))
}

fn primary_len(shape: &[usize]) -> usize {
    match shape.len() {
        0 => 1,
        1 => shape[0],
        2 if shape[0] == 1 || shape[1] == 1 => shape[0].max(shape[1]),
        2 => shape[0],
        4 if shape[2] == 3 => shape[3], // MATLAB H × W × 3 × N
        _ => shape[0],
    }
}

fn to_2d<T: Clone>(a: ArrayD<T>, v: &MatVar, what: &str) -> Result<Array2<T>> {
    let a = match a.ndim() {
        1 => {
            let n = a.len();
            a.into_shape_with_order((n, 1))?.into_dyn()
        }
        2 => a,
        _ => bail!("{}: {what} must be a 2-d matrix, found shape {:?}", v.what(), a.shape()),
    };
    Ok(a.into_dimensionality::<Ix2>()?)
}

/// Turns a matrix so that its rows are the `n` items.
fn rows_are_items<T: Clone>(a: Array2<T>, n: usize, v: &MatVar, what: &str) -> Result<Array2<T>> {
    if a.nrows() == n {
        Ok(a)
    } else if a.ncols() == n {
        Ok(a.reversed_axes().as_standard_layout().into_owned())
    } else {
        bail!("{}: {what} must have {n} rows (one per item, as the other arrays of this set), found shape {:?}", v.what(), a.shape())
    }
}

/// A real feature matrix (any numeric type) as float32, items × dims, refusing NaN/Inf.
pub fn features(v: &MatVar, n: usize) -> Result<Array2<f32>> {
    let a = to_2d(v.data.to_f64(), v, "a feature matrix")?;
    let a = rows_are_items(a, n, v, "the feature matrix")?;
    let x = a.mapv(|x| x as f32);
    if let Some(((i, j), _)) = x.indexed_iter().find(|(_, x)| !x.is_finite()) {
        let src = a[[i, j]];
        let shown = if src.is_finite() { format!("{src} (beyond float32)") } else { format!("{src}") };
        bail!("{}: features must be finite; found {shown} at row {i}, column {j} (of {}×{})", v.what(), x.nrows(), x.ncols());
    }
    Ok(x)
}

/// An image stack (uint8) as N × H × W × 3. Accepts MATLAB's `H × W × 3 × N` (what v5 files and
/// transposed v7.3 files give), and `N × 3 × H × W` / `N × H × W × 3` from plain HDF5 files.
/// Takes the variable's data (large stacks are not copied more than the reordering needs).
pub fn images(v: &mut MatVar, n: usize) -> Result<Array4<u8>> {
    let what = v.what();
    let a = match std::mem::replace(&mut v.data, NpyData::U8(ArrayD::zeros(IxDyn(&[0])))) {
        NpyData::U8(a) => a,
        other => {
            let dtype = other.dtype_name();
            v.data = other;
            bail!("{what}: images must be uint8 (0..255), found {dtype}")
        }
    };
    let s = a.shape().to_vec();
    if s.len() != 4 {
        bail!("{what}: images must be a 4-d array (H × W × 3 × N in MATLAB), found shape {s:?}");
    }
    let n_axis = if s[3] == n {
        3
    } else if s[0] == n {
        0
    } else if let Some(ax) = s.iter().position(|&d| d == n) {
        ax
    } else {
        bail!("{what}: images must hold {n} items (one per item of the other arrays), found shape {s:?}");
    };
    let rest: Vec<usize> = (0..4).filter(|&ax| ax != n_axis).collect();
    let threes: Vec<usize> = rest.iter().copied().filter(|&ax| s[ax] == 3).collect();
    let c_axis = match threes.len() {
        0 => bail!("{what}: images must have 3 colour channels, found shape {s:?}"),
        1 => threes[0],
        _ => *threes.iter().find(|&&ax| ax.abs_diff(n_axis) == 1).unwrap_or(threes.last().unwrap()),
    };
    let hw: Vec<usize> = rest.into_iter().filter(|&ax| ax != c_axis).collect();
    let p = a.permuted_axes(vec![n_axis, hw[0], hw[1], c_axis]);
    Ok(p.as_standard_layout().into_owned().into_dimensionality::<Ix4>()?)
}

/// Labels as read: class indices or a 0/1 matrix, rows = items.
#[derive(Debug, Clone)]
pub enum RawLabels {
    /// Integral values as stored (base not yet applied); `None` = NaN.
    Index(Vec<Option<i64>>),
    MultiHot(Array2<u8>),
}

/// Reads labels for `n` items: a vector (either orientation) is class indices, a matrix 0/1.
pub(crate) fn raw_labels(v: &MatVar, n: usize) -> Result<RawLabels> {
    let s = v.shape();
    let is_vector = s.len() == 1 || (s.len() == 2 && (s[0] == 1 || s[1] == 1) && n != 1);
    let a = v.data.to_f64();
    if is_vector {
        if a.len() != n {
            bail!("{}: label count mismatch: {} labels for {n} items (shape {s:?})", v.what(), a.len());
        }
        let mut out = Vec::with_capacity(n);
        for (i, &x) in a.iter().enumerate() {
            if x.is_nan() {
                out.push(None);
            } else if x.fract() != 0.0 || !x.is_finite() {
                bail!("{}: class indices must be whole numbers; found {x} at item {i}", v.what());
            } else {
                out.push(Some(x as i64));
            }
        }
        return Ok(RawLabels::Index(out));
    }
    let a = to_2d(a, v, "a label matrix")?;
    let a = rows_are_items(a, n, v, "the label matrix").map_err(|e| anyhow::anyhow!("label count mismatch: {e:#}"))?;
    if let Some(((i, j), x)) = a.indexed_iter().find(|(_, &x)| x != 0.0 && x != 1.0) {
        bail!("{}: a label matrix must hold 0 or 1 (one-hot or multi-hot); found {x} at row {i}, column {j}", v.what());
    }
    Ok(RawLabels::MultiHot(a.mapv(|x| x as u8)))
}

/// The base to use for index labels given the user's choice and the values seen.
pub(crate) fn resolve_base(base: LabelBase, default_one: bool, parts: &[&RawLabels]) -> i64 {
    match base {
        LabelBase::Zero => 0,
        LabelBase::One => 1,
        LabelBase::Auto if default_one => 1,
        LabelBase::Auto => {
            let has_zero = parts.iter().any(|p| matches!(p, RawLabels::Index(v) if v.contains(&Some(0))));
            if has_zero {
                0
            } else {
                1
            }
        }
    }
}

/// The number of classes the labels imply (largest index, or matrix width).
pub(crate) fn implied_classes(parts: &[(&RawLabels, &MatVar)], base: i64) -> Result<usize> {
    let mut c = 0usize;
    let mut width: Option<(usize, String)> = None;
    for (p, v) in parts {
        match p {
            RawLabels::Index(idx) => {
                let m = idx.iter().flatten().copied().max().unwrap_or(base - 1);
                c = c.max((m - base + 1).max(0) as usize);
            }
            RawLabels::MultiHot(a) => {
                if let Some((w, other)) = &width {
                    if *w != a.ncols() {
                        bail!("{}: {} label columns, but {other} has {w}", v.what(), a.ncols());
                    }
                }
                width = Some((a.ncols(), v.what()));
                c = c.max(a.ncols());
            }
        }
    }
    Ok(c)
}

/// Labels as a uint8 multi-hot matrix with `c` classes. Rows without a label come back all zero.
pub(crate) fn label_matrix(p: &RawLabels, v: &MatVar, base: i64, c: usize, named: bool) -> Result<Array2<u8>> {
    match p {
        RawLabels::MultiHot(a) => {
            if a.ncols() != c {
                let why = if named { "class names given (--classes)" } else { "classes" };
                bail!("{}: the label matrix has {} columns but there are {c} {why}", v.what(), a.ncols());
            }
            Ok(a.clone())
        }
        RawLabels::Index(idx) => {
            let mut l = Array2::zeros((idx.len(), c));
            for (i, x) in idx.iter().enumerate() {
                let Some(x) = *x else { continue };
                if x < base {
                    continue; // below the base: no label
                }
                let k = (x - base) as usize;
                if k >= c {
                    bail!("{}: class index {x} at item {i} is beyond the {c} classes ({}-based indices)", v.what(), base);
                }
                l[[i, k]] = 1;
            }
            Ok(l)
        }
    }
}

/// An index vector (e.g. `param.indexTest`) as 0-based item indices below `n`.
pub fn indices(v: &MatVar, n: usize, base: i64) -> Result<Vec<usize>> {
    let s = v.shape();
    if !(s.len() == 1 || (s.len() == 2 && (s[0] == 1 || s[1] == 1))) {
        bail!("{}: an index list must be a vector, found shape {s:?}", v.what());
    }
    let a = v.data.to_f64();
    a.iter()
        .enumerate()
        .map(|(k, &x)| {
            if x.fract() != 0.0 || !x.is_finite() {
                bail!("{}: indices must be whole numbers; found {x} at entry {k}", v.what());
            }
            let i = x as i64 - base;
            if i < 0 || i as usize >= n {
                bail!("{}: entry {k} is {x}, outside {base}..{} ({base}-based indices of {n} items)", v.what(), n as i64 - 1 + base);
            }
            Ok(i as usize)
        })
        .collect()
}

/// Rows with no label, as item indices.
pub(crate) fn rows_without_label(l: &Array2<u8>) -> Vec<usize> {
    l.axis_iter(Axis(0)).enumerate().filter(|(_, r)| r.iter().all(|&x| x == 0)).map(|(i, _)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;
    use std::path::PathBuf;

    fn var(data: NpyData) -> MatVar {
        MatVar { file: PathBuf::from("x.mat"), key: "K".into(), data }
    }

    #[test]
    fn item_count_prefers_rows_and_finds_transposed_sets() {
        let a = var(NpyData::F64(ArrayD::zeros(IxDyn(&[5, 3]))));
        let l = var(NpyData::U8(ArrayD::zeros(IxDyn(&[5, 1]))));
        assert_eq!(item_count(&[&a, &l]).unwrap(), 5);
        // A d × N text matrix next to N × d images features: the shared size is N.
        let t = var(NpyData::F64(ArrayD::zeros(IxDyn(&[7, 5]))));
        assert_eq!(item_count(&[&a, &t, &l]).unwrap(), 5);
        let im = var(NpyData::U8(ArrayD::zeros(IxDyn(&[4, 6, 3, 5]))));
        assert_eq!(item_count(&[&im, &l]).unwrap(), 5);
        let bad = var(NpyData::U8(ArrayD::zeros(IxDyn(&[4, 1]))));
        let err = format!("{:#}", item_count(&[&a, &bad]).unwrap_err());
        assert!(err.contains("mismatch") && err.contains("[4, 1]"), "{err}");
    }

    #[test]
    fn features_transpose_and_refuse_nan() {
        let v = var(NpyData::F64(array![[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]].into_dyn()));
        assert_eq!(features(&v, 3).unwrap(), array![[1.0f32, 4.0], [2.0, 5.0], [3.0, 6.0]]);
        assert_eq!(features(&v, 2).unwrap(), array![[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]]);
        let v = var(NpyData::F64(array![[1.0, 2.0], [f64::NAN, 5.0]].into_dyn()));
        let err = format!("{:#}", features(&v, 2).unwrap_err());
        assert!(err.contains("x.mat: K") && err.contains("NaN at row 1, column 0"), "{err}");
        let v = var(NpyData::F64(array![[1.0, 1e300]].into_dyn()));
        assert!(format!("{:#}", features(&v, 1).unwrap_err()).contains("beyond float32"));
    }

    #[test]
    fn images_from_matlab_and_python_layouts() {
        // Item k, pixel (y, x), channel c has value 100k + 10y + x + c*... kept small: k*64+y*16+x*4+c.
        let (n, h, w) = (2usize, 3usize, 4usize);
        let val = |k: usize, y: usize, x: usize, c: usize| (k * 64 + y * 16 + x * 4 + c) as u8;
        let want = Array4::from_shape_fn((n, h, w, 3), |(k, y, x, c)| val(k, y, x, c));
        let matlab = ArrayD::from_shape_fn(IxDyn(&[h, w, 3, n]), |i| val(i[3], i[0], i[1], i[2]));
        assert_eq!(images(&mut var(NpyData::U8(matlab)), n).unwrap(), want);
        let nchw = ArrayD::from_shape_fn(IxDyn(&[n, 3, h, w]), |i| val(i[0], i[2], i[3], i[1]));
        assert_eq!(images(&mut var(NpyData::U8(nchw)), n).unwrap(), want);
        let mut f = var(NpyData::F64(ArrayD::zeros(IxDyn(&[h, w, 3, n]))));
        assert!(format!("{:#}", images(&mut f, n).unwrap_err()).contains("uint8"));
    }

    #[test]
    fn labels_index_and_multi_hot() {
        let v = var(NpyData::U8(array![[2u8], [1], [3], [0]].into_dyn()));
        let raw = raw_labels(&v, 4).unwrap();
        assert_eq!(resolve_base(LabelBase::Auto, true, &[&raw]), 1);
        assert_eq!(resolve_base(LabelBase::Auto, false, &[&raw]), 0);
        assert_eq!(implied_classes(&[(&raw, &v)], 1).unwrap(), 3);
        let l = label_matrix(&raw, &v, 1, 3, false).unwrap();
        assert_eq!(l, array![[0u8, 1, 0], [1, 0, 0], [0, 0, 1], [0, 0, 0]]);
        assert_eq!(rows_without_label(&l), vec![3]);
        let err = format!("{:#}", label_matrix(&raw, &v, 1, 2, true).unwrap_err());
        assert!(err.contains("class index 3 at item 2"), "{err}");
        // A C × N one-hot matrix is turned; values other than 0/1 are refused.
        let v = var(NpyData::F64(array![[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]].into_dyn()));
        match raw_labels(&v, 3).unwrap() {
            RawLabels::MultiHot(a) => assert_eq!(a, array![[1u8, 0], [0, 1], [0, 1]]),
            other => panic!("{other:?}"),
        }
        let v = var(NpyData::F64(array![[1.0, -1.0], [0.0, 1.0]].into_dyn()));
        assert!(format!("{:#}", raw_labels(&v, 2).unwrap_err()).contains("found -1"));
        let v = var(NpyData::U8(array![[1u8], [2]].into_dyn()));
        assert!(format!("{:#}", raw_labels(&v, 3).unwrap_err()).contains("label count mismatch"));
    }

    #[test]
    fn index_lists_are_checked() {
        let v = var(NpyData::F64(array![[1.0, 3.0, 2.0]].into_dyn()));
        assert_eq!(indices(&v, 3, 1).unwrap(), vec![0, 2, 1]);
        assert!(format!("{:#}", indices(&v, 2, 1).unwrap_err()).contains("entry 1 is 3"));
    }
}
