//! `.npy` reading with dtype dispatch and checks, and atomic writing.
//!
//! Every error names the file. Fortran-ordered arrays (what `np.save(x.T)` writes) are returned in
//! C order. Writes go to a temporary file in the target folder and are renamed when complete, so a
//! failed run never leaves a half-written `.npy`.

use anyhow::{anyhow, bail, Context, Result};
use ndarray::{Array2, ArrayD, IxDyn};
use npyz::{NpyFile, Order, WriterBuilder};
use std::fs::File;
use std::io::{BufReader, BufWriter, Seek, Write};
use std::path::Path;

/// An array read from `.npy`, by its stored dtype.
#[derive(Debug, Clone)]
pub enum NpyData {
    F32(ArrayD<f32>),
    F64(ArrayD<f64>),
    I8(ArrayD<i8>),
    U8(ArrayD<u8>),
    /// `|b1`, stored as 0/1 bytes.
    Bool(ArrayD<u8>),
    I16(ArrayD<i16>),
    U16(ArrayD<u16>),
    I32(ArrayD<i32>),
    U32(ArrayD<u32>),
    I64(ArrayD<i64>),
    U64(ArrayD<u64>),
}

impl NpyData {
    pub fn shape(&self) -> &[usize] {
        match self {
            NpyData::F32(a) => a.shape(),
            NpyData::F64(a) => a.shape(),
            NpyData::I8(a) => a.shape(),
            NpyData::U8(a) | NpyData::Bool(a) => a.shape(),
            NpyData::I16(a) => a.shape(),
            NpyData::U16(a) => a.shape(),
            NpyData::I32(a) => a.shape(),
            NpyData::U32(a) => a.shape(),
            NpyData::I64(a) => a.shape(),
            NpyData::U64(a) => a.shape(),
        }
    }
    pub fn dtype_name(&self) -> &'static str {
        match self {
            NpyData::F32(_) => "float32",
            NpyData::F64(_) => "float64",
            NpyData::I8(_) => "int8",
            NpyData::U8(_) => "uint8",
            NpyData::Bool(_) => "bool",
            NpyData::I16(_) => "int16",
            NpyData::U16(_) => "uint16",
            NpyData::I32(_) => "int32",
            NpyData::U32(_) => "uint32",
            NpyData::I64(_) => "int64",
            NpyData::U64(_) => "uint64",
        }
    }
    fn is_integer(&self) -> bool {
        !matches!(self, NpyData::F32(_) | NpyData::F64(_))
    }
    /// Integer array values as i64 (for index files); floats refused.
    pub(crate) fn to_i64(&self) -> Option<ArrayD<i64>> {
        Some(match self {
            NpyData::I8(a) => a.mapv(|v| v as i64),
            NpyData::U8(a) | NpyData::Bool(a) => a.mapv(|v| v as i64),
            NpyData::I16(a) => a.mapv(|v| v as i64),
            NpyData::U16(a) => a.mapv(|v| v as i64),
            NpyData::I32(a) => a.mapv(|v| v as i64),
            NpyData::U32(a) => a.mapv(|v| v as i64),
            NpyData::I64(a) => a.clone(),
            NpyData::U64(a) => a.mapv(|v| v as i64),
            _ => return None,
        })
    }
    /// Values as f64 (features may be stored in any numeric type).
    pub(crate) fn to_f64(&self) -> ArrayD<f64> {
        match self {
            NpyData::F32(a) => a.mapv(|v| v as f64),
            NpyData::F64(a) => a.clone(),
            other => other.to_i64().expect("integer").mapv(|v| v as f64),
        }
    }
}

