//! Exact sublinear Hamming search by multi-index hashing (Norouzi, Punjani & Fleet, "Fast search
//! in Hamming space with multi-index hashing", CVPR 2012).
//!
//! Each code is cut into `m` disjoint substrings (bits `start..start + len` of the packbits bit
//! order, lengths differing by at most one). Table `j` sorts the database by substring `j`: an
//! offsets array over all `2^len` substring values points into the item ids and the full codes,
//! stored in that order so a bucket's codes are read contiguously.
//!
//! Search probes the tables radius by radius: at radius `r`, table `j` looks up every substring
//! value at Hamming distance exactly `r` from the query's substring and verifies each code found
//! with its full distance. Pigeonhole (the paper's Proposition 1, generalised to the probing
//! order): a code at distance `D` from the query has some substring within `floor(D / m)`;
//! precisely, once table `j` has been probed at radius `r` (tables after `j` at `r - 1`), every
//! code with `D <= m·r + j` has been seen. Top-k search stops as soon as the k-th best distance is
//! within that bound, so the result is exactly the linear scan's: every code at a distance up to
//! the k-th best has been seen, and the k best are taken by (distance, database index), the scan's
//! tie rule. A code can appear in several tables; it is counted only where it is first reached
//! (the earliest (radius, table) pair in probing order at which one of its substrings matches),
//! which needs only its substring distances, no visited set.
//!
//! A batch of queries is searched together, step by step in that probing order: at each step the
//! lookups of every query still searching are sorted by bucket, so a table is read in address
//! order (the hardware prefetcher streams it) and a bucket that several queries look up is read
//! from memory once. A query leaves the batch after the first step that completes its result.
//! Each query gets the result, and goes over budget or not, as when searched alone.
//!
//! When the codes are spread out (uniformly random codes, long codes over small collections) the
//! probes and candidates would cost more than reading every code. Each query therefore has a work
//! budget, half of what a scan of the database costs; a query that exceeds it is answered by
//! the linear scan ([`super::topk_with`]) together with the other such queries. The first queries
//! of a batch are a trial: when they cost more with the index than with the scan (their work plus
//! the scans of those over budget, against a scan for each), the rest of the batch goes straight to
//! the scan. Results are identical either way.
//!
//! File format (little-endian; sections aligned to 64 bytes; the file is memory-mapped):
//! ```text
//! 0   magic  b"CMHMIH\0\0"        8   version u32 (1)      12  header bytes u32
//! 16  bits u64   24  n u64   32  m u64   40  words per code u64   48  file length u64   56  0 u64
//! 64  m × (substring start u64, substring length u64)
//! codes      n × ceil(bits/8) bytes: the database in its original order (numpy.packbits rows)
//! per table  offsets (2^len + 1) u32, ids n u32, codes n × words u64 in bucket order
//! ```
//! Codes inside the tables are 64-bit words holding the bits in packbits order (bit `j` of the
//! code is bit `63 - j % 64` of word `j / 64`), padding bits cleared.

use super::{radius_with, topk_with, Kernel, SearchOptions, SearchResult};
use crate::codes::{stride_of, CodesRef};
use crate::numerics::pages::{prefetch, prefetch_l2};
use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use ndarray::Array2;
use rayon::prelude::*;
use std::collections::BinaryHeap;
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"CMHMIH\0\0";
const VERSION: u32 = 1;
const ALIGN: usize = 64;
/// Longest substring: the offsets array of a table has `2^len + 1` entries (1 GiB at 28 bits).
pub(crate) const MAX_SUBSTRING_BITS: usize = 28;

/// The default number of substrings: substrings of `log2 n` bits (the paper's `m ≈ bits / log2 n`)
/// up to 16 bits, and of `log2(n / 128)` bits where that is longer (n > 2^23), kept within what
/// the tables allow (`bits / m <= MAX_SUBSTRING_BITS`, `1 <= m <= bits`).
///
/// The paper's rule makes buckets hold about one code, so that a table lookup and a candidate
/// cost about the same. Over large databases a lookup is a random read of a table far larger than
/// the cache and costs as much as verifying about a hundred codes of a bucket, which are
/// contiguous and verified sixteen per loop round; substrings of `log2(n / 128)` bits, buckets of
/// about 128 codes, balance the two. On ITQ codes of 10⁷ clustered items at 64 bits this gives
/// m = 4 (16-bit substrings): 4× faster than the paper's m = 3 and 1.35× faster than m = 5.
pub(crate) fn auto_substrings(n: usize, bits: usize) -> usize {
    let log_n = (n.max(2) as f64).log2();
    let s = (log_n - 7.0).max(log_n.min(16.0));
    let m = (bits as f64 / s).round().max(1.0) as usize;
    m.max(bits.div_ceil(MAX_SUBSTRING_BITS)).min(bits).max(1)
}

/// Substring `(start, length)` pairs: `m` consecutive bit ranges, the first `bits % m` one longer.
pub fn substrings(bits: usize, m: usize) -> Vec<(usize, usize)> {
    let (base, extra) = (bits / m, bits % m);
    let mut start = 0;
    (0..m)
        .map(|j| {
            let len = base + (j < extra) as usize;
            let s = (start, len);
            start += len;
            s
        })
        .collect()
}

fn check_substrings(bits: usize, m: usize) -> Result<()> {
    if bits == 0 {
        bail!("codes must have at least one bit");
    }
    if m == 0 || m > bits {
        bail!("the number of substrings must be between 1 and the code length ({bits}), found {m}");
    }
    let longest = bits.div_ceil(m);
    if longest > MAX_SUBSTRING_BITS {
        bail!(
            "{m} substrings of {bits}-bit codes are {longest} bits long; at most {MAX_SUBSTRING_BITS} are supported (use at least {} substrings)",
            bits.div_ceil(MAX_SUBSTRING_BITS)
        );
    }
    Ok(())
}

/// Word layout of a code: `w` big-endian words of packbits bytes, padding bits cleared.
#[derive(Clone, Copy, Debug)]
struct Words {
    w: usize,
    stride: usize,
    last_mask: u64,
}

impl Words {
    fn new(bits: usize) -> Self {
        let w = bits.div_ceil(64);
        let valid = bits - 64 * (w - 1);
        Self { w, stride: stride_of(bits), last_mask: if valid == 64 { u64::MAX } else { u64::MAX << (64 - valid) } }
    }

