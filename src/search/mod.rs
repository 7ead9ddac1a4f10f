//! Exhaustive Hamming search over packed codes (see [`crate::codes`] for the layout).
//!
//! - [`topk`]: the k nearest database codes of every query, ordered by (distance, database
//!   index); [`radius`]: every code within a Hamming radius, in the same order.
//! - Speed: queries are processed in blocks (64 by default) so the database streams through the
//!   cache once per block; inside a block, groups of 8 queries stay in registers while each
//!   database chunk is loaded once. Popcount kernels are chosen at run time ([`Kernel`]: AVX-512
//!   VPOPCNTDQ/BITALG, AVX2 `vpshufb`, POPCNT, portable). Codes of 16, 32 and 64 bits are read in
//!   place; other lengths (128 and 256 with their own instantiations) are repacked per block.
//! - Selection never sorts the database: each query keeps candidates below a distance limit that
//!   shrinks as better items arrive, and orders them by counting (there are only `bits + 1`
//!   distances; `select.rs`).
//! - Parallelism: rayon over (query block × database shard) tasks; shards are used when there are
//!   too few query blocks to keep every thread busy, and merged per query by the same counting.
//! - Databases larger than memory: [`MappedCodes`] memory-maps a packed uint8 `.npy` file; the
//!   search reads it in place, so resident memory stays near the pages being scanned.
//! - Sublinear exact search: [`MihIndex`] (multi-index hashing, [`mih`]) returns the same top-k
//!   and radius results while reading only the codes near each query, and hands queries to this
//!   scan when reading near codes would cost more.

mod kernels;
pub(crate) mod mapped;
pub mod mih;
mod select;

pub use kernels::Kernel;
pub use mapped::{open_codes, CodeFile, MappedCodes};
pub use mih::{MihIndex, MihOptions, MihStats};

use crate::codes::CodesRef;
use anyhow::{bail, Context, Result};
use kernels::{Block, Geometry, Layout};
use ndarray::{Array1, Array2};
use rayon::prelude::*;
use select::{key_dist, key_index, Cand};
use std::ops::Range;
use std::path::PathBuf;

/// Hamming distances from one packed query row to every database code (fastest kernel).
/// Panics if `out.len() != db.n` or the query row does not have the database's row length.
pub fn distances(query: &[u8], db: CodesRef, out: &mut [u32]) {
    distances_with(Kernel::auto(), query, db, out)
}

/// [`distances`] with a chosen kernel (an unavailable kernel falls back to the portable one).
pub(crate) fn distances_with(kernel: Kernel, query: &[u8], db: CodesRef, out: &mut [u32]) {
    assert_eq!(out.len(), db.n, "distances: output length must equal the database size");
    assert_eq!(query.len(), db.stride(), "distances: query row length must equal the database row length");
    let geo = Geometry::new(db.bits);
    let mut qw = Vec::with_capacity(geo.w);
    geo.push_words(query, &mut qw);
    let kernel = if kernel.is_available() { kernel } else { Kernel::Portable };
    kernels::distances(kernel, &geo, &qw, &db.data[..db.n * db.stride()], out);
}

/// [`distances_with`] reusing the caller's buffer for the query's words (no allocation; the
/// evaluation calls it once per query). `kernel` must be available.
pub(crate) fn distances_reusing(kernel: Kernel, query: &[u8], db: CodesRef, qw: &mut Vec<u64>, out: &mut [u32]) {
    assert_eq!(out.len(), db.n, "distances: output length must equal the database size");
    assert_eq!(query.len(), db.stride(), "distances: query row length must equal the database row length");
    let geo = Geometry::new(db.bits);
    qw.clear();
    geo.push_words(query, qw);
    kernels::distances(kernel, &geo, qw, &db.data[..db.n * db.stride()], out);
}

/// Top-k results: row i holds query i's k nearest database indices, ordered by (distance, index).
#[derive(Clone, Debug, PartialEq)]
pub struct SearchResult {
    pub indices: Array2<i64>,
    pub distances: Array2<i32>,
}

