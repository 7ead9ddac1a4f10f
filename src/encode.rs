//! Streaming encoding: features in, codes out, in chunks, with memory bounded by the chunk size.
//!
//! A C-ordered float32/float64 `.npy` is memory-mapped and read a chunk of rows at a time; pages
//! already encoded are released from the process (`MADV_DONTNEED`; they stay in the file), so the
//! resident set does not grow with the number of items. Each chunk is encoded by the model and
//! appended to the output files, which are written under temporary names and renamed when every
//! item is encoded: an interrupted or failed run leaves no partial output. Other `.npy` layouts
//! (Fortran order, big-endian) are read whole.

use crate::codes::BinaryCodes;
use crate::method::{HashModel, View};
use anyhow::{anyhow, bail, Context, Result};
use memmap2::{Mmap, UncheckedAdvice};
use ndarray::Array2;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Settings of [`encode_file`].
#[derive(Clone, Debug)]
pub struct EncodeOptions {
    /// Items per chunk (default 65,536).
    pub chunk: usize,
    /// Write only `STEM_packed.npy` (uint8 packbits rows), not `STEM.npy` (int8 ±1, 8× larger).
    pub packed_only: bool,
    /// Show a progress bar.
    pub progress: bool,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        Self { chunk: 65_536, packed_only: false, progress: false }
    }
}

/// What [`encode_file`] wrote.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EncodeSummary {
    pub items: usize,
    pub bits: usize,
    pub files: Vec<PathBuf>,
}

/// Features of one chunk of rows.
enum Source {
    Mapped { map: Mmap, offset: usize, n: usize, d: usize, f64: bool },
    Loaded(Array2<f32>),
}

impl Source {
    fn open(path: &Path) -> Result<Self> {
        let p = path.display();
        let file = File::open(path).with_context(|| format!("{p}: cannot open"))?;
        // SAFETY: mapped read-only; the file must not change while it is encoded.
        let map = unsafe { Mmap::map(&file) }.with_context(|| format!("{p}: cannot memory-map"))?;
        let h = crate::search::mapped::parse_header(path, &map)?;
        let f64 = match h.descr.as_str() {
            "<f4" => false,
            "<f8" => true,
            _ => return Ok(Source::Loaded(crate::npy::read_features(path)?)),
        };
        if h.fortran {
            return Ok(Source::Loaded(crate::npy::read_features(path)?));
        }
        if h.shape.len() != 2 {
            bail!("{p}: features must be a 2-d array (items × dimensions), found shape {:?}", h.shape);
        }
        let (n, d) = (h.shape[0], h.shape[1]);
        let need = n.checked_mul(d).and_then(|v| v.checked_mul(if f64 { 8 } else { 4 })).ok_or_else(|| anyhow!("{p}: shape overflows"))?;
        let have = map.len().saturating_sub(h.data_offset);
        if have != need {
            bail!(
                "{p}: the header declares {n} × {d} {} values ({need} bytes) but {have} bytes follow it",
                if f64 { "float64" } else { "float32" }
            );
        }
        let _ = map.advise(memmap2::Advice::Sequential);
        Ok(Source::Mapped { map, offset: h.data_offset, n, d, f64 })
    }

    fn len(&self) -> usize {
        match self {
            Source::Mapped { n, .. } => *n,
            Source::Loaded(a) => a.nrows(),
        }
    }

    /// Rows `r0..r1` as f32, refusing NaN/Inf with the item and column.
    fn chunk(&self, path: &Path, r0: usize, r1: usize) -> Result<Array2<f32>> {
        let x = match self {
            Source::Loaded(a) => a.slice(ndarray::s![r0..r1, ..]).to_owned(),
            Source::Mapped { map, offset, d, f64, .. } => {
                let w = if *f64 { 8 } else { 4 };
                let (a, b) = (offset + r0 * d * w, offset + r1 * d * w);
                let bytes = &map[a..b];
                let vals: Vec<f32> = if *f64 {
                    bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect()
                } else {
                    bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
                };
                // Release the pages just read (whole pages only; they remain in the file).
                let page = 4096;
                let (pa, pb) = (a.div_ceil(page) * page, b / page * page);
                if pb > pa {
                    // SAFETY: a read-only file mapping; dropped pages are read again from the file
                    // if touched, and no reference into them outlives this call.
                    let _ = unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, pa, pb - pa) };
                }
                Array2::from_shape_vec((r1 - r0, *d), vals)?
            }
        };
        if let Some(((i, j), v)) = x.indexed_iter().find(|(_, v)| !v.is_finite()) {
            bail!("{}: features must be finite; found {v} at row {}, column {j}", path.display(), r0 + i);
        }
        Ok(x)
    }
}