    fn push(&self, row: &[u8], out: &mut Vec<u64>) {
        for wi in 0..self.w {
            let s = 8 * wi;
            let mut b = [0u8; 8];
            let e = (s + 8).min(self.stride);
            b[..e - s].copy_from_slice(&row[s..e]);
            let v = u64::from_be_bytes(b);
            out.push(if wi + 1 == self.w { v & self.last_mask } else { v });
        }
    }
}

/// Bits `start..start + len` (`len <= 32`) of a code in word form, as an integer whose most
/// significant bit is the code's bit `start`.
#[inline(always)]
fn substring(words: &[u64], start: usize, len: usize) -> u32 {
    let (wi, off) = (start / 64, start % 64);
    let mut v = words[wi] << off;
    if off > 0 && wi + 1 < words.len() {
        v |= words[wi + 1] >> (64 - off);
    }
    (v >> (64 - len)) as u32
}

/// Word masks selecting substring `(start, len)`.
fn substring_mask(w: usize, start: usize, len: usize) -> Vec<u64> {
    let mut m = vec![0u64; w];
    for b in start..start + len {
        m[b / 64] |= 1u64 << (63 - b % 64);
    }
    m
}

fn align(x: usize) -> usize {
    x.div_ceil(ALIGN) * ALIGN
}

/// Byte positions of the sections of an index file.
#[derive(Clone, Debug)]
struct Layout {
    bits: usize,
    n: usize,
    w: usize,
    subs: Vec<(usize, usize)>,
    header: usize,
    codes: usize,
    /// Per table: (offsets, ids, words) byte positions.
    tables: Vec<(usize, usize, usize)>,
    file_len: usize,
}

impl Layout {
    fn new(bits: usize, n: usize, m: usize) -> Self {
        let w = bits.div_ceil(64);
        let subs = substrings(bits, m);
        let header = align(64 + 16 * m);
        let codes = header;
        let mut pos = align(codes + n * stride_of(bits));
        let mut tables = Vec::with_capacity(m);
        for &(_, len) in &subs {
            let offsets = pos;
            let ids = align(offsets + 4 * ((1usize << len) + 1));
            let words = align(ids + 4 * n);
            pos = align(words + 8 * w * n);
            tables.push((offsets, ids, words));
        }
        Self { bits, n, w, subs, header, codes, tables, file_len: pos }
    }
}

/// The file length [`Layout::new`] computes for `bits`, `n`, `m`, or `None` where an intermediate
/// size overflows (a corrupted header); `m` substrings must be valid ([`check_substrings`]).
fn layout_len(bits: usize, n: usize, m: usize) -> Option<usize> {
    let al = |x: usize| x.checked_add(ALIGN - 1).map(|y| y / ALIGN * ALIGN);
    let w = bits.div_ceil(64);
    let header = al(m.checked_mul(16)?.checked_add(64)?)?;
    let mut pos = al(header.checked_add(n.checked_mul(bits.div_ceil(8))?)?)?;
    let words = n.checked_mul(w)?.checked_mul(8)?;
    for (_, len) in substrings(bits, m) {
        let offsets = 4usize.checked_mul((1usize << len) + 1)?;
        pos = al(al(al(pos.checked_add(offsets)?)?.checked_add(4usize.checked_mul(n)?)?)?.checked_add(words)?)?;
    }
    Some(pos)
}

/// Settings of `cmh index build`.
#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    /// Number of substrings (default `auto_substrings`).
    pub substrings: Option<usize>,
    /// Show a progress bar.
    pub progress: bool,
}

/// What an index build produced.
#[derive(Clone, Debug, serde::Serialize)]
pub struct IndexSummary {
    pub n: usize,
    pub bits: usize,
    pub substrings: usize,
    pub substring_bits: Vec<usize>,
    pub bytes: usize,
}

/// A writer that counts the bytes written (to pad sections to their positions).
struct Counting<'a, W: Write> {
    out: &'a mut W,
    pos: usize,
}

impl<W: Write> Counting<'_, W> {
    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes)?;
        self.pos += bytes.len();
        Ok(())
    }

    fn pad_to(&mut self, at: usize) -> Result<()> {
        debug_assert!(at >= self.pos && at - self.pos < ALIGN);
        self.put(&[0u8; ALIGN][..at - self.pos])
    }
}

/// Writes the index of `codes` to `w` (the file format of the module documentation).
fn write_index<W: Write>(codes: CodesRef, m: usize, progress: bool, out: &mut W) -> Result<IndexSummary> {
    check_substrings(codes.bits, m)?;
    if codes.n > u32::MAX as usize {
        bail!("the database holds {} codes; at most {} are supported (32-bit indices)", codes.n, u32::MAX);
    }
    let lay = Layout::new(codes.bits, codes.n, m);
    let (n, w) = (codes.n, lay.w);
    let wl = Words::new(codes.bits);
    let mut out = Counting { out, pos: 0 };
    let mut head = Vec::with_capacity(lay.header);
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&VERSION.to_le_bytes());
    head.extend_from_slice(&(lay.header as u32).to_le_bytes());
    for v in [codes.bits, n, m, w, lay.file_len, 0] {
        head.extend_from_slice(&(v as u64).to_le_bytes());
    }
    for &(s, l) in &lay.subs {
        head.extend_from_slice(&(s as u64).to_le_bytes());
        head.extend_from_slice(&(l as u64).to_le_bytes());
    }
    head.resize(lay.header, 0);
    out.put(&head)?;
    // Original codes with padding bits cleared.
    let rem = codes.bits % 8;
    let pad_mask = if rem == 0 { 0xff } else { 0xffu8 << (8 - rem) };
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    for i in 0..n {
        buf.extend_from_slice(codes.row(i));
        let l = buf.len();
        buf[l - 1] &= pad_mask;
        if buf.len() >= 1 << 20 {
            out.put(&buf)?;
            buf.clear();
        }
    }
    out.put(&buf)?;
    let pb = if progress {
        let pb = indicatif::ProgressBar::new((m * n) as u64);
        pb.set_style(indicatif::ProgressStyle::with_template("index {bar:40} {pos}/{len} codes × tables, {elapsed}").unwrap());
        pb
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut rw = Vec::with_capacity(w);
    for (t, &(start, len)) in lay.subs.iter().enumerate() {
        let (off_pos, ids_pos, words_pos) = lay.tables[t];
        out.pad_to(off_pos)?;
        // Counting sort of the items by substring value (stable: ids ascend within a bucket).
        let mut keys = Vec::with_capacity(n);
        let mut offsets = vec![0u32; (1usize << len) + 1];
        for i in 0..n {
            rw.clear();
            wl.push(codes.row(i), &mut rw);
            let key = substring(&rw, start, len);
            keys.push(key);
            offsets[key as usize + 1] += 1;
        }
        for v in 1..offsets.len() {
            offsets[v] += offsets[v - 1];
        }
        let mut cursor = offsets.clone();
        let mut ids = vec![0u32; n];
        for (i, &key) in keys.iter().enumerate() {
            let c = &mut cursor[key as usize];
            ids[*c as usize] = i as u32;
            *c += 1;
        }
        drop(keys);
        drop(cursor);
        buf.clear();
        for &o in &offsets {
            buf.extend_from_slice(&o.to_le_bytes());
        }
        out.put(&buf)?;
        out.pad_to(ids_pos)?;
        buf.clear();
        for &id in &ids {
            buf.extend_from_slice(&id.to_le_bytes());
        }
        out.put(&buf)?;
        out.pad_to(words_pos)?;
        buf.clear();
        for (r, &id) in ids.iter().enumerate() {
            rw.clear();
            wl.push(codes.row(id as usize), &mut rw);
            for &x in &rw {
                buf.extend_from_slice(&x.to_le_bytes());
            }
            if buf.len() >= 1 << 20 {
                out.put(&buf)?;
                buf.clear();
            }
            if r % (1 << 16) == 0 {
                pb.set_position((t * n + r) as u64);
            }
        }
        out.put(&buf)?;
        buf.clear();
    }
    let end = lay.file_len;
    out.pad_to(end)?;
    pb.finish_and_clear();
    debug_assert_eq!(out.pos, lay.file_len);
    Ok(IndexSummary { n, bits: codes.bits, substrings: m, substring_bits: lay.subs.iter().map(|s| s.1).collect(), bytes: lay.file_len })
}