/// Tuning knobs; the defaults are right for almost every use (tests use them to force small
/// blocks, database shards and each kernel).
#[derive(Clone, Debug, Default)]
pub struct SearchOptions {
    /// Popcount kernel (default [`Kernel::auto`]); an unavailable kernel is an error.
    pub kernel: Option<Kernel>,
    /// Queries per task (default 64).
    pub query_block: Option<usize>,
    /// Database codes per cache block (default ≈ 256 KiB of codes; rounded up to a multiple of 256).
    pub block_codes: Option<usize>,
    /// Database shards per query block (default: enough tasks for 4 per rayon thread).
    pub shards: Option<usize>,
}

/// Exhaustive top-k Hamming search: for each query, the k database codes nearest in Hamming
/// distance, ties broken by smaller database index.
///
/// ```
/// use cmh::codes::BinaryCodes;
/// use ndarray::array;
///
/// let db = BinaryCodes::from_signs(array![[1.0, 1.0, -1.0, -1.0], [1.0, -1.0, -1.0, -1.0], [-1.0, 1.0, -1.0, 1.0]].view());
/// let q = BinaryCodes::from_signs(array![[1.0, 1.0, -1.0, 1.0]].view());
/// let r = cmh::search::topk(q.view(), db.view(), 2)?;
/// // Items 0 and 2 are both at distance 1: the smaller index comes first.
/// assert_eq!(r.indices, array![[0i64, 2]]);
/// assert_eq!(r.distances, array![[1i32, 1]]);
/// # Ok::<(), anyhow::Error>(())
/// ```
pub fn topk(queries: CodesRef, db: CodesRef, k: usize) -> Result<SearchResult> {
    topk_with(queries, db, k, &SearchOptions::default())
}

pub fn topk_with(queries: CodesRef, db: CodesRef, k: usize, opts: &SearchOptions) -> Result<SearchResult> {
    check_pair(queries, db)?;
    if k == 0 {
        bail!("k must be at least 1");
    }
    if k > db.n {
        bail!("k = {k} exceeds the database size ({} codes)", db.n);
    }
    let lists = execute(queries, db, Mode::TopK(k), opts)?;
    let mut indices = Array2::<i64>::zeros((queries.n, k));
    let mut dists = Array2::<i32>::zeros((queries.n, k));
    for (i, keys) in lists.iter().enumerate() {
        debug_assert_eq!(keys.len(), k);
        for (r, &key) in keys.iter().enumerate() {
            indices[[i, r]] = key_index(key) as i64;
            dists[[i, r]] = key_dist(key) as i32;
        }
    }
    Ok(SearchResult { indices, distances: dists })
}

/// Every database code within Hamming distance `r` of each query, as `(index, distance)` pairs
/// ordered by (distance, index).
pub fn radius(queries: CodesRef, db: CodesRef, r: usize) -> Result<Vec<Vec<(u32, u32)>>> {
    radius_with(queries, db, r, &SearchOptions::default())
}

pub fn radius_with(queries: CodesRef, db: CodesRef, r: usize, opts: &SearchOptions) -> Result<Vec<Vec<(u32, u32)>>> {
    check_pair(queries, db)?;
    let lists = execute(queries, db, Mode::Radius(r), opts)?;
    Ok(lists.into_iter().map(|keys| keys.into_iter().map(|k| (key_index(k), key_dist(k))).collect()).collect())
}

/// Sum of all query–database distances computed the way the top-k search does, without any
/// selection: the popcount throughput the search is measured against (benchmarks).
#[doc(hidden)]
pub fn distance_sum(queries: CodesRef, db: CodesRef, opts: &SearchOptions) -> Result<u64> {
    check_pair(queries, db)?;
    let geo = Geometry::new(db.bits);
    let kernel = pick_kernel(opts)?;
    let (qb, shards, block_codes) = plan(queries.n, db.n, &geo, opts);
    let qw = query_words(&geo, queries);
    let tasks: Vec<(usize, Range<usize>)> = (0..queries.n.div_ceil(qb)).flat_map(|b| shards.iter().map(move |s| (b, s.clone()))).collect();
    Ok(tasks
        .into_par_iter()
        .map(|(b, shard)| {
            let q = &qw[b * qb * geo.w..((b + 1) * qb).min(queries.n) * geo.w];
            let mut scratch = Vec::new();
            let mut s = 0u64;
            for_each_block(&geo, db, shard, block_codes, &mut scratch, |blk, _tail| {
                s += kernels::distance_sum(kernel, &geo, blk, q);
            });
            s
        })
        .sum())
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    TopK(usize),
    Radius(usize),
}

