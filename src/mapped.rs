//! Memory-mapped item arrays: float32 feature matrices and uint8 image stacks of a bundle, read in
//! place from their `.npy` files. Training reads only the rows of the current mini-batch, so a
//! bundle larger than memory trains; the pages a read touched are handed back to the kernel right
//! after it ([`MappedArray::release`]), so the process's resident memory holds at most one batch
//! of them.
//!
//! The file must be C-ordered and little-endian (`<f4` or `|u1`), exactly header + data long, and
//! must not be modified while it is mapped (the usual contract of memory maps).

use crate::search::mapped::parse_header;
use anyhow::{anyhow, bail, Context, Result};
use memmap2::Mmap;
use ndarray::{Array2, Array4};
use rayon::prelude::*;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Element type of a mapped array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MappedKind {
    /// float32 feature vectors (n × d).
    F32,
    /// uint8 images (n × H × W × 3).
    U8,
}

/// One mapped `.npy` array.
pub struct MappedArray {
    path: PathBuf,
    map: Mmap,
    offset: usize,
    shape: Vec<usize>,
    kind: MappedKind,
}

impl std::fmt::Debug for MappedArray {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedArray").field("path", &self.path).field("shape", &self.shape).field("kind", &self.kind).finish()
    }
}

impl MappedArray {
    /// Maps a `.npy` file: `<f4` (features, 2-d) or `|u1` (images, 4-d), C order.
    pub fn open(path: &Path) -> Result<Self> {
        let p = path.display();
        let file = File::open(path).with_context(|| format!("{p}: cannot open"))?;
        // SAFETY: mapped read-only; the file must not be modified while it is mapped (module docs).
        let map = unsafe { Mmap::map(&file) }.with_context(|| format!("{p}: cannot memory-map"))?;
        let h = parse_header(path, &map)?;
        let kind = match h.descr.as_str() {
            "<f4" if cfg!(target_endian = "little") => MappedKind::F32,
            "|u1" | "<u1" | "u1" => MappedKind::U8,
            d => bail!("{p}: a memory-mapped array must be float32 ('<f4', features) or uint8 ('|u1', images), found '{d}'; convert it with numpy's astype"),
        };
        if h.fortran {
            bail!("{p}: the array is stored in Fortran order; save it with np.ascontiguousarray (C order) to memory-map it");
        }
        let elt = if kind == MappedKind::F32 { 4 } else { 1 };
        if h.data_offset % elt != 0 {
            bail!("{p}: the .npy data does not start on a {elt}-byte boundary; save it again with numpy");
        }
        let numel =
            h.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| anyhow!("{p}: shape {:?} overflows", h.shape))?;
        let data_len = numel.checked_mul(elt).ok_or_else(|| anyhow!("{p}: shape {:?} overflows", h.shape))?;
        let have = map.len().saturating_sub(h.data_offset);
        if have != data_len {
            bail!("{p}: the header declares shape {:?} ({data_len} bytes of data), but {have} bytes follow the header", h.shape);
        }
        Ok(Self { path: path.to_path_buf(), map, offset: h.data_offset, shape: h.shape, kind })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn kind(&self) -> MappedKind {
        self.kind
    }
    pub fn nrows(&self) -> usize {
        self.shape.first().copied().unwrap_or(0)
    }
    /// Values per row (d, or H·W·3).
    pub fn row_len(&self) -> usize {
        self.shape.iter().skip(1).product()
    }

    fn bytes(&self) -> &[u8] {
        &self.map[self.offset..]
    }

    /// The float32 data (`F32` arrays only).
    fn f32_data(&self) -> &[f32] {
        debug_assert_eq!(self.kind, MappedKind::F32);
        let b = self.bytes();
        // SAFETY: `open` checked that the data starts on a 4-byte boundary of the page-aligned
        // map, holds exactly n·d little-endian f32 values and that the host is little-endian;
        // every bit pattern is a valid f32.
        unsafe { std::slice::from_raw_parts(b.as_ptr() as *const f32, b.len() / 4) }
    }

    /// Rows `idx` of `data` (rows of [`MappedArray::row_len`] values), copied; the pages read are
    /// released afterwards.
    fn gather<T: Copy>(&self, data: &[T], idx: &[usize]) -> Vec<T> {
        let d = self.row_len();
        let mut out = Vec::with_capacity(idx.len() * d);
        for &i in idx {
            out.extend_from_slice(&data[i * d..(i + 1) * d]);
        }
        self.release();
        out
    }