/// Builds the index of `codes` and writes it to `path` (a temporary file renamed when complete).
pub fn build_index_file(codes: CodesRef, opts: &BuildOptions, path: &Path) -> Result<IndexSummary> {
    let m = opts.substrings.unwrap_or_else(|| auto_substrings(codes.n, codes.bits));
    check_substrings(codes.bits, m).with_context(|| format!("building {}", path.display()))?;
    let mut summary = None;
    crate::npy::write_atomic(path, |w| {
        summary = Some(write_index(codes, m, opts.progress, w)?);
        Ok(())
    })?;
    Ok(summary.expect("written"))
}

enum Storage {
    Mapped(Mmap),
    /// u64 backing keeps the sections' alignment.
    Owned(Vec<u64>, usize),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v, len) => {
                // SAFETY: a u64 buffer viewed as its first `len` bytes (len <= 8 × v.len()).
                unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, *len) }
            }
        }
    }
}

/// A multi-index hashing index, memory-mapped from its file (or built in memory).
pub struct MihIndex {
    storage: Storage,
    path: Option<PathBuf>,
    lay: Layout,
    masks: Vec<Vec<u64>>,
}

impl std::fmt::Debug for MihIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MihIndex")
            .field("path", &self.path)
            .field("n", &self.lay.n)
            .field("bits", &self.lay.bits)
            .field("substrings", &self.lay.subs)
            .finish()
    }
}

/// Tuning of an index search.
#[derive(Clone, Debug)]
pub struct MihOptions {
    /// Work allowed per query before it is handed to the linear scan, as a fraction of the cost
    /// of scanning the database once (default 0.5, so a handed-over query costs at most 1.5
    /// scans; `f64::INFINITY` never hands over, 0 always).
    pub budget: f64,
    /// Options of the linear scan used for handed-over queries.
    pub scan: SearchOptions,
}

impl Default for MihOptions {
    fn default() -> Self {
        Self { budget: 0.5, scan: SearchOptions::default() }
    }
}

/// Per query, `(database index, distance)` pairs in (distance, index) order.
pub type RadiusLists = Vec<Vec<(u32, u32)>>;

/// How a batch of queries was answered.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MihStats {
    /// Queries answered from the index.
    pub indexed: usize,
    /// Queries answered by the linear scan (over budget, or after the first queries showed that the index
    /// would cost more than the scan).
    pub scanned: usize,
    /// Table lookups and codes verified, over the indexed queries and the abandoned attempts.
    pub probes: u64,
    pub candidates: u64,
}

/// Relative costs, in units of one candidate verification of a one-word code (a code read from a
/// bucket, XOR + popcount + compare, sixteen at a time with AVX-512; buckets are read in address
/// order, so mostly a streamed read): a table lookup (a read of the offsets array, then of the
/// first lines of the bucket, out of order over a table far larger than the cache) and one 64-bit
/// word of the linear scan, which streams the database once per block of queries. Fitted with
/// `scripts/bench_mih.py` (time of m = 3, 4, 5 on 10^7 64-bit ITQ codes: about 0.44 ns a
/// verification and 50-70 ns a lookup) against the scan's 0.09 ns per code and query.
const PROBE_COST: f64 = 120.0;
const SCAN_COST_PER_WORD: f64 = 0.2;
/// Queries answered before deciding whether the index pays off for this batch at all.
const TRIAL_QUERIES: usize = 32;

impl MihIndex {
    /// Builds an index in memory (tests and small databases; [`build_index_file`] writes one).
    pub fn build(codes: CodesRef, substrings: Option<usize>) -> Result<Self> {
        let m = substrings.unwrap_or_else(|| auto_substrings(codes.n, codes.bits));
        let mut bytes = Vec::new();
        write_index(codes, m, false, &mut bytes)?;
        let len = bytes.len();
        let mut words = vec![0u64; len.div_ceil(8)];
        // SAFETY: the u64 buffer holds at least `len` bytes.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), words.as_mut_ptr() as *mut u8, len) };
        Self::from_storage(Storage::Owned(words, len), None)
    }

    /// Memory-maps an index file written by [`build_index_file`], checking its header, length
    /// and offsets arrays.
    pub fn open(path: &Path) -> Result<Self> {
        let p = path.display();
        let file = std::fs::File::open(path).with_context(|| format!("{p}: cannot open"))?;
        // SAFETY: mapped read-only; the file must not be modified while it is mapped.
        let map = unsafe { Mmap::map(&file) }.with_context(|| format!("{p}: cannot memory-map"))?;
        Self::from_storage(Storage::Mapped(map), Some(path.to_path_buf())).with_context(|| format!("{p}: not a valid cmh index"))
    }