fn check_pair(queries: CodesRef, db: CodesRef) -> Result<()> {
    if queries.bits != db.bits {
        bail!("code length mismatch: query codes have {} bits but database codes have {}", queries.bits, db.bits);
    }
    if db.bits == 0 {
        bail!("codes must have at least one bit");
    }
    for (what, c) in [("query", queries), ("database", db)] {
        if c.data.len() != c.n * c.stride() {
            bail!("{what} codes: expected {} bytes for {} codes of {} bits, found {}", c.n * c.stride(), c.n, c.bits, c.data.len());
        }
    }
    if db.n > u32::MAX as usize {
        bail!("the database holds {} codes; at most {} are supported (32-bit indices)", db.n, u32::MAX);
    }
    Ok(())
}

fn pick_kernel(opts: &SearchOptions) -> Result<Kernel> {
    let k = opts.kernel.unwrap_or_else(Kernel::auto);
    if !k.is_available() {
        bail!("the {} popcount kernel is not available on this CPU (available: {:?})", k.name(), Kernel::available());
    }
    Ok(k)
}

const DEFAULT_QUERY_BLOCK: usize = 64;
const MIN_SHARD: usize = 1 << 16;
const BLOCK_BYTES: usize = 256 << 10;

/// (queries per task, database shards, codes per cache block).
fn plan(nq: usize, n: usize, geo: &Geometry, opts: &SearchOptions) -> (usize, Vec<Range<usize>>, usize) {
    let threads = rayon::current_num_threads().max(1);
    let qb = opts.query_block.unwrap_or(DEFAULT_QUERY_BLOCK).max(1);
    let qblocks = nq.div_ceil(qb).max(1);
    let nshards = opts
        .shards
        .unwrap_or_else(|| if qblocks >= 4 * threads { 1 } else { (4 * threads).div_ceil(qblocks).min((n / MIN_SHARD).max(1)) })
        .max(1);
    let shard_len = n.div_ceil(nshards).div_ceil(256).max(1) * 256;
    let shards = (0..n.max(1)).step_by(shard_len).map(|s| s..(s + shard_len).min(n)).collect();
    let bytes_per_code = if geo.layout == Layout::Words { 8 * geo.w } else { geo.stride };
    let block_codes = opts.block_codes.unwrap_or(BLOCK_BYTES / bytes_per_code).max(1).div_ceil(256) * 256;
    (qb, shards, block_codes)
}

fn query_words(geo: &Geometry, queries: CodesRef) -> Vec<u64> {
    let mut qw = Vec::with_capacity(queries.n * geo.w);
    for i in 0..queries.n {
        geo.push_words(queries.row(i), &mut qw);
    }
    qw
}

/// Walks a shard block by block: `f(full chunks, tail range)`; the tail (fewer codes than a
/// chunk, only at the shard's end) is left to the caller's scalar code.
fn for_each_block(
    geo: &Geometry,
    db: CodesRef,
    shard: Range<usize>,
    block_codes: usize,
    scratch: &mut Vec<u64>,
    mut f: impl FnMut(&Block, Range<usize>),
) {
    let chunk = geo.chunk();
    let mut j = shard.start;
    while j < shard.end {
        let len = block_codes.min(shard.end - j);
        let nchunks = len / chunk;
        let full = nchunks * chunk;
        let native = &db.data[j * geo.stride..(j + full) * geo.stride];
        if geo.layout == Layout::Words && nchunks > 0 {
            geo.repack(native, full, scratch);
        }
        let blk = Block { native, words: scratch, nchunks, j0: j as u32 };
        f(&blk, j + full..j + len);
        j += len;
    }
}

