//! Packed binary codes: the one data structure for codes in cmh.
//!
//! Layout = `numpy.packbits(bits, axis=1)`: row i occupies `stride = ceil(bits/8)` bytes; bit j of a
//! code is bit `7 - j % 8` (most significant first) of byte `j / 8`; padding bits are zero. A packed
//! `.npy` of dtype uint8 is therefore this structure byte for byte, and `np.unpackbits` in Python
//! gives back the same bits. Bit value 1 stands for code value +1, 0 for -1.
//!
//! Hamming distance does not depend on the order of bits within a byte, so kernels XOR whole
//! little-endian words read straight from these bytes.

use anyhow::{bail, Context, Result};
use ndarray::{Array2, ArrayView2};
use std::path::Path;

/// Owned packed codes (n items × `bits` bits).
///
/// ```
/// use cmh::codes::BinaryCodes;
/// use ndarray::array;
///
/// // sgn with sgn(0) = +1; bit j is bit 7 - j % 8 of byte j / 8 (numpy.packbits order).
/// let codes = BinaryCodes::from_signs(array![[0.5, -1.0, 0.0, 2.0, -3.0, -0.5, -0.1, -2.0, 1.0]].view());
/// assert_eq!(codes.as_bytes(), &[0b1011_0000, 0b1000_0000]);
/// assert_eq!(codes.to_pm1(), array![[1i8, -1, 1, 1, -1, -1, -1, -1, 1]]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BinaryCodes {
    n: usize,
    bits: usize,
    data: Vec<u8>,
}

/// Borrowed packed codes: an owned [`BinaryCodes`], or a memory-mapped `.npy` file.
#[derive(Clone, Copy, Debug)]
pub struct CodesRef<'a> {
    pub n: usize,
    pub bits: usize,
    /// Row `i` is `data[i * stride .. (i + 1) * stride]`, `stride = ceil(bits / 8)`.
    pub data: &'a [u8],
}

pub(crate) fn stride_of(bits: usize) -> usize {
    bits.div_ceil(8)
}

impl<'a> CodesRef<'a> {
    pub fn new(n: usize, bits: usize, data: &'a [u8]) -> Result<Self> {
        if bits == 0 {
            bail!("codes must have at least one bit");
        }
        if data.len() != n * stride_of(bits) {
            bail!("packed codes: expected {} bytes for {n} codes of {bits} bits, found {}", n * stride_of(bits), data.len());
        }
        Ok(Self { n, bits, data })
    }
    #[inline]
    pub fn stride(&self) -> usize {
        stride_of(self.bits)
    }
    #[inline]
    pub fn row(&self, i: usize) -> &'a [u8] {
        let s = self.stride();
        &self.data[i * s..(i + 1) * s]
    }
    pub fn to_owned(&self) -> BinaryCodes {
        BinaryCodes { n: self.n, bits: self.bits, data: self.data.to_vec() }
    }
}

#[inline]
fn set_bit(row: &mut [u8], j: usize) {
    row[j / 8] |= 0x80 >> (j % 8);
}

#[inline]
fn get_bit(row: &[u8], j: usize) -> bool {
    row[j / 8] & (0x80 >> (j % 8)) != 0
}

impl BinaryCodes {
    /// All-zero (all -1) codes.
    pub fn zeros(n: usize, bits: usize) -> Self {
        Self { n, bits, data: vec![0; n * stride_of(bits)] }
    }

    /// Packs bytes already in `numpy.packbits` layout.
    pub fn from_packed(n: usize, bits: usize, data: Vec<u8>) -> Result<Self> {
        CodesRef::new(n, bits, &data)?;
        let mut c = Self { n, bits, data };
        c.clear_padding();
        Ok(c)
    }

    fn clear_padding(&mut self) {
        let rem = self.bits % 8;
        if rem != 0 {
            let mask = 0xffu8 << (8 - rem);
            let s = self.stride();
            for i in 0..self.n {
                self.data[i * s + s - 1] &= mask;
            }
        }
    }