    fn from_storage(storage: Storage, path: Option<PathBuf>) -> Result<Self> {
        if cfg!(target_endian = "big") {
            bail!("index files are little-endian; this machine is big-endian");
        }
        let b = storage.bytes();
        if b.len() < 64 || &b[..8] != MAGIC {
            bail!("missing the CMHMIH magic (not an index written by `cmh index build`)");
        }
        let version = u32::from_le_bytes(b[8..12].try_into().unwrap());
        if version != VERSION {
            bail!("index format version {version}; this cmh reads version {VERSION} (rebuild the index)");
        }
        let u = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap()) as usize;
        let (bits, n, m, w, len) = (u(16), u(24), u(32), u(40), u(48));
        check_substrings(bits, m).context("header")?;
        if n > u32::MAX as usize || w != bits.div_ceil(64) {
            bail!("inconsistent header (n = {n}, bits = {bits}, words = {w})");
        }
        if m > (b.len() - 64) / 16 {
            bail!("truncated header: {m} substrings need {} bytes or more, the file holds {}", 64u128 + 16 * m as u128, b.len());
        }
        // The sizes the header implies, without overflow, before anything is laid out.
        match layout_len(bits, n, m) {
            Some(expected) if expected == len && expected == b.len() => {}
            Some(expected) => bail!(
                "expected {expected} bytes for {n} codes of {bits} bits in {m} tables, the header says {len} and the file holds {}",
                b.len()
            ),
            None => bail!("inconsistent header: {n} codes of {bits} bits in {m} tables would not fit in memory"),
        }
        let lay = Layout::new(bits, n, m);
        for (j, &(s, l)) in lay.subs.iter().enumerate() {
            if (u(64 + 16 * j), u(72 + 16 * j)) != (s, l) {
                bail!("substring {j} is not the standard split of {bits} bits into {m}");
            }
        }
        if len != lay.file_len || b.len() != lay.file_len {
            bail!(
                "expected {} bytes for {n} codes of {bits} bits in {m} tables, the header says {len} and the file holds {}",
                lay.file_len,
                b.len()
            );
        }
        let masks = lay.subs.iter().map(|&(s, l)| substring_mask(w, s, l)).collect();
        let idx = Self { storage, path, lay, masks };
        // Each table's ids must list every item once: search results are database indices.
        let mut seen = vec![0u64; n.div_ceil(64)];
        for j in 0..m {
            let off = idx.offsets(j);
            if off[0] != 0 || off[off.len() - 1] as usize != n || off.windows(2).any(|p| p[0] > p[1]) {
                bail!("table {j}: the offsets array is not a non-decreasing sequence from 0 to {n}");
            }
            seen.iter_mut().for_each(|x| *x = 0);
            for (t, &id) in idx.ids(j).iter().enumerate() {
                let id = id as usize;
                if id >= n || seen[id / 64] >> (id % 64) & 1 == 1 {
                    bail!("table {j}: entry {t} holds item id {id}, which is out of range or repeated (expected each of 0..{n} once)");
                }
                seen[id / 64] |= 1 << (id % 64);
            }
        }
        Ok(idx)
    }

    pub fn len(&self) -> usize {
        self.lay.n
    }
    pub fn is_empty(&self) -> bool {
        self.lay.n == 0
    }
    pub fn bits(&self) -> usize {
        self.lay.bits
    }
    pub fn substrings(&self) -> &[(usize, usize)] {
        &self.lay.subs
    }
    /// Size of the index in bytes.
    pub fn bytes(&self) -> usize {
        self.lay.file_len
    }

    /// The database codes in their original order (packbits rows).
    pub fn codes(&self) -> CodesRef<'_> {
        let l = &self.lay;
        CodesRef { n: l.n, bits: l.bits, data: &self.storage.bytes()[l.codes..l.codes + l.n * stride_of(l.bits)] }
    }

    fn u32s(&self, at: usize, count: usize) -> &[u32] {
        let b = &self.storage.bytes()[at..at + 4 * count];
        // SAFETY: sections start at multiples of 64 bytes of a page-aligned map or u64 buffer.
        let (pre, mid, post) = unsafe { b.align_to::<u32>() };
        assert!(pre.is_empty() && post.is_empty(), "misaligned index section");
        mid
    }

    fn offsets(&self, j: usize) -> &[u32] {
        self.u32s(self.lay.tables[j].0, (1usize << self.lay.subs[j].1) + 1)
    }

    fn ids(&self, j: usize) -> &[u32] {
        self.u32s(self.lay.tables[j].1, self.lay.n)
    }

    fn words(&self, j: usize) -> &[u64] {
        let at = self.lay.tables[j].2;
        let b = &self.storage.bytes()[at..at + 8 * self.lay.w * self.lay.n];
        // SAFETY: as in `u32s`.
        let (pre, mid, post) = unsafe { b.align_to::<u64>() };
        assert!(pre.is_empty() && post.is_empty(), "misaligned index section");
        mid
    }

    fn check_queries(&self, queries: CodesRef) -> Result<()> {
        if queries.bits != self.lay.bits {
            bail!("code length mismatch: query codes have {} bits but the index holds {}-bit codes", queries.bits, self.lay.bits);
        }
        if queries.data.len() != queries.n * queries.stride() {
            bail!(
                "query codes: expected {} bytes for {} codes of {} bits, found {}",
                queries.n * queries.stride(),
                queries.n,
                queries.bits,
                queries.data.len()
            );
        }
        Ok(())
    }

    /// Work of `probes` table lookups and `candidates` verifications, in units of one
    /// verification of a one-word code (a verification reads every word of its code).
    fn work(&self, probes: u64, candidates: u64) -> f64 {
        probes as f64 * PROBE_COST + (candidates * self.lay.w as u64) as f64
    }

    /// Cost of scanning the database for one query, in the units of [`MihIndex::work`].
    fn scan_cost(&self) -> f64 {
        self.lay.n as f64 * self.lay.w as f64 * SCAN_COST_PER_WORD
    }

    /// Work budget of one query, in the units of [`MihIndex::work`].
    fn budget(&self, opts: &MihOptions) -> f64 {
        opts.budget * self.scan_cost()
    }

    /// Whether the index answers a batch at a lower cost than the scan, judged from its first
    /// queries, each given as (table lookups, codes verified, whether it went over budget and is
    /// scanned as well): their cost against a scan for each.
    pub(crate) fn index_pays_off(&self, trial: &[(u64, u64, bool)]) -> bool {
        let scan = self.scan_cost();
        let spent: f64 = trial.iter().map(|&(p, c, over)| self.work(p, c) + if over { scan } else { 0.0 }).sum();
        spent < trial.len() as f64 * scan
    }

    /// Exact top-k: identical to [`super::topk`] over [`MihIndex::codes`].
    pub fn topk(&self, queries: CodesRef, k: usize) -> Result<SearchResult> {
        self.topk_with(queries, k, &MihOptions::default()).map(|r| r.0)
    }

    pub fn topk_with(&self, queries: CodesRef, k: usize, opts: &MihOptions) -> Result<(SearchResult, MihStats)> {
        self.check_queries(queries)?;
        if k == 0 {
            bail!("k must be at least 1");
        }
        if k > self.lay.n {
            bail!("k = {k} exceeds the database size ({} codes)", self.lay.n);
        }
        let (lists, stats) = self.run(queries, Goal::TopK(k), opts)?;
        let mut indices = Array2::<i64>::zeros((queries.n, k));
        let mut distances = Array2::<i32>::zeros((queries.n, k));
        for (i, list) in lists.iter().enumerate() {
            for (r, &(j, d)) in list.iter().enumerate() {
                indices[[i, r]] = j as i64;
                distances[[i, r]] = d as i32;
            }
        }
        Ok((SearchResult { indices, distances }, stats))
    }

    /// Exact radius search: identical to [`super::radius`] over [`MihIndex::codes`].
    pub fn radius(&self, queries: CodesRef, r: usize) -> Result<Vec<Vec<(u32, u32)>>> {
        self.radius_with(queries, r, &MihOptions::default()).map(|r| r.0)
    }

    pub fn radius_with(&self, queries: CodesRef, r: usize, opts: &MihOptions) -> Result<(RadiusLists, MihStats)> {
        self.check_queries(queries)?;
        self.run(queries, Goal::Radius(r.min(self.lay.bits)), opts)
    }

    fn run(&self, queries: CodesRef, goal: Goal, opts: &MihOptions) -> Result<(RadiusLists, MihStats)> {
        let nq = queries.n;
        let mut stats = MihStats::default();
        if nq == 0 {
            return Ok((vec![], stats));
        }
        if self.lay.n == 0 {
            stats.indexed = nq;
            return Ok((vec![vec![]; nq], stats));
        }
        let budget = self.budget(opts);
        let simd = Simd::pick(opts.scan.kernel);
        // Queries `range` answered together, as one batch.
        let batch = |range: std::ops::Range<usize>| -> Vec<Outcome> {
            let words = Words::new(self.lay.bits);
            let mut qws = Vec::with_capacity(range.len() * self.lay.w);
            for i in range {
                words.push(queries.row(i), &mut qws);
            }
            self.search(&qws, goal, budget, simd)
        };
        // A trial batch decides whether the index pays off at all for these queries.
        let trial = nq.min(TRIAL_QUERIES);
        let mut outcomes = batch(0..trial);
        let costs: Vec<(u64, u64, bool)> = outcomes.iter().map(|o| (o.probes, o.candidates, o.result.is_none())).collect();
        if trial < nq {
            if opts.budget.is_finite() && !self.index_pays_off(&costs) {
                outcomes.extend((trial..nq).map(|_| Outcome { result: None, probes: 0, candidates: 0 }));
            } else {
                // One batch per thread: the larger the batch, the more lookups share a bucket.
                let per = (nq - trial).div_ceil(rayon::current_num_threads());
                let parts: Vec<Vec<Outcome>> =
                    (trial..nq).step_by(per).collect::<Vec<_>>().into_par_iter().map(|s| batch(s..(s + per).min(nq))).collect();
                outcomes.extend(parts.into_iter().flatten());
            }
        }
        let mut lists: Vec<Vec<(u32, u32)>> = Vec::with_capacity(nq);
        let mut rescan = Vec::new();
        for (i, o) in outcomes.into_iter().enumerate() {
            stats.probes += o.probes;
            stats.candidates += o.candidates;
            match o.result {
                Some(list) => {
                    stats.indexed += 1;
                    lists.push(list);
                }
                None => {
                    rescan.push(i);
                    lists.push(vec![]);
                }
            }
        }
        stats.scanned = rescan.len();
        if !rescan.is_empty() {
            let s = queries.stride();
            let mut data = Vec::with_capacity(rescan.len() * s);
            for &i in &rescan {
                data.extend_from_slice(queries.row(i));
            }
            let sub = CodesRef { n: rescan.len(), bits: queries.bits, data: &data };
            let found: Vec<Vec<(u32, u32)>> = match goal {
                Goal::TopK(k) => {
                    let r = topk_with(sub, self.codes(), k, &opts.scan)?;
                    (0..sub.n).map(|i| (0..k).map(|c| (r.indices[[i, c]] as u32, r.distances[[i, c]] as u32)).collect()).collect()
                }
                Goal::Radius(r) => radius_with(sub, self.codes(), r, &opts.scan)?,
            };
            for (&i, list) in rescan.iter().zip(found) {
                lists[i] = list;
            }
        }
        Ok((lists, stats))
    }

    fn search(&self, qws: &[u64], goal: Goal, budget: f64, simd: Simd) -> Vec<Outcome> {
        #[cfg(target_arch = "x86_64")]
        match simd {
            // SAFETY: the CPU has AVX-512 with VPOPCNTDQ (checked by `Simd::pick`).
            Simd::Avx512 => {
                return unsafe {
                    match self.lay.w {
                        1 => search_avx512::<1>(self, qws, goal, budget),
                        2 => search_avx512::<2>(self, qws, goal, budget),
                        _ => search_avx512::<0>(self, qws, goal, budget),
                    }
                }
            }
            // SAFETY: the CPU has POPCNT (checked by `Simd::pick`).
            Simd::Popcnt => {
                return unsafe {
                    match self.lay.w {
                        1 => search_popcnt::<1>(self, qws, goal, budget),
                        2 => search_popcnt::<2>(self, qws, goal, budget),
                        _ => search_popcnt::<0>(self, qws, goal, budget),
                    }
                }
            }
            Simd::Portable => {}
        }
        let _ = simd;
        match self.lay.w {
            1 => search_batch::<1, false>(self, qws, goal, budget),
            2 => search_batch::<2, false>(self, qws, goal, budget),
            _ => search_batch::<0, false>(self, qws, goal, budget),
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Goal {
    TopK(usize),
    Radius(usize),
}

struct Outcome {
    /// `(index, distance)` in (distance, index) order; `None` when the query went over budget.
    result: Option<Vec<(u32, u32)>>,
    probes: u64,
    candidates: u64,
}

/// Lookups sorted and verified together (bounds the memory of a step over a large batch).
const STEP_ENTRIES: usize = 1 << 18;
/// How many lookups ahead of its verification a bucket's offsets, and its first cache lines,
/// up to `PREFETCH_LINES`, are requested.
const AHEAD_OFFSETS: usize = 16;
const AHEAD_BUCKETS: usize = 4;
const _: () = assert!(AHEAD_BUCKETS > 0 && AHEAD_OFFSETS > AHEAD_BUCKETS);
const PREFETCH_LINES: usize = 64;

/// Instruction set of the candidate verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Simd {
    Portable,
    Popcnt,
    /// AVX-512 VPOPCNTDQ: eight 64-bit codes of a bucket per instruction.
    Avx512,
}

impl Simd {
    /// The best the CPU offers, capped by the scan's kernel where one is set (so the portable
    /// and POPCNT paths can be chosen, and tested, on any machine).
    fn pick(kernel: Option<Kernel>) -> Simd {
        let best = if Kernel::Avx512.is_available() {
            Simd::Avx512
        } else if Kernel::Popcnt.is_available() {
            Simd::Popcnt
        } else {
            Simd::Portable
        };
        match kernel {
            None | Some(Kernel::Avx512) => best,
            Some(Kernel::Portable) => Simd::Portable,
            Some(_) => best.min_popcnt(),
        }
    }

    fn min_popcnt(self) -> Simd {
        if self == Simd::Portable {
            Simd::Portable
        } else {
            Simd::Popcnt
        }
    }
}

/// # Safety
/// The CPU must support POPCNT.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt")]
unsafe fn search_popcnt<const W: usize>(idx: &MihIndex, qws: &[u64], goal: Goal, budget: f64) -> Vec<Outcome> {
    search_batch::<W, false>(idx, qws, goal, budget)
}

/// # Safety
/// The CPU must support AVX-512 F and VPOPCNTDQ and POPCNT.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vpopcntdq,popcnt")]
unsafe fn search_avx512<const W: usize>(idx: &MihIndex, qws: &[u64], goal: Goal, budget: f64) -> Vec<Outcome> {
    search_batch::<W, true>(idx, qws, goal, budget)
}

/// Hamming distance of two codes in word form; `W` words when known at compile time (0: any).
#[inline(always)]
fn dist<const W: usize>(a: &[u64], b: &[u64]) -> u32 {
    if W > 0 {
        (0..W).map(|i| (a[i] ^ b[i]).count_ones()).sum()
    } else {
        a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
    }
}

/// Calls `hit(base + t, d)` for every code `t` of `xs` (codes of `W` words, `q.len()` when `W`
/// is 0) at distance `d <= thr` from `q`; `hit` returns the threshold for the codes after it.
#[inline(always)]
fn verify_scalar<const W: usize, F: FnMut(usize, u32) -> u32>(xs: &[u64], q: &[u64], base: usize, mut thr: u32, hit: &mut F) -> u32 {
    let w = if W > 0 { W } else { q.len() };
    for (t, x) in xs.chunks_exact(w).enumerate() {
        let d = dist::<W>(x, q);
        if d <= thr {
            thr = hit(base + t, d);
        }
    }
    thr
}

/// Calls `hit(base + b, d_b)` for each lane `b` set in `m` (distances `d`, in lane order) while
/// `d_b` is within the threshold `hit` last returned; returns the final threshold.
///
/// # Safety
/// The CPU must support AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn report_hits<F: FnMut(usize, u32) -> u32>(
    d: std::arch::x86_64::__m512i,
    mut m: u8,
    base: usize,
    mut thr: u32,
    hit: &mut F,
) -> u32 {
    let mut ds = [0u64; 8];
    // SAFETY: `ds` holds eight u64.
    unsafe { std::arch::x86_64::_mm512_storeu_epi64(ds.as_mut_ptr() as *mut i64, d) };
    while m != 0 {
        let b = m.trailing_zeros() as usize;
        let db = ds[b] as u32;
        if db <= thr {
            thr = hit(base + b, db);
        }
        m &= m - 1;
    }
    thr
}