/// Runs the search; returns per query the keys `(distance << 32) | index` in ranking order
/// (exactly k for top-k).
fn execute(queries: CodesRef, db: CodesRef, mode: Mode, opts: &SearchOptions) -> Result<Vec<Vec<u64>>> {
    let kernel = pick_kernel(opts)?;
    let nq = queries.n;
    if nq == 0 {
        return Ok(vec![]);
    }
    if db.n == 0 {
        return Ok(vec![vec![]; nq]);
    }
    let geo = Geometry::new(db.bits);
    let bits = geo.bits;
    let (qb, shards, block_codes) = plan(nq, db.n, &geo, opts);
    let qw = query_words(&geo, queries);
    let nshards = shards.len();
    let tasks: Vec<(usize, Range<usize>)> = (0..nq.div_ceil(qb)).flat_map(|b| shards.iter().map(move |s| (b, s.clone()))).collect();
    let new_cand = |_: usize| match mode {
        Mode::TopK(k) => Cand::topk(k, bits),
        Mode::Radius(r) => Cand::radius(r, bits),
    };
    let mut per_task: Vec<Vec<Vec<u64>>> = tasks
        .into_par_iter()
        .map(|(b, shard)| {
            let (q0, q1) = (b * qb, ((b + 1) * qb).min(nq));
            let q = &qw[q0 * geo.w..q1 * geo.w];
            let mut cands: Vec<Cand> = (q0..q1).map(new_cand).collect();
            let mut scratch = Vec::new();
            for_each_block(&geo, db, shard, block_codes, &mut scratch, |blk, tail| {
                if blk.nchunks > 0 {
                    kernels::scan(kernel, &geo, blk, q, &mut cands);
                }
                for j in tail {
                    let row = db.row(j);
                    for (i, c) in cands.iter_mut().enumerate() {
                        c.push(geo.dist(&q[i * geo.w..(i + 1) * geo.w], row), j as u32);
                    }
                }
            });
            cands.into_iter().map(|c| c.finish(bits)).collect()
        })
        .collect();
    // Merge shards: each shard's list is in (distance, index) order and shards cover increasing
    // index ranges, so a stable counting sort of their concatenation is in (distance, index) order.
    let mut out = Vec::with_capacity(nq);
    for block in per_task.chunks_mut(nshards) {
        for i in 0..block[0].len() {
            let mut keys = if nshards == 1 {
                std::mem::take(&mut block[0][i])
            } else {
                let mut all = Vec::new();
                for shard in block.iter_mut() {
                    all.append(&mut shard[i]);
                }
                select::sort_by_distance(&mut all, bits);
                all
            };
            if let Mode::TopK(k) = mode {
                keys.truncate(k);
            }
            out.push(keys);
        }
    }
    debug_assert_eq!(out.len(), nq);
    Ok(out)
}

/// `cmh search`: top-k or radius search between two code files.
#[derive(Debug, Clone)]
pub struct SearchArgs {
    /// Database codes (.npy): uint8 rows in numpy.packbits order (memory-mapped, never loaded),
    /// int8 ±1 or bool 0/1 (n × bits).
    pub db: Option<PathBuf>,
    /// Search a multi-index hashing index (`cmh index build`) instead of scanning --db: the same
    /// results, reading only the codes near each query.
    pub index: Option<PathBuf>,
    /// Query codes, same formats and code length as the database.
    pub query: PathBuf,
    /// Number of nearest codes per query, ranked by (Hamming distance, database index).
    pub k: Option<usize>,
    /// Return every code within this Hamming distance instead of the top k.
    pub radius: Option<usize>,
    /// Code length in bits, for packed uint8 files whose length is not 8 × columns.
    pub bits: Option<usize>,
    /// Output folder. Top-k: indices.npy (int64, queries × k), distances.npy (int32, queries × k).
    /// Radius: indices.npy and distances.npy (1-d, all results) and offsets.npy (int64,
    /// queries + 1): query i's results are entries `offsets[i]..offsets[i+1]`.
    pub out: PathBuf,
    /// Popcount kernel: portable, popcnt, avx2 or avx512 (default: the fastest available).
    pub kernel: Option<String>,
}