fn read_typed<T: npyz::Deserialize + Clone, R: std::io::Read>(npy: NpyFile<R>, path: &Path) -> Result<ArrayD<T>> {
    let shape: Vec<usize> = npy.shape().iter().map(|&s| s as usize).collect();
    let order = npy.order();
    let expected: usize = shape.iter().product();
    let data = npy.into_vec::<T>().map_err(|e| {
        anyhow!("{}: the data is truncated or unreadable ({e}); expected {expected} values for shape {shape:?}", path.display())
    })?;
    if data.len() != expected {
        bail!("{}: expected {expected} values for shape {shape:?}, found {}", path.display(), data.len());
    }
    Ok(match order {
        Order::C => ArrayD::from_shape_vec(IxDyn(&shape), data)?,
        Order::Fortran => {
            let rev: Vec<usize> = shape.iter().rev().copied().collect();
            let a = ArrayD::from_shape_vec(IxDyn(&rev), data)?.reversed_axes();
            a.as_standard_layout().into_owned()
        }
    })
}

/// Reads any numeric `.npy` file, keeping its dtype. The data must be exactly as long as the
/// header's shape and dtype say (checked before anything is allocated): a truncated file, or one
/// with bytes after the declared array, is refused.
pub fn read_npy(path: &Path) -> Result<NpyData> {
    let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let file_len = file.metadata().with_context(|| format!("{}: cannot read its size", path.display()))?.len();
    if file.metadata().is_ok_and(|m| m.is_dir()) {
        bail!("{}: is a folder; expected a .npy file", path.display());
    }
    let mut reader = BufReader::new(file);
    let header = npyz::NpyHeader::from_reader(&mut reader).map_err(|e| anyhow!("{}: not a valid .npy file ({e})", path.display()))?;
    let data_start = reader.stream_position().with_context(|| format!("{}: cannot read", path.display()))?;
    let npy = NpyFile::with_header(header, reader);
    check_data_length(path, npy.shape(), npy.dtype().num_bytes(), file_len.saturating_sub(data_start))?;
    let descr = npy.dtype().descr();
    let code = descr.trim_matches('\'').to_string();
    let kind = code.trim_start_matches(['<', '|', '=']).to_string();
    if code.starts_with('>') && kind != "i1" && kind != "u1" && kind != "b1" {
        bail!("{}: big-endian dtype {code} is not supported; save it little-endian", path.display());
    }
    Ok(match kind.as_str() {
        "f4" => NpyData::F32(read_typed(npy, path)?),
        "f8" => NpyData::F64(read_typed(npy, path)?),
        "i1" => NpyData::I8(read_typed(npy, path)?),
        "u1" => NpyData::U8(read_typed(npy, path)?),
        "b1" => NpyData::Bool(read_typed::<bool, _>(npy, path)?.mapv(|b| b as u8)),
        "i2" => NpyData::I16(read_typed(npy, path)?),
        "u2" => NpyData::U16(read_typed(npy, path)?),
        "i4" => NpyData::I32(read_typed(npy, path)?),
        "u4" => NpyData::U32(read_typed(npy, path)?),
        "i8" => NpyData::I64(read_typed(npy, path)?),
        "u8" => NpyData::U64(read_typed(npy, path)?),
        _ => bail!("{}: unsupported dtype {code}", path.display()),
    })
}

/// Refuses a `.npy` whose data length is not exactly the shape's element count times the item size.
fn check_data_length(path: &Path, shape: &[u64], item: Option<usize>, have: u64) -> Result<()> {
    let p = path.display();
    let Some(item) = item else { bail!("{p}: unsupported dtype (variable-size or object items)") };
    let need = shape
        .iter()
        .try_fold(item as u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| anyhow!("{p}: the header's shape {} is too large to exist", shape_str(shape)))?;
    if have < need {
        bail!("{p}: the data is truncated: the header declares shape {} ({need} bytes of data) but {have} bytes follow the header; write the file again", shape_str(shape));
    }
    if have > need {
        bail!(
            "{p}: {} bytes follow the {} array the header declares ({need} bytes of data); the header and the data disagree (a header edited by hand?); write the file again with np.save",
            have - need,
            shape_str(shape)
        );
    }
    Ok(())
}