    /// The float32 matrix, read in place (pages are faulted in as they are read; call
    /// [`MappedArray::release`] after a pass).
    pub fn features_view(&self) -> Result<ndarray::ArrayView2<'_, f32>> {
        if self.kind != MappedKind::F32 || self.shape.len() != 2 {
            bail!("{}: holds {:?} of shape {:?}, not a float32 feature matrix", self.path.display(), self.kind, self.shape);
        }
        Ok(ndarray::ArrayView2::from_shape((self.shape[0], self.shape[1]), self.f32_data())?)
    }

    /// Rows `idx` of a float32 matrix.
    pub fn features(&self, idx: &[usize]) -> Result<Array2<f32>> {
        if self.kind != MappedKind::F32 || self.shape.len() != 2 {
            bail!("{}: holds {:?} of shape {:?}, not a float32 feature matrix", self.path.display(), self.kind, self.shape);
        }
        let d = self.row_len();
        Ok(Array2::from_shape_vec((idx.len(), d), self.gather(self.f32_data(), idx))?)
    }

    /// Rows `idx` of a uint8 image stack.
    pub fn images(&self, idx: &[usize]) -> Result<Array4<u8>> {
        if self.kind != MappedKind::U8 || self.shape.len() != 4 {
            bail!("{}: holds {:?} of shape {:?}, not a uint8 image stack", self.path.display(), self.kind, self.shape);
        }
        Ok(Array4::from_shape_vec((idx.len(), self.shape[1], self.shape[2], self.shape[3]), self.gather(self.bytes(), idx))?)
    }

    /// Refuses NaN or infinite features, naming the file and the first bad position; one parallel
    /// pass over the file, releasing its pages as it goes.
    pub fn check_finite(&self) -> Result<()> {
        if self.kind != MappedKind::F32 {
            return Ok(());
        }
        let (d, data) = (self.row_len().max(1), self.f32_data());
        let rows_per_chunk = ((1usize << 24) / (4 * d)).max(1);
        let bad = data.par_chunks(rows_per_chunk * d).enumerate().find_map_first(|(c, chunk)| {
            let hit = chunk.iter().position(|v| !v.is_finite()).map(|p| (c * rows_per_chunk + p / d, p % d, chunk[p]));
            self.release();
            hit
        });
        if let Some((i, j, v)) = bad {
            bail!("{}: features must be finite; found {v} at row {i}, column {j} (of {}×{d})", self.path.display(), self.nrows());
        }
        Ok(())
    }

    /// Drops the pages read so far from this process's resident memory (they stay in the page
    /// cache and are read again from it or the disk when needed).
    pub fn release(&self) {
        #[cfg(unix)]
        {
            // SAFETY: the map is a read-only shared file mapping: dropping its pages loses nothing,
            // later reads fault them in again from the file.
            let _ = unsafe { self.map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
        }
    }
}

/// Rows of a mapped array: all of them, or a selection (a split's items), in order.
#[derive(Clone, Debug)]
pub struct MappedRows {
    array: Arc<MappedArray>,
    rows: Option<Arc<[usize]>>,
}

impl MappedRows {
    pub fn new(array: Arc<MappedArray>) -> Self {
        Self { array, rows: None }
    }
    pub fn array(&self) -> &MappedArray {
        &self.array
    }
    pub fn len(&self) -> usize {
        self.rows.as_ref().map_or(self.array.nrows(), |r| r.len())
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// True for a uint8 image stack, false for float32 features.
    pub fn is_images(&self) -> bool {
        self.array.kind == MappedKind::U8
    }
    /// Rows `idx` of this selection (still mapped).
    pub fn select(&self, idx: &[usize]) -> Self {
        let rows: Arc<[usize]> = match &self.rows {
            Some(r) => idx.iter().map(|&i| r[i]).collect(),
            None => idx.into(),
        };
        Self { array: self.array.clone(), rows: Some(rows) }
    }
    /// The file rows of this selection, in order.
    pub fn all_file_rows(&self) -> Vec<usize> {
        match &self.rows {
            Some(r) => r.to_vec(),
            None => (0..self.array.nrows()).collect(),
        }
    }
    fn file_rows(&self, idx: &[usize]) -> Vec<usize> {
        match &self.rows {
            Some(r) => idx.iter().map(|&i| r[i]).collect(),
            None => idx.to_vec(),
        }
    }
    /// Features of rows `idx` (positions in this selection), read from the file.
    pub fn features(&self, idx: &[usize]) -> Result<Array2<f32>> {
        self.array.features(&self.file_rows(idx))
    }
    /// Images of rows `idx` (positions in this selection), read from the file.
    pub fn images(&self, idx: &[usize]) -> Result<Array4<u8>> {
        self.array.images(&self.file_rows(idx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::npy::write_npy;

    #[test]
    fn mapped_rows_read_what_was_written() {
        let d = tempfile::tempdir().unwrap();
        let x = Array2::from_shape_fn((7, 3), |(i, j)| (10 * i + j) as f32);
        let p = d.path().join("x.npy");
        write_npy(&p, &x).unwrap();
        let a = Arc::new(MappedArray::open(&p).unwrap());
        assert_eq!((a.shape(), a.kind()), (&[7usize, 3][..], MappedKind::F32));
        a.check_finite().unwrap();
        let all = MappedRows::new(a.clone());
        assert_eq!(all.features(&[6, 0, 2]).unwrap(), x.select(ndarray::Axis(0), &[6, 0, 2]));
        let sel = all.select(&[5, 1, 3]);
        assert_eq!(sel.len(), 3);
        assert_eq!(sel.select(&[2, 0]).features(&[0, 1]).unwrap(), x.select(ndarray::Axis(0), &[3, 5]));
        assert!(sel.images(&[0]).is_err(), "features are not images");
        let im = Array4::from_shape_fn((4, 2, 2, 3), |(i, y, x, c)| (i * 12 + y * 6 + x * 3 + c) as u8);
        let pi = d.path().join("im.npy");
        write_npy(&pi, &im).unwrap();
        let rows = MappedRows::new(Arc::new(MappedArray::open(&pi).unwrap()));
        assert!(rows.is_images());
        assert_eq!(rows.images(&[3, 1]).unwrap(), im.select(ndarray::Axis(0), &[3, 1]));
        // A non-finite value is found, with its position; other dtypes and damaged files are refused.
        let mut bad = x.clone();
        bad[[4, 2]] = f32::INFINITY;
        write_npy(&p, &bad).unwrap();
        let e = format!("{:#}", MappedArray::open(&p).unwrap().check_finite().unwrap_err());
        assert!(e.contains("x.npy") && e.contains("row 4, column 2"), "{e}");
        write_npy(&p, &x.mapv(|v| v as f64)).unwrap();
        assert!(format!("{:#}", MappedArray::open(&p).unwrap_err()).contains("float32"));
        write_npy(&p, &x).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 4]).unwrap();
        assert!(format!("{:#}", MappedArray::open(&p).unwrap_err()).contains("bytes follow the header"));
    }
}