/// [`verify_scalar`] for one-word codes, eight per instruction.
///
/// # Safety
/// The CPU must support AVX-512 F and VPOPCNTDQ.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vpopcntdq,popcnt")]
#[inline]
unsafe fn verify_w1_avx512<F: FnMut(usize, u32) -> u32>(xs: &[u64], q: u64, base: usize, mut thr: u32, hit: &mut F) -> u32 {
    use std::arch::x86_64::*;
    let qv = _mm512_set1_epi64(q as i64);
    let mut tv = _mm512_set1_epi64(thr as i64);
    let p = xs.as_ptr() as *const i64;
    let n = xs.len();
    let mut i = 0;
    // Sixteen codes a round, one branch for both vectors (hits are rare); `report_hits`
    // re-checks each lane against the threshold the first vector's hits may have lowered.
    while i + 16 <= n {
        // SAFETY: codes i..i + 16 lie inside `xs`.
        let (a, b) = unsafe { (_mm512_loadu_si512(p.add(i) as *const _), _mm512_loadu_si512(p.add(i + 8) as *const _)) };
        let (da, db) = (_mm512_popcnt_epi64(_mm512_xor_si512(a, qv)), _mm512_popcnt_epi64(_mm512_xor_si512(b, qv)));
        let (ma, mb) = (_mm512_cmple_epu64_mask(da, tv), _mm512_cmple_epu64_mask(db, tv));
        if ma | mb != 0 {
            if ma != 0 {
                thr = report_hits(da, ma, base + i, thr, hit);
            }
            if mb != 0 {
                thr = report_hits(db, mb, base + i + 8, thr, hit);
            }
            tv = _mm512_set1_epi64(thr as i64);
        }
        i += 16;
    }
    while i < n {
        let lanes: __mmask8 = if n - i >= 8 { 0xff } else { (1u8 << (n - i)) - 1 };
        // SAFETY: lanes past the end of `xs` are masked off (masked lanes are not read).
        let v = unsafe { _mm512_maskz_loadu_epi64(lanes, p.add(i)) };
        let d = _mm512_popcnt_epi64(_mm512_xor_si512(v, qv));
        let m = _mm512_mask_cmple_epu64_mask(lanes, d, tv);
        if m != 0 {
            thr = report_hits(d, m, base + i, thr, hit);
            tv = _mm512_set1_epi64(thr as i64);
        }
        i += 8;
    }
    thr
}