/// A shape as users write it: `2866×128` (`scalar` for 0-d).
pub fn shape_str<T: std::fmt::Display>(shape: &[T]) -> String {
    if shape.is_empty() {
        return "scalar".into();
    }
    shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("×")
}

fn dims2(path: &Path, what: &str, shape: &[usize]) -> Result<(usize, usize)> {
    if shape.len() != 2 {
        bail!("{}: {what} must be a 2-d array (rows × columns), found shape {}", path.display(), shape_str(shape));
    }
    Ok((shape[0], shape[1]))
}

/// A real matrix (float32 or float64 on disk) as f32, refusing NaN/Inf (naming the first one).
pub fn read_features(path: &Path) -> Result<Array2<f32>> {
    let a = read_float_matrix(path)?;
    if let Some(((i, j), v)) = a.indexed_iter().find(|(_, v)| !v.is_finite()) {
        bail!("{}: features must be finite; found {v} at row {i}, column {j} (of {}×{})", path.display(), a.nrows(), a.ncols());
    }
    Ok(a)
}

/// A real matrix (float32 or float64 on disk) as f32, NaN/Inf allowed: for callers that check
/// finiteness on the rows they use.
pub(crate) fn read_float_matrix(path: &Path) -> Result<Array2<f32>> {
    let data = read_npy(path)?;
    dims2(path, "a feature matrix", data.shape())?;
    Ok(match data {
        NpyData::F32(a) => a.into_dimensionality()?,
        NpyData::F64(a) => a.mapv(|v| v as f32).into_dimensionality()?,
        other => bail!("{}: features must be float32 or float64, found {}", path.display(), other.dtype_name()),
    })
}

/// A 0/1 matrix (uint8, bool or any integer type holding 0/1) as u8.
pub fn read_binary_matrix(path: &Path, what: &str) -> Result<Array2<u8>> {
    let data = read_npy(path)?;
    dims2(path, what, data.shape())?;
    if !data.is_integer() {
        bail!("{}: {what} must be uint8 or bool 0/1, found {}", path.display(), data.dtype_name());
    }
    let a = data.to_i64().unwrap();
    if let Some((idx, v)) = a.indexed_iter().find(|(_, &v)| v != 0 && v != 1) {
        bail!("{}: {what} must be 0 or 1; found {v} at row {}, column {}", path.display(), idx[0], idx[1]);
    }
    Ok(a.mapv(|v| v as u8).into_dimensionality()?)
}

/// A 1-d integer index array as usize, each value checked against `upper` (exclusive).
pub fn read_indices(path: &Path, upper: usize) -> Result<Vec<usize>> {
    let data = read_npy(path)?;
    let a =
        data.to_i64().ok_or_else(|| anyhow!("{}: index arrays must be integers (int64), found {}", path.display(), data.dtype_name()))?;
    if a.ndim() != 1 {
        bail!("{}: index arrays must be 1-d, found shape {}", path.display(), shape_str(a.shape()));
    }
    a.iter()
        .enumerate()
        .map(|(k, &v)| {
            if v < 0 || v as usize >= upper {
                bail!("{}: entry {k} is {v}, outside 0..{upper}", path.display())
            }
            Ok(v as usize)
        })
        .collect()
}

/// Creates a temporary file beside `path`, lets `f` fill it, and renames it into place.
pub fn write_atomic(path: &Path, f: impl FnOnce(&mut BufWriter<&mut File>) -> Result<()>) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
    remove_stale_temporaries(path);
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", path.file_name().and_then(|s| s.to_str()).unwrap_or("out")))
        .suffix(".tmp")
        .tempfile_in(dir)
        .with_context(|| format!("{}: cannot create a temporary file", dir.display()))?;
    {
        let mut w = BufWriter::new(tmp.as_file_mut());
        f(&mut w).with_context(|| format!("writing {}", path.display()))?;
        w.flush().with_context(|| format!("writing {} (is the disk full?)", path.display()))?;
    }
    // tempfile creates 0600; outputs are ordinary files (0644 before the umask).
    set_mode(tmp.path(), 0o644)?;
    tmp.persist(path).map_err(|e| anyhow!("{}: cannot rename into place ({e})", path.display()))?;
    Ok(())
}

