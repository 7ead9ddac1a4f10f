//! Memory-mapped code files: a packed uint8 `.npy` is searched in place (no copy, no parse of
//! the data), so a database larger than memory costs only the pages being scanned.
//!
//! The `.npy` header is parsed here (format versions 1–3): dtype must be `|u1`, the array 2-d and
//! C-ordered, and the file exactly `header + rows × columns` bytes long.

use crate::codes::{stride_of, BinaryCodes, CodesRef};
use anyhow::{anyhow, bail, Context, Result};
use memmap2::Mmap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// A packed uint8 code file mapped into memory.
///
/// The file must not be modified while it is mapped (the usual contract of memory maps).
/// Padding bits beyond `bits` in each row are ignored by the search kernels.
pub struct MappedCodes {
    path: PathBuf,
    map: Mmap,
    offset: usize,
    n: usize,
    bits: usize,
}

impl std::fmt::Debug for MappedCodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedCodes").field("path", &self.path).field("n", &self.n).field("bits", &self.bits).finish()
    }
}

pub(crate) struct NpyHeader {
    pub descr: String,
    pub fortran: bool,
    pub shape: Vec<usize>,
    pub data_offset: usize,
}

fn is_u1(descr: &str) -> bool {
    matches!(descr, "|u1" | "<u1" | ">u1" | "=u1" | "u1")
}

/// The text after `'key':` in a header dict.
fn dict_value<'a>(h: &'a str, key: &str) -> Option<&'a str> {
    for q in ['\'', '"'] {
        let pat = format!("{q}{key}{q}");
        if let Some(p) = h.find(&pat) {
            let rest = h[p + pat.len()..].trim_start();
            return rest.strip_prefix(':').map(|r| r.trim_start());
        }
    }
    None
}

/// Parses a `.npy` header from the file's first bytes.
pub(crate) fn parse_header(path: &Path, bytes: &[u8]) -> Result<NpyHeader> {
    let p = path.display();
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        bail!("{p}: not a .npy file (missing the \\x93NUMPY magic)");
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                bail!("{p}: truncated .npy header");
            }
            (u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize, 12)
        }
        v => bail!("{p}: unsupported .npy format version {v}"),
    };
    if bytes.len() < start + hlen {
        bail!("{p}: truncated .npy header (declares {hlen} bytes, file holds {})", bytes.len().saturating_sub(start));
    }
    let h = std::str::from_utf8(&bytes[start..start + hlen]).map_err(|_| anyhow!("{p}: the .npy header is not text"))?;
    let descr_v = dict_value(h, "descr").ok_or_else(|| anyhow!("{p}: the .npy header has no 'descr'"))?;
    let quote = descr_v.chars().next().filter(|c| *c == '\'' || *c == '"');
    let descr = match quote {
        Some(q) => descr_v[1..].split(q).next().unwrap_or("").to_string(),
        None => bail!("{p}: unsupported structured dtype in the .npy header"),
    };
    let fortran_v = dict_value(h, "fortran_order").ok_or_else(|| anyhow!("{p}: the .npy header has no 'fortran_order'"))?;
    let fortran = if fortran_v.starts_with("True") {
        true
    } else if fortran_v.starts_with("False") {
        false
    } else {
        bail!("{p}: unreadable 'fortran_order' in the .npy header");
    };
    let shape_v = dict_value(h, "shape").ok_or_else(|| anyhow!("{p}: the .npy header has no 'shape'"))?;
    let inner =
        shape_v.strip_prefix('(').and_then(|s| s.split(')').next()).ok_or_else(|| anyhow!("{p}: unreadable 'shape' in the .npy header"))?;
    let shape = inner
        .split(',')
        .map(|s| s.trim().trim_end_matches('L'))
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| anyhow!("{p}: unreadable 'shape' entry {s:?} in the .npy header")))
        .collect::<Result<Vec<_>>>()?;
    Ok(NpyHeader { descr, fortran, shape, data_offset: start + hlen })
}