/// [`verify_scalar`] for two-word codes, eight at a time: the words of eight codes are XORed and
/// counted as two vectors, then each code's two counts are added.
///
/// # Safety
/// The CPU must support AVX-512 F and VPOPCNTDQ.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vpopcntdq,popcnt")]
#[inline]
unsafe fn verify_w2_avx512<F: FnMut(usize, u32) -> u32>(xs: &[u64], q: &[u64], base: usize, mut thr: u32, hit: &mut F) -> u32 {
    use std::arch::x86_64::*;
    let qv = _mm512_set_epi64(q[1] as i64, q[0] as i64, q[1] as i64, q[0] as i64, q[1] as i64, q[0] as i64, q[1] as i64, q[0] as i64);
    let even = _mm512_set_epi64(14, 12, 10, 8, 6, 4, 2, 0);
    let odd = _mm512_set_epi64(15, 13, 11, 9, 7, 5, 3, 1);
    let mut tv = _mm512_set1_epi64(thr as i64);
    let p = xs.as_ptr() as *const i64;
    let n = xs.len() / 2;
    let mut i = 0;
    while i < n {
        let codes = (n - i).min(8);
        let lanes: __mmask8 = if codes == 8 { 0xff } else { (1u8 << codes) - 1 };
        let words = 2 * codes;
        let (ma, mb): (__mmask8, __mmask8) =
            (if words >= 8 { 0xff } else { (1u8 << words) - 1 }, if words > 8 { ((1u16 << (words - 8)) - 1) as u8 } else { 0 });
        // SAFETY: words past the end of `xs` are masked off (masked lanes are not read).
        let (a, b) = unsafe { (_mm512_maskz_loadu_epi64(ma, p.add(2 * i)), _mm512_maskz_loadu_epi64(mb, p.add(2 * i + 8))) };
        let (ca, cb) = (_mm512_popcnt_epi64(_mm512_xor_si512(a, qv)), _mm512_popcnt_epi64(_mm512_xor_si512(b, qv)));
        let d = _mm512_add_epi64(_mm512_permutex2var_epi64(ca, even, cb), _mm512_permutex2var_epi64(ca, odd, cb));
        let m = _mm512_mask_cmple_epu64_mask(lanes, d, tv);
        if m != 0 {
            thr = report_hits(d, m, base + i, thr, hit);
            tv = _mm512_set1_epi64(thr as i64);
        }
        i += 8;
    }
    thr
}