/// Runs `cmh search`. Everything is validated and searched before the first output is written;
/// each output file is written atomically.
pub fn run(args: &SearchArgs) -> Result<()> {
    let kernel = match &args.kernel {
        Some(s) => Some(Kernel::from_name(s).with_context(|| format!("--kernel {s}: expected portable, popcnt, avx2 or avx512"))?),
        None => None,
    };
    let opts = SearchOptions { kernel, ..Default::default() };
    let inputs: Vec<(&str, &PathBuf)> = [("--db", args.db.as_ref()), ("--index", args.index.as_ref()), ("--query", Some(&args.query))]
        .into_iter()
        .filter_map(|(n, p)| p.map(|p| (n, p)))
        .collect();
    let outputs: Vec<PathBuf> = ["indices.npy", "distances.npy", "offsets.npy"].iter().map(|f| args.out.join(f)).collect();
    let inputs: Vec<(&str, &std::path::Path)> = inputs.iter().map(|(n, p)| (*n, p.as_path())).collect();
    crate::outdir::refuse_overwriting_inputs(&outputs, &inputs)?;
    crate::outdir::check(&args.out, crate::outdir::Kind::Search, "--out")?;
    let (db_file, index) = match (&args.db, &args.index) {
        (Some(db), None) => (Some(open_codes(db, args.bits)?), None),
        (None, Some(ix)) => (None, Some(MihIndex::open(ix)?)),
        _ => bail!("give exactly one of --db and --index"),
    };
    let (db, db_path) = match (&db_file, &index) {
        (Some(f), _) => (f.view(), args.db.as_ref().unwrap()),
        (_, Some(ix)) => (ix.codes(), args.index.as_ref().unwrap()),
        _ => unreachable!(),
    };
    let q = open_codes(&args.query, args.bits.or(index.as_ref().map(|ix| ix.bits())))?;
    if q.view().bits != db.bits {
        bail!(
            "code length mismatch: {} holds {}-bit codes but {} holds {}-bit codes",
            args.query.display(),
            q.view().bits,
            db_path.display(),
            db.bits
        );
    }
    let mih = MihOptions { scan: opts.clone(), ..Default::default() };
    let t = std::time::Instant::now();
    let (nq, n) = (q.view().n, db.n);
    let ctx = || format!("searching {} in {}", args.query.display(), db_path.display());
    let mkdir = || {
        crate::outdir::prepare(&args.out, crate::outdir::Kind::Search, "--out", false)?;
        crate::outdir::clean_partials(&args.out)
    };
    let note = |stats: Option<MihStats>| match stats {
        Some(s) => format!(" ({} from the index, {} by scan)", s.indexed, s.scanned),
        None => String::new(),
    };
    match (args.k, args.radius) {
        (Some(k), None) => {
            let (res, stats) = match &index {
                Some(ix) => ix.topk_with(q.view(), k, &mih).map(|(r, s)| (r, Some(s))),
                None => topk_with(q.view(), db, k, &opts).map(|r| (r, None)),
            }
            .with_context(ctx)?;
            let secs = t.elapsed().as_secs_f64();
            mkdir()?;
            crate::npy::write_npy(&args.out.join("indices.npy"), &res.indices)?;
            crate::npy::write_npy(&args.out.join("distances.npy"), &res.distances)?;
            // A radius search's offsets.npy from an earlier search would not belong to these results.
            let stale = args.out.join("offsets.npy");
            if stale.is_file() {
                std::fs::remove_file(&stale)
                    .with_context(|| format!("{}: cannot remove the earlier radius search's offsets", stale.display()))?;
            }
            log::info!("top-{k} of {nq} queries over {n} codes in {secs:.3} s{} -> {}", note(stats), args.out.display());
        }
        (None, Some(r)) => {
            let (res, stats) = match &index {
                Some(ix) => ix.radius_with(q.view(), r, &mih).map(|(r, s)| (r, Some(s))),
                None => radius_with(q.view(), db, r, &opts).map(|r| (r, None)),
            }
            .with_context(ctx)?;
            let secs = t.elapsed().as_secs_f64();
            let mut offsets = Vec::with_capacity(nq + 1);
            offsets.push(0i64);
            let (mut idx, mut dist) = (Vec::new(), Vec::new());
            for list in &res {
                for &(j, d) in list {
                    idx.push(j as i64);
                    dist.push(d as i32);
                }
                offsets.push(idx.len() as i64);
            }
            mkdir()?;
            crate::npy::write_npy(&args.out.join("indices.npy"), &Array1::from(idx))?;
            crate::npy::write_npy(&args.out.join("distances.npy"), &Array1::from(dist))?;
            crate::npy::write_npy(&args.out.join("offsets.npy"), &Array1::from(offsets))?;
            log::info!("radius {r} for {nq} queries over {n} codes in {secs:.3} s{} -> {}", note(stats), args.out.display());
        }
        _ => bail!("give exactly one of -k/--k and --radius"),
    }
    Ok(())
}

#[cfg(test)]
mod tests;
