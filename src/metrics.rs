//! Retrieval metrics over Hamming rankings.
//!
//! Conventions (README "Evaluation conventions"):
//! - relevance: query and database item share at least one label;
//! - ranking: by (Hamming distance, database index), so results are deterministic;
//! - mAP: mean over queries of AP = (1/R) Σ_{r: item r relevant} P@r over the full ranking, R =
//!   relevant items in the database; queries with R = 0 are excluded from the mean and counted;
//! - mAP@k: AP@k = (1/R_k) Σ_{r ≤ k, relevant} P@r with R_k = relevant items in the top k (the
//!   DCMH-style `calc_map_k`); 0 when the top k holds none; same excluded queries as mAP;
//! - precision@N: mean over the same queries of (relevant in top N) / N;
//! - precision–recall by Hamming radius r = 0..bits: over items within distance ≤ r, precision
//!   averaged over queries that retrieve at least one item, recall over all counted queries.
//!
//! Algorithm (no ranking is ever sorted; details at `query_stats`): per query, distances and
//! relevance flags for the whole database, then one counting pass that counts items per distance
//! bucket (all, and relevant) and records,
//! for each relevant item, its bucket d, its position among the bucket's items so far (`pos`) and
//! among the bucket's relevant items so far (`m`). Ranking by (distance, index) puts bucket d after
//! the S_d items of smaller distance, and within the bucket in index order, so that item has rank
//! S_d + pos + 1 and is the (H_d + m + 1)-th relevant item (H_d = relevant items of smaller
//! distance): its precision term is exactly (H_d + m + 1) / (S_d + pos + 1). mAP@k, precision@N and
//! the radius curve follow from the same counts. Queries run in parallel (rayon); per-query
//! results are summed in query order, so the result does not depend on the thread count.

use crate::codes::CodesRef;
use crate::search::Kernel;
use anyhow::{bail, Result};
use ndarray::ArrayView2;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default)]
pub struct EvalOptions {
    /// Also compute mAP@k.
    pub topk: Option<usize>,
    /// Points N of the precision@N curve (empty = none).
    pub precision_at: Vec<usize>,
    /// Compute the precision–recall curve by Hamming radius.
    pub pr_curve: bool,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct PrPoint {
    pub radius: usize,
    pub precision: f64,
    pub recall: f64,
}

/// Metrics of one retrieval direction.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DirectionMetrics {
    pub map: f64,
    #[serde(rename = "map@k", skip_serializing_if = "Option::is_none")]
    pub map_at_k: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k: Option<usize>,
    pub n_queries: usize,
    /// Queries with no relevant database item (left out of every mean).
    pub excluded_queries: usize,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub precision_at_n: Vec<(usize, f64)>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub pr_curve: Vec<PrPoint>,
}

/// Label rows packed into u64 bitsets, for the "share ≥ 1 label" test.
pub(crate) struct LabelSets {
    words: usize,
    data: Vec<u64>,
}

impl LabelSets {
    pub(crate) fn new(l: ArrayView2<u8>) -> Self {
        let words = l.ncols().div_ceil(64).max(1);
        let mut data = vec![0u64; l.nrows() * words];
        for (i, row) in l.outer_iter().enumerate() {
            for (c, &v) in row.iter().enumerate() {
                if v != 0 {
                    data[i * words + c / 64] |= 1 << (c % 64);
                }
            }
        }
        Self { words, data }
    }
    #[inline]
    pub(crate) fn row(&self, i: usize) -> &[u64] {
        &self.data[i * self.words..(i + 1) * self.words]
    }
    #[inline]
    pub(crate) fn shares(&self, i: usize, other: &LabelSets, j: usize) -> bool {
        self.row(i).iter().zip(other.row(j)).any(|(a, b)| a & b != 0)
    }
}

pub(crate) fn check_inputs(q: CodesRef, db: CodesRef, ql: ArrayView2<u8>, dl: ArrayView2<u8>) -> Result<()> {
    if q.bits != db.bits {
        bail!("code length mismatch: query codes have {} bits but database codes have {}", q.bits, db.bits);
    }
    if q.bits == 0 {
        bail!("codes have 0 bits; a code needs at least one bit");
    }
    if ql.nrows() != q.n {
        bail!("{} query codes but {} query label rows", q.n, ql.nrows());
    }
    if dl.nrows() != db.n {
        bail!("{} database codes but {} database label rows", db.n, dl.nrows());
    }
    for (what, c) in [("query", q), ("database", db)] {
        if c.data.len() != c.n * c.stride() {
            bail!("{what} codes: expected {} bytes for {} codes of {} bits, found {}", c.n * c.stride(), c.n, c.bits, c.data.len());
        }
    }
    if ql.ncols() != dl.ncols() {
        bail!("query labels have {} classes, database labels {}", ql.ncols(), dl.ncols());
    }
    if db.n == 0 || q.n == 0 {
        bail!("evaluation needs at least one query and one database item");
    }
    Ok(())
}

/// Evaluates one direction: queries of one modality against a database of (usually) the other.
///
/// A hand-worked case: the database ranks (distance 0, 1, 2) an item of another class, then two
/// of the query's class, so AP = (1/2 + 2/3) / 2 = 7/12.
///
/// ```
/// use cmh::codes::BinaryCodes;
/// use cmh::metrics::{evaluate, EvalOptions};
/// use ndarray::array;
///
/// let q = BinaryCodes::from_pm1(array![[1i8, 1, 1, 1, 1, 1, 1, 1]].view())?;
/// let db = BinaryCodes::from_pm1(array![[1i8, 1, 1, 1, 1, 1, 1, 1], [-1, 1, 1, 1, 1, 1, 1, 1], [-1, -1, 1, 1, 1, 1, 1, 1]].view())?;
/// let (ql, dl) = (array![[1u8, 0]], array![[0u8, 1], [1, 0], [1, 0]]);
/// let m = evaluate(q.view(), db.view(), ql.view(), dl.view(), &EvalOptions::default())?;
/// assert!((m.map - 7.0 / 12.0).abs() < 1e-12);
/// # Ok::<(), anyhow::Error>(())
/// ```
pub fn evaluate(q: CodesRef, db: CodesRef, ql: ArrayView2<u8>, dl: ArrayView2<u8>, opts: &EvalOptions) -> Result<DirectionMetrics> {
    evaluate_with(Kernel::auto(), q, db, ql, dl, opts)
}