/// Whether a code first reached in table `j` at radius `r` (its substring `j` is at distance `r`)
/// is reached there for the first time: no earlier table has it within `r`, no later one within
/// `r - 1` (tables are probed radius by radius, in table order).
#[inline(always)]
fn first_reached(masks: &[Vec<u64>], x: &[u64], q: &[u64], j: usize, r: u32) -> bool {
    for (t, mask) in masks.iter().enumerate() {
        if t == j {
            continue;
        }
        let d: u32 = mask.iter().zip(x.iter().zip(q)).map(|(m, (a, b))| ((a ^ b) & m).count_ones()).sum();
        if d < r || (d == r && t < j) {
            return false;
        }
    }
    true
}

/// Masks of `len` bits with exactly `r` bits set, in increasing order (Gosper's hack).
struct Masks {
    next: u64,
    top: u64,
}

impl Masks {
    fn new(len: usize, r: u32) -> Self {
        let top = 1u64 << len;
        Self { next: if r as usize <= len { (1u64 << r) - 1 } else { top }, top }
    }
}

impl Iterator for Masks {
    type Item = u64;

    #[inline(always)]
    fn next(&mut self) -> Option<u64> {
        let mask = self.next;
        if mask >= self.top {
            return None;
        }
        self.next = if mask == 0 {
            self.top
        } else {
            let c = mask & mask.wrapping_neg();
            let rr = mask + c;
            (((rr ^ mask) >> 2) / c) | rr
        };
        Some(mask)
    }
}

/// The search state of one query of a batch.
struct Query {
    /// Top-k: a max-heap of keys (distance << 32 | index).
    heap: BinaryHeap<u64>,
    /// Radius: every key within the radius.
    found: Vec<u64>,
    /// Codes farther than this cannot enter the result.
    thr: u32,
    probes: u64,
    candidates: u64,
    over: bool,
}

/// Answers a batch of queries (`qws`: their codes in word form, one after another) together.
///
/// The search of every query goes through the same steps, (radius `r`, table `j`) in probing
/// order. At each step the lookups of all queries still searching are sorted by bucket, so that
/// each table is read in address order and a bucket probed by several queries is read once for
/// all of them; a query leaves the batch at the first step after which its result is complete,
/// or when it goes over `budget` (its outcome is then `None`, to be answered by the scan).
#[inline(always)]
fn search_batch<const W: usize, const AVX512: bool>(idx: &MihIndex, qws: &[u64], goal: Goal, budget: f64) -> Vec<Outcome> {
    let lay = &idx.lay;
    let (m, w, bits) = (lay.subs.len(), lay.w, lay.bits);
    let nq = qws.len() / w;
    let thr0 = match goal {
        Goal::TopK(_) => u32::MAX,
        Goal::Radius(rad) => rad as u32,
    };
    let mut qs: Vec<Query> =
        (0..nq).map(|_| Query { heap: BinaryHeap::new(), found: Vec::new(), thr: thr0, probes: 0, candidates: 0, over: false }).collect();
    let mut outcomes: Vec<Option<Outcome>> = (0..nq).map(|_| None).collect();
    let mut active: Vec<u32> = (0..nq as u32).collect();
    let mut entries: Vec<u64> = Vec::with_capacity(STEP_ENTRIES);
    let (mut scratch, mut counts) = (Vec::new(), Vec::new());
    let max_len = lay.subs.iter().map(|s| s.1).max().unwrap_or(0);
    for r in 0..=max_len as u32 {
        for (j, &(start, len)) in lay.subs.iter().enumerate() {
            if r as usize <= len {
                // Lookups (bucket << 32 | query), verified in sorted runs of at most STEP_ENTRIES.
                for &qi in &active {
                    let qsub = substring(&qws[qi as usize * w..][..w], start, len) as u64;
                    for mask in Masks::new(len, r) {
                        entries.push(((qsub ^ mask) << 32) | qi as u64);
                        if entries.len() == STEP_ENTRIES {
                            verify_step::<W, AVX512>(idx, qws, &mut qs, &mut entries, &mut scratch, &mut counts, j, r, goal, budget);
                        }
                    }
                }
                verify_step::<W, AVX512>(idx, qws, &mut qs, &mut entries, &mut scratch, &mut counts, j, r, goal, budget);
            }
            // Every code within m·r + j of the query has now been reached.
            let reached = m * r as usize + j;
            active.retain(|&qi| {
                let q = &mut qs[qi as usize];
                let (probes, candidates) = (q.probes, q.candidates);
                if q.over {
                    outcomes[qi as usize] = Some(Outcome { result: None, probes, candidates });
                    return false;
                }
                let done = match goal {
                    Goal::TopK(k) => q.heap.len() == k && (*q.heap.peek().unwrap() >> 32) as usize <= reached,
                    Goal::Radius(rad) => reached >= rad,
                };
                if !(done || reached >= bits) {
                    return true;
                }
                let mut keys = if let Goal::TopK(_) = goal { std::mem::take(&mut q.heap).into_vec() } else { std::mem::take(&mut q.found) };
                keys.sort_unstable();
                let list = keys.into_iter().map(|k| ((k & 0xffff_ffff) as u32, (k >> 32) as u32)).collect();
                outcomes[qi as usize] = Some(Outcome { result: Some(list), probes, candidates });
                false
            });
            if active.is_empty() {
                return outcomes.into_iter().map(|o| o.expect("every query has ended")).collect();
            }
        }
    }
    unreachable!("the last radius reaches every code")
}