/// Removes the temporary files (`.NAME.XXXXXX.tmp`, as [`write_atomic`] names them) that an
/// interrupted write of `path` left beside it. Best effort: a temporary that cannot be removed
/// stays.
pub(crate) fn remove_stale_temporaries(path: &Path) {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let Some(name) = path.file_name().and_then(|s| s.to_str()) else { return };
    let prefix = format!(".{name}.");
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let file = e.file_name();
        let Some(f) = file.to_str() else { continue };
        let Some(mid) = f.strip_prefix(&prefix).and_then(|r| r.strip_suffix(".tmp")) else { continue };
        // tempfile's random part: 6 ASCII letters and digits.
        if mid.len() == 6 && mid.bytes().all(|b| b.is_ascii_alphanumeric()) && e.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Sets the permission bits of a file or folder made through `tempfile` (which makes them private).
pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("{}: cannot set permissions", path.display()))
}

/// Element types cmh writes.
pub trait NpyElem: npyz::Serialize + npyz::AutoSerialize + Copy {}
impl<T: npyz::Serialize + npyz::AutoSerialize + Copy> NpyElem for T {}

/// Writes an n-d array atomically (C order, little-endian).
pub fn write_npy<T: NpyElem, D: ndarray::Dimension>(path: &Path, a: &ndarray::Array<T, D>) -> Result<()> {
    let shape: Vec<u64> = a.shape().iter().map(|&s| s as u64).collect();
    write_atomic(path, |w| {
        let mut writer = npyz::WriteOptions::new().default_dtype().shape(&shape).writer(w).begin_nd()?;
        writer.extend(a.iter().copied())?;
        writer.finish()?;
        Ok(())
    })
}

/// Writes a string atomically (JSON reports, logs that must not be half-written).
pub fn write_text_atomic(path: &Path, text: &str) -> Result<()> {
    write_atomic(path, |w| Ok(w.write_all(text.as_bytes())?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn round_trip_and_fortran_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        let a = array![[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]];
        write_npy(&p, &a).unwrap();
        assert_eq!(read_features(&p).unwrap(), a);
        // Fortran-ordered 2×3 float64 [[1,2,3],[4,5,6]] written by hand (np.asfortranarray).
        let header = "{'descr': '<f8', 'fortran_order': True, 'shape': (2, 3), }";
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        let pad = 64 - (10 + header.len() + 1) % 64;
        let hlen = header.len() + pad + 1;
        bytes.extend_from_slice(&(hlen as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend(std::iter::repeat_n(b' ', pad));
        bytes.push(b'\n');
        for v in [1.0f64, 4.0, 2.0, 5.0, 3.0, 6.0] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let f = dir.path().join("f.npy");
        std::fs::write(&f, &bytes).unwrap();
        assert_eq!(read_features(&f).unwrap(), a);
        // Truncated: drop the last value.
        std::fs::write(&f, &bytes[..bytes.len() - 8]).unwrap();
        let err = format!("{:#}", read_features(&f).unwrap_err());
        assert!(err.contains("f.npy") && err.contains("truncated"), "{err}");
    }

    #[test]
    fn refuses_nan_and_non_binary_labels() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        write_npy(&p, &array![[1.0f32, f32::NAN]]).unwrap();
        let err = format!("{:#}", read_features(&p).unwrap_err());
        assert!(err.contains("x.npy") && err.contains("row 0, column 1"), "{err}");
        let l = dir.path().join("l.npy");
        write_npy(&l, &array![[0u8, 2]]).unwrap();
        assert!(format!("{:#}", read_binary_matrix(&l, "labels").unwrap_err()).contains("0 or 1"));
    }
}