/// [`evaluate`] with a chosen popcount kernel (an unavailable one falls back to the portable one).
pub(crate) fn evaluate_with(
    kernel: Kernel,
    q: CodesRef,
    db: CodesRef,
    ql: ArrayView2<u8>,
    dl: ArrayView2<u8>,
    opts: &EvalOptions,
) -> Result<DirectionMetrics> {
    check_inputs(q, db, ql, dl)?;
    if opts.topk == Some(0) {
        bail!("mAP@k needs k >= 1");
    }
    if opts.precision_at.contains(&0) {
        bail!("precision@N needs N >= 1");
    }
    if db.n > u32::MAX as usize {
        bail!("the database holds {} items; at most {} are supported", db.n, u32::MAX);
    }
    let qs = LabelSets::new(ql);
    let ds = LabelSets::new(dl);
    let bits = q.bits;
    let n = db.n;
    let kernel = if kernel.is_available() { kernel } else { Kernel::Portable };
    // The AVX-512 counting needs distances that fit a byte.
    #[cfg(target_arch = "x86_64")]
    let fast = kernel == Kernel::Avx512 && bits <= 255 && fast::available();
    #[cfg(not(target_arch = "x86_64"))]
    let fast = false;
    let per_query: Vec<QueryStats> = (0..q.n)
        .into_par_iter()
        .map_init(
            || Scratch::new(n, bits),
            |s, i| {
                #[cfg(target_arch = "x86_64")]
                if fast {
                    if bits == 64 {
                        let qw = u64::from_le_bytes(q.row(i).try_into().expect("64-bit codes are 8 bytes"));
                        // SAFETY: `fast` implies AVX-512 F/BW/VPOPCNTDQ (fast::available).
                        unsafe { fast::distances_64(qw, &db.data[..n * 8], &mut s.d8) };
                    } else {
                        crate::search::distances_reusing(kernel, q.row(i), db, &mut s.qw, &mut s.dist);
                        // SAFETY: as above.
                        unsafe { fast::narrow(&s.dist, &mut s.d8) };
                    }
                }
                if !fast {
                    crate::search::distances_reusing(kernel, q.row(i), db, &mut s.qw, &mut s.dist);
                }
                if qs.words == 1 {
                    relevance_mask_single(kernel, qs.data[i], &ds.data, &mut s.relm);
                } else {
                    relevance_mask_general(|j| qs.shares(i, &ds, j), n, &mut s.relm);
                }
                query_stats(s, bits, opts, fast)
            },
        )
        .collect();

    let mut sum_ap = 0.0;
    let mut sum_apk = 0.0;
    let mut excluded = 0;
    let mut pn_sum = vec![0.0; opts.precision_at.len()];
    let mut pr_prec = vec![0.0; bits + 1];
    let mut pr_prec_cnt = vec![0usize; bits + 1];
    let mut pr_rec = vec![0.0; bits + 1];
    for st in &per_query {
        let Some(ap) = st.ap else {
            excluded += 1;
            continue;
        };
        sum_ap += ap;
        sum_apk += st.apk;
        for (acc, &hits) in pn_sum.iter_mut().zip(&st.hits_at) {
            *acc += hits;
        }
        if opts.pr_curve {
            for r in 0..=bits {
                let (retrieved, rel) = st.radius_counts[r];
                if retrieved > 0 {
                    pr_prec[r] += rel as f64 / retrieved as f64;
                    pr_prec_cnt[r] += 1;
                }
                pr_rec[r] += rel as f64 / st.total_rel as f64;
            }
        }
    }
    let counted = q.n - excluded;
    let denom = counted.max(1) as f64;
    let pr_curve = if opts.pr_curve {
        (0..=bits)
            .map(|r| PrPoint {
                radius: r,
                precision: if pr_prec_cnt[r] > 0 { pr_prec[r] / pr_prec_cnt[r] as f64 } else { 0.0 },
                recall: pr_rec[r] / denom,
            })
            .collect()
    } else {
        vec![]
    };
    Ok(DirectionMetrics {
        map: sum_ap / denom,
        map_at_k: opts.topk.map(|_| sum_apk / denom),
        k: opts.topk,
        n_queries: q.n,
        excluded_queries: excluded,
        precision_at_n: opts.precision_at.iter().zip(&pn_sum).map(|(&n, &s)| (n, s / denom)).collect(),
        pr_curve,
    })
}

/// mAP over the full ranking (shorthand).
pub fn map(q: CodesRef, db: CodesRef, ql: ArrayView2<u8>, dl: ArrayView2<u8>) -> Result<f64> {
    Ok(evaluate(q, db, ql, dl, &EvalOptions::default())?.map)
}

/// Database segments counted with separate histograms (independent dependency chains; see
/// [`query_stats`]). Segment boundaries are multiples of 64 items.
const SEGS: usize = 4;

/// Per-thread buffers, reused across queries (no allocation per query).
struct Scratch {
    qw: Vec<u64>,
    dist: Vec<u32>,
    /// Distances as bytes (fast path), padded to whole 64-item blocks.
    d8: Vec<u8>,
    /// Distance of each relevant item, as a byte (fast path).
    ldist8: Vec<u8>,
    /// Relevance bitmask: bit j % 64 of word j / 64 is set when database item j is relevant.
    relm: Vec<u64>,
    /// Per relevant item, grouped by segment (one spare slot after each segment's run): its
    /// segment's packed counter of its distance bucket before it (low 32 bits: items, high 32
    /// bits: relevant items).
    local: Vec<u64>,
    /// Distance of the relevant item in the same slot of `local`.
    ldist: Vec<u32>,
    /// Per segment (SEGS + 1 for the tail) and distance: the packed counters.
    hist: Vec<u64>,
    /// Per distance: totals over segments; S_d + 1 and H_d + 1 (see `query_stats`).
    tot: Vec<u64>,
    s1: Vec<u64>,
    h1: Vec<u64>,
    /// Per relevant item, in database order: (hits so far including it) << 32 | its rank.
    hit_rank: Vec<u64>,
}

impl Scratch {
    fn new(n: usize, bits: usize) -> Self {
        let nb = bits + 1;
        Self {
            qw: Vec::with_capacity(bits.div_ceil(64)),
            dist: vec![0; n],
            d8: vec![0; n.div_ceil(64) * 64],
            ldist8: vec![0; n],
            relm: vec![0; n.div_ceil(64)],
            local: vec![0; n + SEGS + 1],
            ldist: vec![0; n + SEGS + 1],
            hist: vec![0; (SEGS + 1) * nb],
            tot: vec![0; nb],
            s1: vec![0; nb + 1],
            h1: vec![0; nb + 1],
            hit_rank: vec![0; n],
        }
    }
}

/// Relevance bitmask for labels of at most 64 classes (one u64 bitset per item).
fn relevance_mask_single(kernel: Kernel, qm: u64, dm: &[u64], relm: &mut [u64]) {
    #[cfg(target_arch = "x86_64")]
    if kernel == Kernel::Avx512 {
        // SAFETY: the AVX-512 kernel is only chosen when the CPU has it (checked by the caller).
        return unsafe { relevance_mask_avx512(qm, dm, relm) };
    }
    let _ = kernel;
    relevance_mask_general(|j| qm & dm[j] != 0, dm.len(), relm)
}