/// Sorts lookups (bucket << 32 | query) by bucket: a counting sort over the `2^len` buckets where
/// there are not many more buckets than lookups, a comparison sort otherwise.
pub(crate) fn sort_by_bucket(entries: &mut Vec<u64>, scratch: &mut Vec<u64>, counts: &mut Vec<u32>, len: usize) {
    let buckets = 1usize << len;
    if buckets > 2 * entries.len() {
        entries.sort_unstable();
        return;
    }
    counts.clear();
    counts.resize(buckets + 1, 0);
    for &e in entries.iter() {
        counts[(e >> 32) as usize + 1] += 1;
    }
    for v in 1..=buckets {
        counts[v] += counts[v - 1];
    }
    scratch.clear();
    scratch.resize(entries.len(), 0);
    for &e in entries.iter() {
        let c = &mut counts[(e >> 32) as usize];
        scratch[*c as usize] = e;
        *c += 1;
    }
    std::mem::swap(entries, scratch);
}

/// Sorts the lookups `entries` of step (radius `r`, table `j`) by bucket and verifies each
/// bucket's codes against the queries that look it up, then empties `entries`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn verify_step<const W: usize, const AVX512: bool>(
    idx: &MihIndex,
    qws: &[u64],
    qs: &mut [Query],
    entries: &mut Vec<u64>,
    scratch: &mut Vec<u64>,
    counts: &mut Vec<u32>,
    j: usize,
    r: u32,
    goal: Goal,
    budget: f64,
) {
    let w = idx.lay.w;
    let (offsets, ids, words) = (idx.offsets(j), idx.ids(j), idx.words(j));
    sort_by_bucket(entries, scratch, counts, idx.lay.subs[j].1);
    let ne = entries.len();
    let bucket = |p: usize| (entries[p] >> 32) as usize;
    for (p, &e) in entries.iter().enumerate() {
        // Software pipeline: the offsets of a lookup far ahead are requested, then the first
        // lines of the bucket of a nearer one (once per bucket, into the second-level cache),
        // so that the misses of many lookups overlap.
        if p + AHEAD_OFFSETS < ne {
            prefetch(offsets.as_ptr().wrapping_add(bucket(p + AHEAD_OFFSETS)));
        }
        let ahead = p + AHEAD_BUCKETS;
        if ahead < ne && bucket(ahead) != bucket(ahead - 1) {
            let v = bucket(ahead);
            let (lo, hi) = (offsets[v] as usize * w, offsets[v + 1] as usize * w);
            for at in (lo..hi.min(lo + 8 * PREFETCH_LINES)).step_by(8) {
                prefetch_l2(words.as_ptr().wrapping_add(at));
            }
        }
        let (v, qi) = ((e >> 32) as usize, (e & 0xffff_ffff) as usize);
        let q = &mut qs[qi];
        if q.over {
            continue;
        }
        let (lo, hi) = (offsets[v] as usize, offsets[v + 1] as usize);
        q.probes += 1;
        q.candidates += (hi - lo) as u64;
        let qw = &qws[qi * w..][..w];
        let xs = &words[lo * w..hi * w];
        let Query { heap, found, thr, .. } = q;
        // A code within `thr` of the query: kept if this is where it is first reached.
        let mut hit = |t: usize, d: u32| -> u32 {
            let x = &words[t * w..(t + 1) * w];
            let kk = ((d as u64) << 32) | ids[t] as u64;
            match goal {
                Goal::TopK(k) => {
                    let full = heap.len() == k;
                    if (!full || kk < *heap.peek().unwrap()) && first_reached(&idx.masks, x, qw, j, r) {
                        if full {
                            heap.pop();
                        }
                        heap.push(kk);
                    }
                    if heap.len() == k {
                        (*heap.peek().unwrap() >> 32) as u32
                    } else {
                        u32::MAX
                    }
                }
                Goal::Radius(rad) => {
                    if first_reached(&idx.masks, x, qw, j, r) {
                        found.push(kk);
                    }
                    rad as u32
                }
            }
        };
        *thr = 'verified: {
            #[cfg(target_arch = "x86_64")]
            if AVX512 && W == 1 {
                // SAFETY: `AVX512` is set only inside `search_avx512`.
                break 'verified unsafe { verify_w1_avx512(xs, qw[0], lo, *thr, &mut hit) };
            }
            #[cfg(target_arch = "x86_64")]
            if AVX512 && W == 2 {
                // SAFETY: as above.
                break 'verified unsafe { verify_w2_avx512(xs, qw, lo, *thr, &mut hit) };
            }
            verify_scalar::<W, _>(xs, qw, lo, *thr, &mut hit)
        };
        if idx.work(q.probes, q.candidates) > budget {
            q.over = true;
        }
    }
    entries.clear();
}