/// Reads just enough of a file to parse its header.
fn read_head(path: &Path) -> Result<Vec<u8>> {
    let mut f = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut buf = vec![0u8; 12];
    let got = read_up_to(&mut f, &mut buf)?;
    buf.truncate(got);
    if got >= 10 && &buf[..6] == b"\x93NUMPY" {
        let hlen = match buf[6] {
            1 => u16::from_le_bytes([buf[8], buf[9]]) as usize + 10,
            2 | 3 if got >= 12 => u32::from_le_bytes(buf[8..12].try_into().unwrap()) as usize + 12,
            _ => 0,
        };
        // A header never extends past the end of the file: a damaged length allocates nothing.
        let file_len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if hlen > buf.len() && hlen < (1 << 24) && hlen as u64 <= file_len {
            let old = buf.len();
            buf.resize(hlen, 0);
            let more = read_up_to(&mut f, &mut buf[old..])?;
            buf.truncate(old + more);
        }
    }
    Ok(buf)
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        let k = f.read(&mut buf[got..])?;
        if k == 0 {
            break;
        }
        got += k;
    }
    Ok(got)
}

impl MappedCodes {
    /// Maps a packed uint8 `.npy` (n × ceil(bits/8), `numpy.packbits` rows). `bits` defaults to
    /// 8 × columns.
    pub fn open(path: &Path, bits: Option<usize>) -> Result<Self> {
        let p = path.display();
        let file = File::open(path).with_context(|| format!("{p}: cannot open"))?;
        let file_len = file.metadata().with_context(|| format!("{p}: cannot stat"))?.len() as usize;
        if file_len < 10 {
            bail!("{p}: not a .npy file ({file_len} bytes)");
        }
        // SAFETY: mapped read-only; the caller must not modify the file while it is mapped.
        let map = unsafe { Mmap::map(&file) }.with_context(|| format!("{p}: cannot memory-map"))?;
        let h = parse_header(path, &map)?;
        if !is_u1(&h.descr) {
            bail!(
                "{p}: packed codes must have dtype uint8 (numpy.packbits rows), found '{}'; int8 ±1 and bool 0/1 files are read with open_codes",
                h.descr
            );
        }
        if h.fortran {
            bail!("{p}: the array is stored in Fortran order; save it with np.ascontiguousarray (C order)");
        }
        if h.shape.len() != 2 {
            bail!("{p}: codes must be a 2-d array (items × bytes), found shape {:?}", h.shape);
        }
        let (n, cols) = (h.shape[0], h.shape[1]);
        if cols == 0 {
            bail!("{p}: codes have zero columns");
        }
        let bits = match bits {
            Some(0) => bail!("{p}: the code length must be at least 1 bit"),
            Some(b) if stride_of(b) != cols => {
                bail!("{p}: packed uint8 codes of {b} bits need {} columns, found {cols}", stride_of(b))
            }
            Some(b) => b,
            None => cols * 8,
        };
        let data_len = n.checked_mul(cols).ok_or_else(|| anyhow!("{p}: shape {:?} overflows", h.shape))?;
        let have = file_len - h.data_offset.min(file_len);
        if have < data_len {
            bail!(
                "{p}: truncated file: the header declares {n} × {cols} uint8 codes ({data_len} bytes of data) but only {have} bytes follow the header"
            );
        }
        if have > data_len {
            bail!("{p}: {} unexpected bytes after the {n} × {cols} codes the header declares", have - data_len);
        }
        crate::codes::check_not_unpacked(path, &map[h.data_offset..h.data_offset + data_len], cols)?;
        #[cfg(unix)]
        let _ = map.advise(memmap2::Advice::Sequential);
        Ok(Self { path: path.to_path_buf(), map, offset: h.data_offset, n, bits })
    }

    pub fn view(&self) -> CodesRef<'_> {
        let len = self.n * stride_of(self.bits);
        CodesRef { n: self.n, bits: self.bits, data: &self.map[self.offset..self.offset + len] }
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
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A code file opened for search: packed uint8 files are memory-mapped, int8 ±1 and bool 0/1
/// files (and Fortran-ordered ones) are loaded with [`BinaryCodes::load_npy`].
#[derive(Debug)]
pub enum CodeFile {
    Mapped(MappedCodes),
    Owned(BinaryCodes),
}

impl CodeFile {
    pub fn view(&self) -> CodesRef<'_> {
        match self {
            CodeFile::Mapped(m) => m.view(),
            CodeFile::Owned(c) => c.view(),
        }
    }
}

/// Opens a code file in any of cmh's formats (see [`CodeFile`]).
pub fn open_codes(path: &Path, bits: Option<usize>) -> Result<CodeFile> {
    let head = read_head(path)?;
    match parse_header(path, &head) {
        Ok(h) if is_u1(&h.descr) && !h.fortran => Ok(CodeFile::Mapped(MappedCodes::open(path, bits)?)),
        _ => Ok(CodeFile::Owned(BinaryCodes::load_npy(path, bits)?)),
    }
}