/// An `.npy` file written row chunk by row chunk under a temporary name.
struct NpyOut {
    tmp: tempfile::NamedTempFile,
    dest: PathBuf,
}

impl NpyOut {
    fn create(dest: &Path, descr: &str, rows: usize, cols: usize) -> Result<(Self, BufWriter<File>)> {
        let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
        crate::npy::remove_stale_temporaries(dest);
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{}.", dest.file_name().and_then(|s| s.to_str()).unwrap_or("out")))
            .suffix(".tmp")
            .tempfile_in(dir)
            .with_context(|| format!("{}: cannot create a temporary file", dir.display()))?;
        let mut w = BufWriter::with_capacity(1 << 20, tmp.reopen()?);
        // .npy format 1.0: magic, version, header length, header padded so data starts at a
        // multiple of 64 bytes.
        let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
        let pad = 64 - (10 + header.len() + 1) % 64;
        header.extend(std::iter::repeat_n(' ', pad % 64));
        header.push('\n');
        let write = |w: &mut BufWriter<File>| -> std::io::Result<()> {
            w.write_all(b"\x93NUMPY\x01\x00")?;
            w.write_all(&(header.len() as u16).to_le_bytes())?;
            w.write_all(header.as_bytes())
        };
        write(&mut w).with_context(|| format!("writing {} (is the disk full?)", dest.display()))?;
        Ok((Self { tmp, dest: dest.to_path_buf() }, w))
    }

    fn finish(self, w: BufWriter<File>) -> Result<()> {
        let f = w.into_inner().map_err(|e| anyhow!("writing {}: {} (is the disk full?)", self.dest.display(), e.error()))?;
        f.sync_all().ok();
        crate::npy::set_mode(self.tmp.path(), 0o644)?;
        self.tmp.persist(&self.dest).map_err(|e| anyhow!("{}: cannot rename into place ({e})", self.dest.display()))?;
        Ok(())
    }
}