fn relevance_mask_general(rel: impl Fn(usize) -> bool, n: usize, relm: &mut [u64]) {
    debug_assert_eq!(relm.len(), n.div_ceil(64));
    for (w, m) in relm.iter_mut().enumerate() {
        let lo = w * 64;
        let hi = (lo + 64).min(n);
        let mut x = 0u64;
        for j in lo..hi {
            x |= (rel(j) as u64) << (j - lo);
        }
        *m = x;
    }
}

#[cfg(target_arch = "x86_64")]
/// # Safety
/// The CPU must have AVX-512 F and BW (the lengths are asserted).
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn relevance_mask_avx512(qm: u64, dm: &[u64], relm: &mut [u64]) {
    use std::arch::x86_64::*;
    let n = dm.len();
    assert!(relm.len() == n.div_ceil(64));
    let q = _mm512_set1_epi64(qm as i64);
    let full = n / 64;
    for w in 0..full {
        let p = dm.as_ptr().add(w * 64) as *const i64;
        let t = |g: usize| _mm512_test_epi64_mask(_mm512_loadu_epi64(p.add(8 * g)), q) as __mmask16;
        // Eight 8-bit masks into one 64-bit mask, in mask registers (KUNPCK: high half first).
        let w0 = _mm512_kunpackb(t(1), t(0)) as __mmask32;
        let w1 = _mm512_kunpackb(t(3), t(2)) as __mmask32;
        let w2 = _mm512_kunpackb(t(5), t(4)) as __mmask32;
        let w3 = _mm512_kunpackb(t(7), t(6)) as __mmask32;
        let d0 = _mm512_kunpackw(w1, w0) as __mmask64;
        let d1 = _mm512_kunpackw(w3, w2) as __mmask64;
        *relm.get_unchecked_mut(w) = _mm512_kunpackd(d1, d0);
    }
    if full * 64 < n {
        let mut x = 0u64;
        for (b, &m) in dm[full * 64..].iter().enumerate() {
            x |= ((qm & m != 0) as u64) << b;
        }
        relm[full] = x;
    }
}

/// One query's contribution to the means.
struct QueryStats {
    /// AP, or None when no database item is relevant (excluded query).
    ap: Option<f64>,
    apk: f64,
    /// Precision at each requested N.
    hits_at: Vec<f64>,
    /// Per radius r: (items within distance r, relevant items within distance r).
    radius_counts: Vec<(usize, usize)>,
    total_rel: usize,
}

const LO: u64 = 0xffff_ffff;

/// Σ hits / rank over packed `hits << 32 | rank` values, in 8 independent lanes (vectorised;
/// AVX-512 when the CPU has it).
fn sum_ratios(hit_rank: &[u64]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if Kernel::Avx512.is_available() {
        // SAFETY: AVX-512 F/DQ are available (Kernel::Avx512 requires F, BW, VPOPCNTDQ, BITALG;
        // every such CPU has DQ, checked again here).
        if std::arch::is_x86_feature_detected!("avx512dq") {
            return unsafe { sum_ratios_avx512(hit_rank) };
        }
    }
    sum_ratios_body(hit_rank)
}