    /// sign(x): entries `>= 0` become +1 (bit 1), negative entries -1 (bit 0). The `>= 0` tie rule
    /// keeps every code binary (MATLAB's `sign(0) = 0` would leave a third value).
    pub fn from_signs<T: Copy + PartialOrd + Default>(x: ArrayView2<T>) -> Self {
        let (n, bits) = x.dim();
        let mut c = Self::zeros(n, bits);
        let s = c.stride();
        for (i, row) in x.outer_iter().enumerate() {
            let out = &mut c.data[i * s..(i + 1) * s];
            for (j, &v) in row.iter().enumerate() {
                if v >= T::default() {
                    set_bit(out, j);
                }
            }
        }
        c
    }

    /// From an int8 matrix of ±1 values; anything else is an error naming the position.
    pub fn from_pm1(x: ArrayView2<i8>) -> Result<Self> {
        if let Some(((i, j), v)) = x.indexed_iter().find(|(_, &v)| v != 1 && v != -1) {
            bail!("int8 codes must be +1 or -1: found {v} at row {i}, column {j}");
        }
        Ok(Self::from_signs(x))
    }

    /// From a 0/1 matrix (bool or uint8 0/1 unpacked).
    pub fn from_bits(x: ArrayView2<u8>) -> Result<Self> {
        if let Some(((i, j), v)) = x.indexed_iter().find(|(_, &v)| v > 1) {
            bail!("0/1 codes must be 0 or 1: found {v} at row {i}, column {j}");
        }
        let (n, bits) = x.dim();
        let mut c = Self::zeros(n, bits);
        let s = c.stride();
        for (i, row) in x.outer_iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                if v == 1 {
                    set_bit(&mut c.data[i * s..(i + 1) * s], j);
                }
            }
        }
        Ok(c)
    }

    pub fn len(&self) -> usize {
        self.n
    }
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
    pub fn bits(&self) -> usize {
        self.bits
    }
    pub fn stride(&self) -> usize {
        stride_of(self.bits)
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.data
    }
    pub fn view(&self) -> CodesRef<'_> {
        CodesRef { n: self.n, bits: self.bits, data: &self.data }
    }
    pub fn row(&self, i: usize) -> &[u8] {
        let s = self.stride();
        &self.data[i * s..(i + 1) * s]
    }
    pub fn bit(&self, i: usize, j: usize) -> bool {
        get_bit(self.row(i), j)
    }

    /// ±1 matrix (n × bits), int8.
    pub fn to_pm1(&self) -> Array2<i8> {
        Array2::from_shape_fn((self.n, self.bits), |(i, j)| if self.bit(i, j) { 1 } else { -1 })
    }
    /// ±1 matrix as f64 (for the numerical methods).
    pub fn to_pm1_f64(&self) -> Array2<f64> {
        Array2::from_shape_fn((self.n, self.bits), |(i, j)| if self.bit(i, j) { 1.0 } else { -1.0 })
    }
    /// Packed bytes (n × ceil(bits/8)), `numpy.packbits` order.
    pub fn to_packed(&self) -> Array2<u8> {
        Array2::from_shape_vec((self.n, self.stride()), self.data.clone()).expect("shape")
    }

    pub fn select_rows(&self, idx: &[usize]) -> Self {
        let s = self.stride();
        let mut data = Vec::with_capacity(idx.len() * s);
        for &i in idx {
            data.extend_from_slice(self.row(i));
        }
        Self { n: idx.len(), bits: self.bits, data }
    }

    /// Reads a code file: int8 ±1 (n × bits), bool 0/1 (n × bits), or uint8 packed
    /// (n × bits/8; `bits` then defaults to 8 × columns unless given).
    pub fn load_npy(path: &Path, bits: Option<usize>) -> Result<Self> {
        use crate::npy::{read_npy, NpyData};
        let arr = read_npy(path)?;
        let shape = arr.shape().to_vec();
        if shape.len() != 2 {
            bail!("{}: codes must be a 2-d array (items × bits), found shape {}", path.display(), crate::npy::shape_str(&shape));
        }
        let (n, cols) = (shape[0], shape[1]);
        if cols == 0 {
            bail!(
                "{}: codes have 0 columns ({n}×0 {}); a code needs at least one bit: write n × bits int8 ±1, bool 0/1, or packed uint8",
                path.display(),
                arr.dtype_name()
            );
        }
        let codes = match arr {
            NpyData::I8(a) => Self::from_pm1(a.view().into_dimensionality().unwrap()),
            NpyData::Bool(a) => Self::from_bits(a.view().into_dimensionality().unwrap()),
            NpyData::U8(a) => {
                check_not_unpacked(path, a.as_slice().unwrap_or(&[]), cols)?;
                let bits = bits.unwrap_or(cols * 8);
                if stride_of(bits) != cols {
                    bail!("{}: packed uint8 codes of {bits} bits need {} columns, found {cols}", path.display(), stride_of(bits));
                }
                Self::from_packed(n, bits, a.into_raw_vec_and_offset().0)
            }
            other => bail!(
                "{}: codes must be int8 (±1), bool (0/1) or uint8 (numpy.packbits); found dtype {}",
                path.display(),
                other.dtype_name()
            ),
        }
        .with_context(|| format!("reading codes from {}", path.display()))?;
        if let Some(b) = bits {
            if b != codes.bits {
                bail!("{}: holds {}-bit codes, expected {b}-bit codes (the length given or of the other code file); use codes of one model and length", path.display(), codes.bits);
            }
        }
        Ok(codes)
    }

    /// Writes `<stem>.npy` (int8 ±1) and `<stem>_packed.npy` (uint8 packbits) into `dir`, atomically.
    pub fn save_npy(&self, dir: &Path, stem: &str) -> Result<()> {
        crate::npy::write_npy(&dir.join(format!("{stem}.npy")), &self.to_pm1())?;
        crate::npy::write_npy(&dir.join(format!("{stem}_packed.npy")), &self.to_packed())?;
        Ok(())
    }
}