/// Encodes the features in `features` (items × dimensions, float32/float64 `.npy`) with `model`
/// for `modality`, writing `STEM.npy` (int8 ±1, unless `packed_only`) and `STEM_packed.npy`
/// (uint8 packbits rows) where `out_stem` is `DIR/STEM` (a trailing `.npy` is dropped).
pub fn encode_file(
    model: &dyn HashModel,
    modality: usize,
    features: &Path,
    out_stem: &Path,
    opts: &EncodeOptions,
) -> Result<EncodeSummary> {
    let stem = out_stem.file_name().and_then(|s| s.to_str()).ok_or_else(|| anyhow!("{}: needs a file stem", out_stem.display()))?;
    let stem = stem.trim_end_matches(".npy");
    let dir = out_stem.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let src = Source::open(features)?;
    let (n, bits) = (src.len(), model.bits());
    let stride = bits.div_ceil(8);
    let packed_path = dir.join(format!("{stem}_packed.npy"));
    let pm1_path = dir.join(format!("{stem}.npy"));
    let (packed, mut wp) = NpyOut::create(&packed_path, "|u1", n, stride)?;
    let mut pm1 = if opts.packed_only { None } else { Some(NpyOut::create(&pm1_path, "|i1", n, bits)?) };
    let pb = if opts.progress {
        let pb = indicatif::ProgressBar::new(n as u64);
        pb.set_style(indicatif::ProgressStyle::with_template("encode {bar:40} {pos}/{len} items, {elapsed}, eta {eta}").unwrap());
        pb
    } else {
        indicatif::ProgressBar::hidden()
    };
    let chunk = opts.chunk.max(1);
    for r0 in (0..n).step_by(chunk) {
        let r1 = (r0 + chunk).min(n);
        let x = src.chunk(features, r0, r1)?;
        let codes: BinaryCodes =
            model.encode(modality, &View::Features(x)).with_context(|| format!("encoding items {r0}..{r1} of {}", features.display()))?;
        if codes.len() != r1 - r0 || codes.bits() != bits {
            bail!("the model returned {} codes of {} bits for {} items (expected {bits} bits)", codes.len(), codes.bits(), r1 - r0);
        }
        let full = |p: &Path| format!("writing {} (is the disk full?)", p.display());
        wp.write_all(codes.as_bytes()).with_context(|| full(&packed_path))?;
        if let Some((_, w)) = pm1.as_mut() {
            let v = codes.to_pm1();
            let bytes: Vec<u8> = v.iter().map(|&b| b as u8).collect();
            w.write_all(&bytes).with_context(|| full(&pm1_path))?;
        }
        pb.set_position(r1 as u64);
    }
    pb.finish_and_clear();
    let mut files = vec![];
    if let Some((o, w)) = pm1 {
        o.finish(w)?;
        files.push(pm1_path);
    }
    packed.finish(wp)?;
    files.push(packed_path);
    Ok(EncodeSummary { items: n, bits, files })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    /// sign(x W) with a fixed W: a per-item model, so chunked and whole encodings must agree.
    struct Linear(Array2<f32>);

    impl HashModel for Linear {
        fn method(&self) -> &'static str {
            "linear-test"
        }
        fn bits(&self) -> usize {
            self.0.ncols()
        }
        fn encode(&self, _m: usize, view: &View) -> Result<BinaryCodes> {
            match view {
                View::Features(x) => Ok(BinaryCodes::from_signs(x.dot(&self.0).view())),
                View::Images(_) | View::Mapped(_) => bail!("features only"),
            }
        }
        fn save(&self, _dir: &Path) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn streamed_encoding_equals_whole_encoding_for_every_layout() {
        let dir = tempfile::tempdir().unwrap();
        let (n, d, bits) = (1003, 7, 20);
        let x = Array2::from_shape_fn((n, d), |(i, j)| ((i * 31 + j * 17) % 23) as f32 - 11.0 + 0.25 * j as f32);
        let w = Array2::from_shape_fn((d, bits), |(i, j)| ((i * 7 + j * 3) % 5) as f32 - 2.0);
        let model = Linear(w);
        let want = model.encode(0, &View::Features(x.clone())).unwrap();
        let f32p = dir.path().join("x32.npy");
        crate::npy::write_npy(&f32p, &x).unwrap();
        let f64p = dir.path().join("x64.npy");
        crate::npy::write_npy(&f64p, &x.mapv(|v| v as f64)).unwrap();
        for (input, chunk) in [(&f32p, 100usize), (&f32p, 1), (&f64p, 4096), (&f32p, 65536)] {
            let out = dir.path().join(format!("c{chunk}"));
            let s = encode_file(&model, 0, input, &out, &EncodeOptions { chunk, ..Default::default() }).unwrap();
            assert_eq!((s.items, s.bits, s.files.len()), (n, bits, 2));
            let got = BinaryCodes::load_npy(&dir.path().join(format!("c{chunk}_packed.npy")), Some(bits)).unwrap();
            assert_eq!(got, want, "{} chunk {chunk}", input.display());
            let pm1 = BinaryCodes::load_npy(&dir.path().join(format!("c{chunk}.npy")), None).unwrap();
            assert_eq!(pm1, want);
        }
        let s = encode_file(&model, 0, &f32p, &dir.path().join("p"), &EncodeOptions { packed_only: true, ..Default::default() }).unwrap();
        assert_eq!(s.files, vec![dir.path().join("p_packed.npy")]);
        assert!(!dir.path().join("p.npy").exists());
    }

    #[test]
    fn bad_features_leave_no_output() {
        let dir = tempfile::tempdir().unwrap();
        let mut x = Array2::<f32>::zeros((300, 3));
        x[[257, 2]] = f32::NAN;
        let p = dir.path().join("x.npy");
        crate::npy::write_npy(&p, &x).unwrap();
        let model = Linear(Array2::ones((3, 8)));
        let e = format!(
            "{:#}",
            encode_file(&model, 0, &p, &dir.path().join("c"), &EncodeOptions { chunk: 100, ..Default::default() }).unwrap_err()
        );
        assert!(e.contains("x.npy") && e.contains("row 257, column 2"), "{e}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 1, "{left:?}");
        // Truncated data: refused before anything is written.
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 4]).unwrap();
        let e = format!("{:#}", encode_file(&model, 0, &p, &dir.path().join("c"), &EncodeOptions::default()).unwrap_err());
        assert!(e.contains("x.npy") && e.contains("bytes follow"), "{e}");
    }
}