#[inline(always)]
fn sum_ratios_body(hit_rank: &[u64]) -> f64 {
    let mut acc = [0.0f64; 8];
    let mut chunks = hit_rank.chunks_exact(8);
    for c in &mut chunks {
        for l in 0..8 {
            // Counts are far below 2^53: the conversions are exact.
            acc[l] += (c[l] >> 32) as i64 as f64 / (c[l] & LO) as i64 as f64;
        }
    }
    for &v in chunks.remainder() {
        acc[0] += (v >> 32) as i64 as f64 / (v & LO) as i64 as f64;
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
/// # Safety
/// The CPU must have AVX-512 F and DQ.
#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn sum_ratios_avx512(hit_rank: &[u64]) -> f64 {
    sum_ratios_body(hit_rank)
}

/// One query, from its distances and relevance bitmask.
///
/// 1. Segment runs: the database is cut into SEGS segments (plus a short tail), each with its own
///    histogram of packed counters (items, relevant items) per distance. Each segment's relevant
///    items get a run of output slots, in database order, starting where the relevant items of the
///    segments before it end (popcounts of the relevance bitmask), plus one spare slot per segment
///    (the writes below are unconditional).
/// 2. Counting pass over all items, the segments walked in lockstep so that consecutive counter
///    updates never wait on each other: each item adds (1, relevant) to its segment's counter of
///    its distance; the counter before it and its distance go to the segment's next output slot,
///    which advances only when the item is relevant (no branch).
/// 3. Prefix sums over segments turn each segment's histogram into its offsets, and over
///    distances into S_d, H_d (items and relevant items at distance < d).
/// 4. For each relevant item in bucket d: its segment counter plus the segment's offset gives
///    `pos` (items of bucket d before it) and `m` (relevant items of bucket d before it), so its
///    rank is S_d + pos + 1 and it is the (H_d + m + 1)-th hit (one packed table entry per
///    segment and distance adds all four terms at once).
/// 5. AP = (1/R) Σ hits/rank, summed in 8 independent lanes (vectorised division).
#[allow(clippy::needless_range_loop)]
fn query_stats(s: &mut Scratch, bits: usize, opts: &EvalOptions, fast: bool) -> QueryStats {
    let n = s.dist.len();
    let nb = bits + 1;
    let total_rel: usize = s.relm.iter().map(|w| w.count_ones() as usize).sum();
    if total_rel == 0 {
        return QueryStats { ap: None, apk: 0.0, hits_at: vec![], radius_counts: vec![], total_rel };
    }
    #[cfg(target_arch = "x86_64")]
    if fast {
        // SAFETY: `fast` is only set when fast::available() holds and bits <= 255 (distances fit
        // a byte); `s.d8` holds this query's distances, padded to whole blocks.
        unsafe { fast::count(&s.d8, n, &s.relm, &mut s.local[..total_rel], &mut s.ldist8[..total_rel], &mut s.tot[..nb]) };
        return finish_stats(s, bits, opts, total_rel, None);
    }
    let _ = fast;
    s.hist.fill(0);
    let seg = (n / SEGS) & !63;
    // Segment h covers items [h * seg, hi(h)); its output run starts at start[h].
    let seg_hi = |h: usize| if h < SEGS { (h + 1) * seg } else { n };
    let mut start = [0usize; SEGS + 2];
    for h in 0..=SEGS {
        let (w0, w1) = (h * seg / 64, seg_hi(h).div_ceil(64));
        let rel: usize = s.relm[w0..w1].iter().map(|w| w.count_ones() as usize).sum();
        start[h + 1] = start[h] + rel + 1;
    }
    {
        let (dist, relm) = (&s.dist[..n], &s.relm[..]);
        let (local, ldist) = (&mut s.local[..total_rel + SEGS + 1], &mut s.ldist[..total_rel + SEGS + 1]);
        let hist = &mut s.hist[..(SEGS + 1) * nb];
        let mut k = start;
        let mut step = |h: usize, e: usize| {
            // SAFETY: e < n (callers); distances are <= bits so h * nb + d < (SEGS + 1) * nb;
            // k[h] < start[h + 1] <= total_rel + SEGS + 1, since k[h] - start[h] counts the
            // segment's relevant items seen before e.
            unsafe {
                let d = *dist.get_unchecked(e);
                debug_assert!(d as usize <= bits);
                let rb = (*relm.get_unchecked(e / 64) >> (e % 64)) & 1;
                let slot = hist.get_unchecked_mut(h * nb + d as usize);
                let c = *slot;
                *slot = c + 1 + (rb << 32);
                let kh = k.get_unchecked_mut(h);
                debug_assert!(*kh < start[h + 1]);
                *local.get_unchecked_mut(*kh) = c;
                *ldist.get_unchecked_mut(*kh) = d;
                *kh += rb as usize;
            }
        };
        for j in 0..seg {
            for h in 0..SEGS {
                step(h, h * seg + j);
            }
        }
        for e in SEGS * seg..n {
            step(SEGS, e);
        }
    }
    // Segment offsets (in place) and totals.
    let tot = &mut s.tot;
    tot.fill(0);
    for h in 0..=SEGS {
        for (t, x) in tot.iter_mut().zip(&mut s.hist[h * nb..(h + 1) * nb]) {
            let v = *x;
            *x = *t;
            *t += v;
        }
    }
    finish_stats(s, bits, opts, total_rel, Some(start))
}

/// Steps 3-5 of [`query_stats`] and the other metrics, from the packed totals per distance in
/// `s.tot` and the relevant items' counters in `s.local` / `s.ldist`: grouped by segment with the
/// run starts `seg_start` (segment offsets in `s.hist`), or, when `seg_start` is None, one run of
/// all relevant items in database order holding their positions within their bucket.
#[allow(clippy::needless_range_loop)]
fn finish_stats(s: &mut Scratch, bits: usize, opts: &EvalOptions, total_rel: usize, seg_start: Option<[usize; SEGS + 2]>) -> QueryStats {
    let nb = bits + 1;
    let tot = &s.tot;
    debug_assert_eq!(tot.iter().map(|&t| (t >> 32) as usize).sum::<usize>(), total_rel);
    // S_d + 1 and H_d + 1 (ranks and hit counts start at 1).
    let (s1, h1) = (&mut s.s1, &mut s.h1);
    s1[0] = 1;
    h1[0] = 1;
    for d in 0..nb {
        s1[d + 1] = s1[d] + (tot[d] & LO);
        h1[d + 1] = h1[d] + (tot[d] >> 32);
    }
    let nr = total_rel;
    let Some(start) = seg_start else {
        // One run: (hits, rank) = (m, pos) + (H_d + 1, S_d + 1), one packed table entry.
        let mut base = [0u64; 256];
        for (d, b) in base.iter_mut().enumerate().take(nb) {
            *b = (h1[d] << 32) + s1[d];
        }
        // hits / rank per relevant item; the packed pairs are kept only when AP@k or precision@N
        // need them.
        let keep = opts.topk.is_some() || !opts.precision_at.is_empty();
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the one-run layout (seg_start None) comes only from the fast path.
        let sum = unsafe { fast::fixup_sum_ratios(&s.local[..nr], &s.ldist8[..nr], &base, keep.then(|| &mut s.hit_rank[..nr])) };
        #[cfg(not(target_arch = "x86_64"))]
        let sum = unreachable!("the one-run layout is x86-64 only");
        return other_metrics(s, bits, opts, total_rel, Some(sum));
    };
    // Per segment and distance, one packed addend: the segment's offset plus (H_d + 1, S_d + 1),
    // so that a relevant item's (hits, rank) is its recorded counter plus one table entry.
    for h in 0..=SEGS {
        for (d, x) in s.hist[h * nb..(h + 1) * nb].iter_mut().enumerate() {
            *x += (h1[d] << 32) + s1[d];
        }
    }
    // Relevant items in database order: segment by segment, each run without its spare slot.
    let mut i = 0;
    for h in 0..=SEGS {
        let base = &s.hist[h * nb..(h + 1) * nb];
        let run = start[h]..start[h + 1] - 1;
        let out = &mut s.hit_rank[i..i + run.len()];
        for ((o, &c), &d) in out.iter_mut().zip(&s.local[run.clone()]).zip(&s.ldist[run.clone()]) {
            // SAFETY: d <= bits < nb.
            *o = c + unsafe { *base.get_unchecked(d as usize) };
        }
        i += run.len();
    }
    assert_eq!(i, nr);
    other_metrics(s, bits, opts, total_rel, None)
}

/// AP, AP@k, precision@N and the radius counts from `s.hit_rank` (all relevant items, database
/// order) and `s.s1` / `s.h1`.
/// `ratio_sum`: Σ hits/rank when the caller has it already (same lanes as [`sum_ratios`]).
fn other_metrics(s: &Scratch, bits: usize, opts: &EvalOptions, total_rel: usize, ratio_sum: Option<f64>) -> QueryStats {
    let nr = total_rel;
    let (s1, h1) = (&s.s1, &s.h1);
    let hit_rank = &s.hit_rank[..nr];
    let ap = ratio_sum.unwrap_or_else(|| sum_ratios(hit_rank)) / nr as f64;
    // AP@k: relevant items of rank <= k; R_k = their count.
    let mut apk = 0.0;
    if let Some(k) = opts.topk {
        let (mut sum, mut hits) = (0.0, 0usize);
        for &v in hit_rank {
            if (v & LO) as usize <= k {
                sum += (v >> 32) as f64 / (v & LO) as f64;
                hits += 1;
            }
        }
        if hits > 0 {
            apk = sum / hits as f64;
        }
    }
    // precision@N: count relevant ranks <= N for every requested N (binary search per rank).
    let mut hits_at = vec![0.0; opts.precision_at.len()];
    if !opts.precision_at.is_empty() {
        let mut sorted: Vec<usize> = opts.precision_at.clone();
        sorted.sort_unstable();
        sorted.dedup();
        let mut cnt = vec![0usize; sorted.len() + 1];
        for &v in hit_rank {
            let r = (v & LO) as usize;
            cnt[sorted.partition_point(|&x| x < r)] += 1;
        }
        let mut below = vec![0usize; sorted.len()];
        let mut run = 0;
        for (i, b) in below.iter_mut().enumerate() {
            run += cnt[i];
            *b = run;
        }
        for (h, &big_n) in hits_at.iter_mut().zip(&opts.precision_at) {
            let i = sorted.binary_search(&big_n).unwrap();
            *h = below[i] as f64 / big_n as f64;
        }
    }
    let radius_counts =
        if opts.pr_curve { (0..=bits).map(|r| ((s1[r + 1] - 1) as usize, (h1[r + 1] - 1) as usize)).collect() } else { vec![] };
    QueryStats { ap: Some(ap), apk, hits_at, radius_counts, total_rel }
}

/// The AVX-512 evaluation path (distances up to 255): byte distances, one counting pass over
/// 64-item blocks, and hits / rank by a refined reciprocal instead of a division.
#[cfg(target_arch = "x86_64")]
mod fast {
    use std::arch::x86_64::*;

    /// Everything the functions below use, checked at run time.
    pub(super) fn available() -> bool {
        super::Kernel::Avx512.is_available()
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("bmi1")
            && std::arch::is_x86_feature_detected!("bmi2")
    }

    /// Hamming distances of one 64-bit query word to every 64-bit code of `db` (8 bytes per
    /// code, little-endian words as `search` reads them), as bytes: XOR, VPOPCNTQ and a narrowing
    /// store, 8 codes per step.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW, VPOPCNTDQ and POPCNT (`out` holding a byte per code is asserted).
    #[target_feature(enable = "avx512f,avx512bw,avx512vpopcntdq,popcnt")]
    pub(super) unsafe fn distances_64(q: u64, db: &[u8], out: &mut [u8]) {
        let n = db.len() / 8;
        assert!(out.len() >= n);
        let qv = _mm512_set1_epi64(q as i64);
        let full = n / 8 * 8;
        let mut i = 0;
        while i < full {
            let x = _mm512_loadu_si512(db.as_ptr().add(i * 8) as *const _);
            let c = _mm512_popcnt_epi64(_mm512_xor_si512(x, qv));
            _mm_storel_epi64(out.as_mut_ptr().add(i) as *mut __m128i, _mm512_cvtepi64_epi8(c));
            i += 8;
        }
        for j in full..n {
            let x = u64::from_le_bytes(db[j * 8..j * 8 + 8].try_into().unwrap());
            out[j] = (x ^ q).count_ones() as u8;
        }
    }

    /// `out[i] = dist[i]` as bytes (every distance is at most 255).
    ///
    /// # Safety
    /// The CPU must have AVX-512 F and BW (the lengths are asserted).
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn narrow(dist: &[u32], out: &mut [u8]) {
        let n = dist.len();
        assert!(out.len() >= n);
        let full = n / 16 * 16;
        let mut i = 0;
        while i < full {
            let v = _mm512_loadu_si512(dist.as_ptr().add(i) as *const _);
            _mm_storeu_si128(out.as_mut_ptr().add(i) as *mut __m128i, _mm512_cvtepi32_epi8(v));
            i += 16;
        }
        for j in full..n {
            out[j] = dist[j] as u8;
        }
    }

    /// The counting pass for one query over byte distances `d8` (`n` items, padded to whole
    /// 64-item blocks) and the relevance bitmask `relm`. Fills, for every relevant item in
    /// database order, `local` = (relevant items of its distance bucket before it) << 32 |
    /// (items of its bucket before it) and `ldist` = its distance, and `tot` = per distance,
    /// relevant items << 32 | items.
    ///
    /// One table of packed counters (relevant << 32 | items). Per block, with its 64 distances in
    /// one register: each relevant item (bits of the block's mask, in order) reads its bucket's
    /// counter, which holds the items of the blocks before and the relevant items before it
    /// (the relevant half is bumped item by item), and adds the items of its bucket below it in
    /// this block (popcount of a byte-compare mask, BZHI'd at its lane); then every item of the
    /// block bumps the item half of its counter.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW, POPCNT, BMI1 and BMI2 (the lengths are asserted).
    #[target_feature(enable = "avx512f,avx512bw,popcnt,bmi1,bmi2")]
    pub(super) unsafe fn count(d8: &[u8], n: usize, relm: &[u64], local: &mut [u64], ldist: &mut [u8], tot: &mut [u64]) {
        assert!(relm.len() == n.div_ceil(64) && d8.len() >= relm.len() * 64 && tot.len() <= 256);
        assert_eq!(local.len(), ldist.len());
        let rel_total: usize = relm.iter().map(|w| w.count_ones() as usize).sum();
        assert_eq!(rel_total, local.len(), "one output slot per relevant item");
        let mut tab = [0u64; 256];
        let mut k = 0usize;
        for (w, &r) in relm.iter().enumerate() {
            let p = d8.as_ptr().add(w * 64);
            let dz = _mm512_loadu_si512(p as *const _);
            let mut rr = r;
            while rr != 0 {
                let t = _tzcnt_u64(rr) as u32;
                let d = *p.add(t as usize);
                let eq = _mm512_cmpeq_epi8_mask(dz, _mm512_set1_epi8(d as i8));
                let below = _bzhi_u64(eq, t).count_ones() as u64;
                let slot = tab.get_unchecked_mut(d as usize);
                let v = *slot;
                *slot = v + (1 << 32);
                // k < local.len(): one slot per set bit of relm (asserted above).
                *local.get_unchecked_mut(k) = v + below;
                *ldist.get_unchecked_mut(k) = d;
                k += 1;
                rr = _blsr_u64(rr);
            }
            let len = (n - w * 64).min(64);
            let mut t = 0;
            while t + 4 <= len {
                *tab.get_unchecked_mut(*p.add(t) as usize) += 1;
                *tab.get_unchecked_mut(*p.add(t + 1) as usize) += 1;
                *tab.get_unchecked_mut(*p.add(t + 2) as usize) += 1;
                *tab.get_unchecked_mut(*p.add(t + 3) as usize) += 1;
                t += 4;
            }
            while t < len {
                *tab.get_unchecked_mut(*p.add(t) as usize) += 1;
                t += 1;
            }
        }
        let nt = tot.len();
        tot.copy_from_slice(&tab[..nt]);
    }

    /// Σ hits / rank over the relevant items, (hits, rank) = local[i] + base[ldist[i]] (packed
    /// hits << 32 | rank), 8 lanes at a time; also stores the packed pairs when `hit_rank` is
    /// given. 1 / rank is VRCP14PD refined by two Newton steps (relative error below 2^-50, far
    /// inside the 1e-9 agreement with a sorted ranking), so the divider is not the bottleneck.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, DQ and BW (the lengths are asserted).
    #[target_feature(enable = "avx512f,avx512dq,avx512bw")]
    pub(super) unsafe fn fixup_sum_ratios(local: &[u64], ldist: &[u8], base: &[u64; 256], mut hit_rank: Option<&mut [u64]>) -> f64 {
        let n = local.len();
        assert_eq!(ldist.len(), n);
        if let Some(h) = hit_rank.as_deref() {
            assert!(h.len() >= n);
        }
        let lo = _mm512_set1_epi64(0xffff_ffff);
        let two = _mm512_set1_pd(2.0);
        let mut acc = _mm512_setzero_pd();
        let full = n / 8 * 8;
        let mut i = 0;
        while i < full {
            let l = _mm512_loadu_si512(local.as_ptr().add(i) as *const _);
            let di = _mm512_cvtepu8_epi64(_mm_loadl_epi64(ldist.as_ptr().add(i) as *const __m128i));
            let b = _mm512_i64gather_epi64::<8>(di, base.as_ptr() as *const i64);
            let v = _mm512_add_epi64(l, b);
            if let Some(h) = hit_rank.as_deref_mut() {
                _mm512_storeu_si512(h.as_mut_ptr().add(i) as *mut _, v);
            }
            let hits = _mm512_cvtepu64_pd(_mm512_srli_epi64::<32>(v));
            let rank = _mm512_cvtepu64_pd(_mm512_and_si512(v, lo));
            let mut r = _mm512_rcp14_pd(rank);
            r = _mm512_mul_pd(r, _mm512_fnmadd_pd(rank, r, two));
            r = _mm512_mul_pd(r, _mm512_fnmadd_pd(rank, r, two));
            acc = _mm512_fmadd_pd(hits, r, acc);
            i += 8;
        }
        let mut sum = _mm512_reduce_add_pd(acc);
        for j in full..n {
            let v = local[j] + base[ldist[j] as usize];
            if let Some(h) = hit_rank.as_deref_mut() {
                h[j] = v;
            }
            sum += (v >> 32) as f64 / (v & 0xffff_ffff) as f64;
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes::BinaryCodes;
    use ndarray::{array, Array2};
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// The previous implementation (counting sort of each ranking), kept as a reference.
    fn reference_counting(
        q: CodesRef,
        db: CodesRef,
        ql: ArrayView2<u8>,
        dl: ArrayView2<u8>,
        opts: &EvalOptions,
    ) -> Result<DirectionMetrics> {
        check_inputs(q, db, ql, dl)?;
        if opts.topk == Some(0) {
            bail!("mAP@k needs k >= 1");
        }
        let qs = LabelSets::new(ql);
        let ds = LabelSets::new(dl);
        let bits = q.bits;
        let n = db.n;
        let mut sum_ap = 0.0;
        let mut sum_apk = 0.0;
        let mut excluded = 0;
        let mut pn_sum = vec![0.0; opts.precision_at.len()];
        let mut pr_prec = vec![0.0; bits + 1];
        let mut pr_prec_cnt = vec![0usize; bits + 1];
        let mut pr_rec = vec![0.0; bits + 1];
        let mut dist = vec![0u32; n];
        let mut order: Vec<u32> = Vec::with_capacity(n);
        for i in 0..q.n {
            crate::search::distances_with(Kernel::Portable, q.row(i), db, &mut dist);
            // Stable counting sort by distance = order by (distance, index).
            let mut counts = vec![0usize; bits + 2];
            for &d in &dist {
                counts[d as usize + 1] += 1;
            }
            for b in 1..counts.len() {
                counts[b] += counts[b - 1];
            }
            let starts = counts.clone();
            order.clear();
            order.resize(n, 0);
            let mut next = counts;
            for (j, &d) in dist.iter().enumerate() {
                order[next[d as usize]] = j as u32;
                next[d as usize] += 1;
            }
            let total_rel = (0..n).filter(|&j| qs.shares(i, &ds, j)).count();
            if total_rel == 0 {
                excluded += 1;
                continue;
            }
            let mut hits = 0usize;
            let mut ap = 0.0;
            let mut apk = 0.0;
            let mut hits_k = 0usize;
            let mut pn_idx = 0;
            for (r, &j) in order.iter().enumerate() {
                if qs.shares(i, &ds, j as usize) {
                    hits += 1;
                    let p = hits as f64 / (r + 1) as f64;
                    ap += p;
                    if let Some(k) = opts.topk {
                        if r < k {
                            apk += p;
                            hits_k += 1;
                        }
                    }
                }
                while pn_idx < opts.precision_at.len() && opts.precision_at[pn_idx] == r + 1 {
                    pn_sum[pn_idx] += hits as f64 / (r + 1) as f64;
                    pn_idx += 1;
                }
            }
            // precision@N beyond the database size: all n retrieved.
            while pn_idx < opts.precision_at.len() {
                pn_sum[pn_idx] += hits as f64 / opts.precision_at[pn_idx] as f64;
                pn_idx += 1;
            }
            sum_ap += ap / total_rel as f64;
            if hits_k > 0 {
                sum_apk += apk / hits_k as f64;
            }
            if opts.pr_curve {
                let mut rel_within = 0usize;
                for r in 0..=bits {
                    let (s, e) = (starts[r], starts[r + 1]);
                    rel_within += order[s..e].iter().filter(|&&j| qs.shares(i, &ds, j as usize)).count();
                    let retrieved = e;
                    if retrieved > 0 {
                        pr_prec[r] += rel_within as f64 / retrieved as f64;
                        pr_prec_cnt[r] += 1;
                    }
                    pr_rec[r] += rel_within as f64 / total_rel as f64;
                }
            }
        }
        let counted = q.n - excluded;
        let denom = counted.max(1) as f64;
        let pr_curve = if opts.pr_curve {
            (0..=bits)
                .map(|r| PrPoint {
                    radius: r,
                    precision: if pr_prec_cnt[r] > 0 { pr_prec[r] / pr_prec_cnt[r] as f64 } else { 0.0 },
                    recall: pr_rec[r] / denom,
                })
                .collect()
        } else {
            vec![]
        };
        Ok(DirectionMetrics {
            map: sum_ap / denom,
            map_at_k: opts.topk.map(|_| sum_apk / denom),
            k: opts.topk,
            n_queries: q.n,
            excluded_queries: excluded,
            precision_at_n: opts.precision_at.iter().zip(&pn_sum).map(|(&n, &s)| (n, s / denom)).collect(),
            pr_curve,
        })
    }

    /// Plain O(n log n) reference: sort every ranking by (distance, index) and walk it.
    fn reference_sort(q: CodesRef, db: CodesRef, ql: ArrayView2<u8>, dl: ArrayView2<u8>, opts: &EvalOptions) -> DirectionMetrics {
        let bits = q.bits;
        let bit = |row: &[u8], j: usize| (row[j / 8] >> (7 - j % 8)) & 1;
        let relevant = |i: usize, j: usize| ql.row(i).iter().zip(dl.row(j)).any(|(&a, &b)| a != 0 && b != 0);
        let (mut sum_ap, mut sum_apk, mut excluded) = (0.0, 0.0, 0usize);
        let mut pn = vec![0.0; opts.precision_at.len()];
        let (mut pp, mut ppc, mut pr) = (vec![0.0; bits + 1], vec![0usize; bits + 1], vec![0.0; bits + 1]);
        for i in 0..q.n {
            let mut rank: Vec<(usize, usize)> =
                (0..db.n).map(|j| ((0..bits).filter(|&b| bit(q.row(i), b) != bit(db.row(j), b)).count(), j)).collect();
            rank.sort();
            let rel: Vec<bool> = rank.iter().map(|&(_, j)| relevant(i, j)).collect();
            let total = rel.iter().filter(|&&r| r).count();
            if total == 0 {
                excluded += 1;
                continue;
            }
            let (mut hits, mut ap) = (0usize, 0.0);
            let (mut apk, mut hk) = (0.0, 0usize);
            for (r, &is_rel) in rel.iter().enumerate() {
                if is_rel {
                    hits += 1;
                    ap += hits as f64 / (r + 1) as f64;
                    if opts.topk.is_some_and(|k| r < k) {
                        apk += hits as f64 / (r + 1) as f64;
                        hk += 1;
                    }
                }
            }
            sum_ap += ap / total as f64;
            if hk > 0 {
                sum_apk += apk / hk as f64;
            }
            for (o, &big_n) in opts.precision_at.iter().enumerate() {
                pn[o] += rel.iter().take(big_n).filter(|&&r| r).count() as f64 / big_n as f64;
            }
            for r in 0..=bits {
                let within: Vec<bool> = rank.iter().zip(&rel).filter(|((d, _), _)| *d <= r).map(|(_, &x)| x).collect();
                let h = within.iter().filter(|&&x| x).count();
                if !within.is_empty() {
                    pp[r] += h as f64 / within.len() as f64;
                    ppc[r] += 1;
                }
                pr[r] += h as f64 / total as f64;
            }
        }
        let denom = (q.n - excluded).max(1) as f64;
        DirectionMetrics {
            map: sum_ap / denom,
            map_at_k: opts.topk.map(|_| sum_apk / denom),
            k: opts.topk,
            n_queries: q.n,
            excluded_queries: excluded,
            precision_at_n: opts.precision_at.iter().zip(&pn).map(|(&n, &s)| (n, s / denom)).collect(),
            pr_curve: if opts.pr_curve {
                (0..=bits)
                    .map(|r| PrPoint { radius: r, precision: if ppc[r] > 0 { pp[r] / ppc[r] as f64 } else { 0.0 }, recall: pr[r] / denom })
                    .collect()
            } else {
                vec![]
            },
        }
    }

    fn close(a: &DirectionMetrics, b: &DirectionMetrics, tol: f64) -> Result<(), String> {
        let near = |x: f64, y: f64| (x - y).abs() <= tol;
        if !near(a.map, b.map) {
            return Err(format!("map {} vs {}", a.map, b.map));
        }
        if a.map_at_k.is_some() != b.map_at_k.is_some() || !near(a.map_at_k.unwrap_or(0.0), b.map_at_k.unwrap_or(0.0)) {
            return Err(format!("map@k {:?} vs {:?}", a.map_at_k, b.map_at_k));
        }
        if (a.k, a.n_queries, a.excluded_queries) != (b.k, b.n_queries, b.excluded_queries) {
            return Err(format!("counts {:?} vs {:?}", (a.k, a.n_queries, a.excluded_queries), (b.k, b.n_queries, b.excluded_queries)));
        }
        if a.precision_at_n.len() != b.precision_at_n.len()
            || a.precision_at_n.iter().zip(&b.precision_at_n).any(|(x, y)| x.0 != y.0 || !near(x.1, y.1))
        {
            return Err(format!("P@N {:?} vs {:?}", a.precision_at_n, b.precision_at_n));
        }
        if a.pr_curve.len() != b.pr_curve.len()
            || a.pr_curve
                .iter()
                .zip(&b.pr_curve)
                .any(|(x, y)| x.radius != y.radius || !near(x.precision, y.precision) || !near(x.recall, y.recall))
        {
            return Err("PR curve differs".into());
        }
        Ok(())
    }

    /// Codes from a few prototypes with flipped bits (ties, duplicates) and labels correlated
    /// with the prototypes, so that mAP is far from trivial.
    fn gen_case(
        seed: u64,
        n: usize,
        nq: usize,
        bits: usize,
        classes: usize,
        density: f64,
    ) -> (BinaryCodes, BinaryCodes, Array2<u8>, Array2<u8>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let protos = 1 + rng.gen_range(0..6usize);
        let pbits: Vec<Vec<u8>> = (0..protos).map(|_| (0..bits).map(|_| rng.gen_range(0..2u8)).collect()).collect();
        let plabels: Vec<Vec<u8>> = (0..protos).map(|_| (0..classes).map(|_| rng.gen_bool(density) as u8).collect()).collect();
        let make = |m: usize, rng: &mut ChaCha8Rng| {
            let mut b = Array2::<u8>::zeros((m, bits));
            let mut l = Array2::<u8>::zeros((m, classes));
            let flip = rng.gen_range(0.0..0.5);
            for i in 0..m {
                let p = rng.gen_range(0..protos);
                for j in 0..bits {
                    b[[i, j]] = pbits[p][j] ^ rng.gen_bool(flip) as u8;
                }
                for c in 0..classes {
                    l[[i, c]] = if rng.gen_bool(0.8) { plabels[p][c] } else { rng.gen_bool(density) as u8 };
                }
            }
            (BinaryCodes::from_bits(b.view()).unwrap(), l)
        };
        let (db, dl) = make(n, &mut rng);
        let (q, ql) = make(nq, &mut rng);
        (q, db, ql, dl)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn fast_evaluation_equals_references(
            bits in prop_oneof![Just(16usize), Just(32), Just(64), Just(128), Just(256), 1..=300usize],
            n in 1usize..=600, nq in 1usize..=12, classes in prop_oneof![1usize..=8, 60usize..=70],
            density in 0.02f64..0.5, topk in 1usize..=300, seed in any::<u64>(),
        ) {
            let (q, db, ql, dl) = gen_case(seed, n, nq, bits, classes, density);
            // Sorted N list (the counting reference needs it), including N beyond the database.
            let opts = EvalOptions { topk: Some(topk), precision_at: vec![1, 2, n / 2 + 1, n, n + 7], pr_curve: true };
            let want = reference_sort(q.view(), db.view(), ql.view(), dl.view(), &opts);
            let old = reference_counting(q.view(), db.view(), ql.view(), dl.view(), &opts).unwrap();
            prop_assert!(close(&old, &want, 1e-12).is_ok(), "{:?}", close(&old, &want, 1e-12));
            for kernel in Kernel::available() {
                let got = evaluate_with(kernel, q.view(), db.view(), ql.view(), dl.view(), &opts).unwrap();
                prop_assert!(close(&got, &want, 1e-12).is_ok(), "{:?} {:?}", kernel, close(&got, &want, 1e-12));
                // mAP alone (the fast path then keeps no per-item ranks).
                let plain = evaluate_with(kernel, q.view(), db.view(), ql.view(), dl.view(), &EvalOptions::default()).unwrap();
                prop_assert!((plain.map - want.map).abs() <= 1e-12, "{:?} plain mAP {} vs {}", kernel, plain.map, want.map);
            }
        }
    }

    /// Sizes around the 64-item blocks and the counting segments, one distance for every item
    /// (one bucket holds the whole database), every item relevant, and 255 / 256 bits (the
    /// AVX-512 counting handles distances up to 255; 256 bits take the segmented path).
    #[test]
    fn block_edges_and_single_bucket() {
        let opts = |n: usize| EvalOptions { topk: Some(n / 3 + 1), precision_at: vec![1, n / 2 + 1, n + 1], pr_curve: true };
        for (case, &n) in [1usize, 63, 64, 65, 255, 256, 257, 511, 1000, 1027].iter().enumerate() {
            for bits in [8usize, 64] {
                let (q, db, ql, dl) = gen_case(100 + case as u64, n, 3, bits, 5, 0.4);
                let want = reference_sort(q.view(), db.view(), ql.view(), dl.view(), &opts(n));
                for kernel in Kernel::available() {
                    let got = evaluate_with(kernel, q.view(), db.view(), ql.view(), dl.view(), &opts(n)).unwrap();
                    close(&got, &want, 1e-12).unwrap_or_else(|e| panic!("n {n} bits {bits} {kernel:?}: {e}"));
                }
            }
            // All codes equal (every distance 0) and every item relevant: AP = 1 exactly.
            let zq = BinaryCodes::zeros(2, 16);
            let zdb = BinaryCodes::zeros(n, 16);
            let (lq, ld) = (Array2::<u8>::ones((2, 3)), Array2::<u8>::ones((n, 3)));
            let want = reference_sort(zq.view(), zdb.view(), lq.view(), ld.view(), &opts(n));
            assert_eq!(want.map, 1.0);
            for kernel in Kernel::available() {
                let got = evaluate_with(kernel, zq.view(), zdb.view(), lq.view(), ld.view(), &opts(n)).unwrap();
                close(&got, &want, 1e-12).unwrap_or_else(|e| panic!("n {n} constant {kernel:?}: {e}"));
            }
        }
        for bits in [255usize, 256] {
            let (q, db, ql, dl) = gen_case(7, 700, 4, bits, 6, 0.3);
            let want = reference_sort(q.view(), db.view(), ql.view(), dl.view(), &opts(700));
            for kernel in Kernel::available() {
                let got = evaluate_with(kernel, q.view(), db.view(), ql.view(), dl.view(), &opts(700)).unwrap();
                close(&got, &want, 1e-12).unwrap_or_else(|e| panic!("bits {bits} {kernel:?}: {e}"));
            }
        }
    }

    #[test]
    fn bad_input_is_refused_clearly() {
        let (q, db, ql, dl) = gen_case(1, 20, 3, 16, 4, 0.3);
        let q32 = BinaryCodes::zeros(3, 32);
        let e = |r: Result<DirectionMetrics>| format!("{:#}", r.unwrap_err());
        let o = EvalOptions::default();
        assert!(e(evaluate(q32.view(), db.view(), ql.view(), dl.view(), &o)).contains("code length mismatch"));
        assert!(e(evaluate(q.view(), db.view(), dl.view(), dl.view(), &o)).contains("3 query codes but 20 query label rows"));
        assert!(e(evaluate(q.view(), db.view(), ql.view(), ql.view(), &o)).contains("20 database codes but 3"));
        let ql5 = Array2::<u8>::zeros((3, 5));
        assert!(e(evaluate(q.view(), db.view(), ql5.view(), dl.view(), &o)).contains("5 classes"));
        let k0 = EvalOptions { topk: Some(0), ..Default::default() };
        assert!(e(evaluate(q.view(), db.view(), ql.view(), dl.view(), &k0)).contains("k >= 1"));
        let bad = CodesRef { n: 3, bits: 16, data: &[0u8; 5] };
        assert!(e(evaluate(bad, db.view(), ql.view(), dl.view(), &o)).contains("expected 6 bytes"));
    }

    #[test]
    fn unsorted_precision_points_and_thread_independence() {
        let (q, db, ql, dl) = gen_case(5, 3000, 40, 64, 24, 0.15);
        let opts = EvalOptions { topk: Some(100), precision_at: vec![500, 10, 2999, 3000, 1], pr_curve: true };
        let want = reference_sort(q.view(), db.view(), ql.view(), dl.view(), &opts);
        for threads in [1usize, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let got = pool.install(|| evaluate(q.view(), db.view(), ql.view(), dl.view(), &opts)).unwrap();
            close(&got, &want, 1e-12).unwrap();
            assert_eq!(got.precision_at_n.iter().map(|p| p.0).collect::<Vec<_>>(), vec![500, 10, 2999, 3000, 1]);
        }
        let e = evaluate(q.view(), db.view(), ql.view(), dl.view(), &EvalOptions { precision_at: vec![0], ..Default::default() });
        assert!(format!("{:#}", e.unwrap_err()).contains("N >= 1"));
    }

    #[test]
    fn hand_worked_example() {
        // One query 0000; database distances 1, 0, 2, 1 -> ranking by (distance, index): 1, 0, 3, 2.
        let q = BinaryCodes::from_bits(array![[0u8, 0, 0, 0]].view()).unwrap();
        let db = BinaryCodes::from_bits(array![[1u8, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 1]].view()).unwrap();
        let ql = array![[1u8, 0]];
        // Relevant: items 0 and 2. Ranks: item1 (no), item0 (yes, P=1/2), item3 (no), item2 (yes, P=2/4).
        let dl = array![[1u8, 0], [0, 1], [1, 1], [0, 1]];
        let opts = EvalOptions { topk: Some(2), precision_at: vec![1, 2, 4], pr_curve: true };
        let m = evaluate(q.view(), db.view(), ql.view(), dl.view(), &opts).unwrap();
        assert!((m.map - (0.5 + 0.5) / 2.0).abs() < 1e-12);
        assert!((m.map_at_k.unwrap() - 0.5).abs() < 1e-12); // one hit in top 2, P=1/2
        assert_eq!(m.precision_at_n, vec![(1, 0.0), (2, 0.5), (4, 0.5)]);
        // radius 0: {1} -> P 0, R 0; radius 1: {1,0,3} -> P 1/3, R 1/2; radius 2: all -> P 1/2, R 1.
        assert_eq!(m.pr_curve[0], PrPoint { radius: 0, precision: 0.0, recall: 0.0 });
        assert!((m.pr_curve[1].precision - 1.0 / 3.0).abs() < 1e-12 && (m.pr_curve[1].recall - 0.5).abs() < 1e-12);
        assert!((m.pr_curve[2].precision - 0.5).abs() < 1e-12 && (m.pr_curve[2].recall - 1.0).abs() < 1e-12);
        // A query with no relevant item is excluded and counted.
        let q2 = BinaryCodes::from_bits(array![[0u8, 0, 0, 0], [1, 1, 1, 1]].view()).unwrap();
        let ql2 = array![[1u8, 0, 0], [0, 0, 1]];
        let dl2 = array![[1u8, 0, 0], [0, 1, 0], [1, 1, 0], [0, 1, 0]];
        let m2 = evaluate(q2.view(), db.view(), ql2.view(), dl2.view(), &EvalOptions::default()).unwrap();
        assert_eq!(m2.excluded_queries, 1);
        assert!((m2.map - 0.5).abs() < 1e-12);
    }
}