/// Bytes of a uint8 code file that [`check_not_unpacked`] looks at (the first rows).
pub(crate) const UNPACKED_PROBE_BYTES: usize = 1 << 16;

/// Refuses a uint8 code file that holds unpacked 0/1 bits instead of `numpy.packbits` rows: when
/// the first [`UNPACKED_PROBE_BYTES`] bytes (at least 8 of them) are all 0 or 1 and some are 1. Packed
/// codes of any real code set have other byte values (each byte is 0 or 1 with chance 2/256).
pub(crate) fn check_not_unpacked(path: &Path, data: &[u8], cols: usize) -> Result<()> {
    let probe = &data[..data.len().min(UNPACKED_PROBE_BYTES)];
    if probe.len() >= 8 && probe.iter().all(|&b| b <= 1) && probe.contains(&1) {
        bail!(
            "{}: uint8 codes are read as numpy.packbits rows ({cols} columns = {} bits), but every byte is 0 or 1, \
             which looks like unpacked bits; save unpacked codes as bool (x.astype(bool)) or int8 ±1, or pack them with np.packbits(x, axis=1)",
            path.display(),
            cols * 8
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn packbits_layout_matches_numpy() {
        // np.packbits([[1,0,1,1,0,0,0,0, 1]]) == [[176, 128]]
        let b = array![[1u8, 0, 1, 1, 0, 0, 0, 0, 1]];
        let c = BinaryCodes::from_bits(b.view()).unwrap();
        assert_eq!(c.as_bytes(), &[176, 128]);
        assert_eq!(c.to_pm1(), array![[1i8, -1, 1, 1, -1, -1, -1, -1, 1]]);
    }

    #[test]
    fn signs_round_trip_and_zero_is_plus_one() {
        let x = array![[0.5f32, -0.1, 0.0], [-2.0, 3.0, -0.0]];
        let c = BinaryCodes::from_signs(x.view());
        assert_eq!(c.to_pm1(), array![[1i8, -1, 1], [-1, 1, 1]]);
        let back = BinaryCodes::from_pm1(c.to_pm1().view()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn rejects_non_binary_values() {
        assert!(BinaryCodes::from_pm1(array![[1i8, 0]].view()).is_err());
        assert!(BinaryCodes::from_bits(array![[2u8, 0]].view()).is_err());
    }

    #[test]
    fn padding_bits_are_cleared() {
        let c = BinaryCodes::from_packed(1, 4, vec![0xff]).unwrap();
        assert_eq!(c.as_bytes(), &[0xf0]);
    }
}
