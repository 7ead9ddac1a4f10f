//! Popcount kernels, chosen at run time.
//!
//! Every kernel answers the same question for a group of queries and a block of database codes:
//! which codes lie at a distance below each query's current limit (see [`Cand`]). The hot loops
//! compute XOR + popcount for a chunk of codes and keep only a running lane-wise minimum per
//! query; one compare and one (almost always not-taken) branch per chunk and query decide whether
//! the chunk holds a candidate. Only then is the chunk revisited code by code ("hit" path).
//!
//! Database layouts ([`Layout`]):
//! - 16, 32 and 64 bits: the packed rows are read in place (a chunk is 512 bytes: 256, 128 or 64
//!   codes); lanes of 16, 32 or 64 bits hold one code each;
//! - any other length: each block of the database is first repacked word-major in groups of 8
//!   codes (`group g, word w` = 8 consecutive u64, the w-th word of codes 8g..8g+7, padding bits
//!   cleared), so one 512-bit register holds the same word of 8 codes; 128 and 256 bits have
//!   their own instantiations (2 and 4 words). The repack costs one pass over the block per query
//!   block, shared by all its queries.
//!
//! Kernels: AVX-512 (VPOPCNTDQ + BITALG), AVX2 (nibble lookup with `vpshufb`, Mula's method),
//! scalar POPCNT, and a portable fallback (`count_ones`).

#![allow(clippy::needless_range_loop)] // lane and word indices read more clearly in SIMD code

use super::select::Cand;

/// A popcount implementation; [`Kernel::auto`] picks the fastest the CPU has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// `u64::count_ones` without CPU-specific instructions (any architecture).
    Portable,
    /// x86-64 POPCNT, one 64-bit word at a time.
    Popcnt,
    /// AVX2: 256-bit XOR and nibble-lookup popcount (`vpshufb`).
    Avx2,
    /// AVX-512 F/BW with VPOPCNTDQ and BITALG: 512-bit popcount per 16-, 32- or 64-bit lane.
    Avx512,
}

impl Kernel {
    pub const ALL: [Kernel; 4] = [Kernel::Portable, Kernel::Popcnt, Kernel::Avx2, Kernel::Avx512];

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            Kernel::Popcnt => "popcnt",
            Kernel::Avx2 => "avx2",
            Kernel::Avx512 => "avx512",
        }
    }

    pub fn from_name(s: &str) -> Option<Kernel> {
        Kernel::ALL.into_iter().find(|k| k.name().eq_ignore_ascii_case(s.trim()))
    }

    /// Whether this CPU can run the kernel.
    pub fn is_available(self) -> bool {
        match self {
            Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Popcnt => std::arch::is_x86_feature_detected!("popcnt"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => std::arch::is_x86_feature_detected!("popcnt") && std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => {
                std::arch::is_x86_feature_detected!("popcnt")
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vpopcntdq")
                    && std::arch::is_x86_feature_detected!("avx512bitalg")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Kernels this CPU can run, slowest first.
    pub fn available() -> Vec<Kernel> {
        Kernel::ALL.into_iter().filter(|k| k.is_available()).collect()
    }

    /// The fastest available kernel.
    pub fn best() -> Kernel {
        *Kernel::available().last().expect("portable is always available")
    }

    /// [`Kernel::best`], unless the environment variable `CMH_KERNEL` names another available
    /// kernel (`portable`, `popcnt`, `avx2`, `avx512`; for benchmarks). Decided once per process.
    pub fn auto() -> Kernel {
        static AUTO: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *AUTO.get_or_init(|| match std::env::var("CMH_KERNEL") {
            Ok(s) if !s.trim().is_empty() => match Kernel::from_name(&s) {
                Some(k) if k.is_available() => k,
                _ => {
                    log::warn!("CMH_KERNEL={s} is not an available kernel; using {}", Kernel::best().name());
                    Kernel::best()
                }
            },
            _ => Kernel::best(),
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    N16,
    N32,
    N64,
    /// Repacked word-major groups of 8 codes, `w` u64 words per code.
    Words,
}

/// How codes of one length are read.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geometry {
    pub bits: usize,
    pub stride: usize,
    /// 64-bit words per code.
    pub w: usize,
    /// Valid bits of the last word (little-endian word of packbits bytes).
    pub tail_mask: u64,
    pub layout: Layout,
}

impl Geometry {
    pub fn new(bits: usize) -> Self {
        assert!(bits >= 1);
        let stride = bits.div_ceil(8);
        let w = bits.div_ceil(64);
        let last_bits = bits - 64 * (w - 1);
        let full = last_bits / 8;
        let mut tail_mask = if full == 8 { u64::MAX } else { (1u64 << (8 * full)) - 1 };
        let rem = last_bits % 8;
        if rem > 0 {
            // numpy.packbits puts bit j of a byte at position 7 - j: the first `rem` bits are the top ones.
            tail_mask |= ((0xffu64 << (8 - rem)) & 0xff) << (8 * full);
        }
        let layout = match bits {
            16 => Layout::N16,
            32 => Layout::N32,
            64 => Layout::N64,
            _ => Layout::Words,
        };
        Self { bits, stride, w, tail_mask, layout }
    }

    /// Codes per chunk of the hot loops.
    pub fn chunk(&self) -> usize {
        match self.layout {
            Layout::N16 => 256,
            Layout::N32 => 128,
            Layout::N64 | Layout::Words => 64,
        }
    }

    /// Word `wi` of a packed row (little-endian, zero-extended, padding bits cleared).
    #[inline(always)]
    pub fn word(&self, row: &[u8], wi: usize) -> u64 {
        let s = wi * 8;
        let v = if s + 8 <= row.len() {
            u64::from_le_bytes(row[s..s + 8].try_into().unwrap())
        } else {
            let mut b = [0u8; 8];
            b[..row.len() - s].copy_from_slice(&row[s..]);
            u64::from_le_bytes(b)
        };
        if wi + 1 == self.w {
            v & self.tail_mask
        } else {
            v
        }
    }

    /// Appends the `w` words of a query row.
    pub fn push_words(&self, row: &[u8], out: &mut Vec<u64>) {
        for wi in 0..self.w {
            out.push(self.word(row, wi));
        }
    }

    /// Hamming distance between prepared query words and a packed row.
    #[inline(always)]
    pub fn dist(&self, qw: &[u64], row: &[u8]) -> u32 {
        let mut d = 0;
        for wi in 0..self.w {
            d += (self.word(row, wi) ^ qw[wi]).count_ones();
        }
        d
    }

    /// Repacks `ncodes` (a multiple of 8) packed rows word-major in groups of 8 (see module doc).
    pub fn repack(&self, native: &[u8], ncodes: usize, out: &mut Vec<u64>) {
        debug_assert_eq!(ncodes % 8, 0);
        assert!(native.len() >= ncodes * self.stride);
        let (w, stride) = (self.w, self.stride);
        out.clear();
        out.resize(ncodes * w, 0);
        #[cfg(target_arch = "x86_64")]
        // Only for full last words (128 or 256 bits): the transposition copies words unmasked, and
        // padding bits of shorter codes (e.g. 249 bits, also 4 words) may be set in the input.
        if (w == 2 || w == 4) && stride == 8 * w && self.tail_mask == u64::MAX && Kernel::Avx512.is_available() {
            // SAFETY: AVX-512 is available; lengths checked above.
            unsafe { avx512::repack_words(native, ncodes, w, out) };
            return;
        }
        self.repack_scalar(native, ncodes, out);
    }

    fn repack_scalar(&self, native: &[u8], ncodes: usize, out: &mut [u64]) {
        let (w, stride) = (self.w, self.stride);
        debug_assert_eq!(out.len(), ncodes * w);
        let len = native.len();
        for (g, grp) in out.chunks_exact_mut(8 * w).enumerate() {
            for (wi, dst) in grp.chunks_exact_mut(8).enumerate() {
                let mask = if wi + 1 == w { self.tail_mask } else { u64::MAX };
                for (lane, d) in dst.iter_mut().enumerate() {
                    let row = (g * 8 + lane) * stride;
                    let off = row + 8 * wi;
                    // An 8-byte load may run into the next row; the mask clears those bytes.
                    let v = if off + 8 <= len {
                        // SAFETY: off + 8 <= native.len().
                        u64::from_le(unsafe { std::ptr::read_unaligned(native.as_ptr().add(off) as *const u64) })
                    } else {
                        self.word(&native[row..row + stride], wi)
                    };
                    *d = v & mask;
                }
            }
        }
    }

    /// Distance of code `t` of a repacked block (scalar, for hit paths and tests).
    #[inline(always)]
    pub fn dist_repacked(&self, words: &[u64], t: usize, qw: &[u64]) -> u32 {
        let (g, lane) = (t / 8, t % 8);
        let base = g * self.w * 8;
        let mut d = 0;
        for wi in 0..self.w {
            d += (words[base + wi * 8 + lane] ^ qw[wi]).count_ones();
        }
        d
    }
}

/// A block of the database as the kernels see it: `nchunks` full chunks starting at index `j0`.
pub(crate) struct Block<'a> {
    /// Packed rows of the block (layouts N16/N32/N64; also kept for Words).
    pub native: &'a [u8],
    /// Repacked words (layout Words only).
    pub words: &'a [u64],
    pub nchunks: usize,
    pub j0: u32,
}

/// Offers every code of the block's full chunks to every query's candidates.
/// `qw` holds `cands.len()` queries of `geo.w` words each.
pub(crate) fn scan(kernel: Kernel, geo: &Geometry, blk: &Block, qw: &[u64], cands: &mut [Cand]) {
    debug_assert_eq!(qw.len(), cands.len() * geo.w);
    debug_assert!(kernel.is_available());
    // SAFETY (each arm): callers pass an available kernel (`pick_kernel` refuses others), so the
    // CPU has the instructions the kernel's functions are compiled for.
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => unsafe { avx512::scan(geo, blk, qw, cands) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe { avx2::scan(geo, blk, qw, cands) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Popcnt => unsafe { scalar::scan_popcnt(geo, blk, qw, cands) },
        _ => scalar::scan_portable(geo, blk, qw, cands),
    }
}

/// Distances from one query (prepared words) to all `db` rows (`out.len()` rows of `native`).
pub(crate) fn distances(kernel: Kernel, geo: &Geometry, qw: &[u64], native: &[u8], out: &mut [u32]) {
    debug_assert_eq!(native.len(), out.len() * geo.stride);
    // SAFETY (each arm): callers pass an available kernel (`distances_with` falls back to the
    // portable one), so the CPU has the instructions the kernel's functions are compiled for.
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => unsafe { avx512::distances(geo, qw, native, out) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 | Kernel::Popcnt => unsafe { scalar::distances_popcnt(geo, qw, native, out) },
        _ => scalar::distances_body(geo, qw, native, out),
    }
}

/// Sum of all distances between `qw` queries and the block's full chunks, with no selection:
/// the popcount throughput limit the search kernels are measured against (benchmarks only).
pub(crate) fn distance_sum(kernel: Kernel, geo: &Geometry, blk: &Block, qw: &[u64]) -> u64 {
    // SAFETY: callers pass an available kernel, so the CPU has AVX-512 in this arm.
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => unsafe { avx512::distance_sum(geo, blk, qw) },
        _ => {
            let nq = qw.len() / geo.w;
            let n = blk.nchunks * geo.chunk();
            let mut s = 0u64;
            for i in 0..nq {
                let q = &qw[i * geo.w..(i + 1) * geo.w];
                for t in 0..n {
                    s += match geo.layout {
                        Layout::Words => geo.dist_repacked(blk.words, t, q),
                        _ => geo.dist(q, &blk.native[t * geo.stride..(t + 1) * geo.stride]),
                    } as u64;
                }
            }
            s
        }
    }
}

mod scalar {
    use super::*;

    /// Direct compare per code: XOR, popcount, compare with the query's limit.
    #[inline(always)]
    fn group<const Q: usize>(geo: &Geometry, blk: &Block, qw: &[u64], cands: &mut [Cand]) {
        let n = blk.nchunks * geo.chunk();
        let mut lim = [0u32; Q];
        let mut q = [0u64; Q];
        for i in 0..Q {
            lim[i] = cands[i].lim;
            q[i] = qw[i * geo.w];
        }
        macro_rules! native {
            ($t:ty, $bytes:expr) => {
                for (j, row) in blk.native[..n * $bytes].chunks_exact($bytes).enumerate() {
                    let x = <$t>::from_le_bytes(row.try_into().unwrap());
                    for i in 0..Q {
                        let d = (x ^ q[i] as $t).count_ones();
                        if d < lim[i] {
                            cands[i].push(d, blk.j0 + j as u32);
                            lim[i] = cands[i].lim;
                        }
                    }
                }
            };
        }
        match geo.layout {
            Layout::N16 => native!(u16, 2),
            Layout::N32 => native!(u32, 4),
            Layout::N64 => native!(u64, 8),
            Layout::Words => match geo.w {
                1 => words_fixed::<Q, 1>(blk, n, qw, cands, &mut lim),
                2 => words_fixed::<Q, 2>(blk, n, qw, cands, &mut lim),
                4 => words_fixed::<Q, 4>(blk, n, qw, cands, &mut lim),
                w => {
                    for j in 0..n {
                        for i in 0..Q {
                            let d = geo.dist_repacked(blk.words, j, &qw[i * w..(i + 1) * w]);
                            if d < lim[i] {
                                cands[i].push(d, blk.j0 + j as u32);
                                lim[i] = cands[i].lim;
                            }
                        }
                    }
                }
            },
        }
    }

    /// Repacked words, W per code known at compile time: one group of 8 codes at a time.
    #[inline(always)]
    fn words_fixed<const Q: usize, const W: usize>(blk: &Block, n: usize, qw: &[u64], cands: &mut [Cand], lim: &mut [u32; Q]) {
        let mut q = [[0u64; W]; Q];
        for i in 0..Q {
            q[i].copy_from_slice(&qw[i * W..(i + 1) * W]);
        }
        for (g, grp) in blk.words[..n * W].chunks_exact(8 * W).enumerate() {
            for lane in 0..8 {
                let mut x = [0u64; W];
                for w in 0..W {
                    x[w] = grp[w * 8 + lane];
                }
                for i in 0..Q {
                    let mut d = 0;
                    for w in 0..W {
                        d += (x[w] ^ q[i][w]).count_ones();
                    }
                    if d < lim[i] {
                        cands[i].push(d, blk.j0 + (g * 8 + lane) as u32);
                        lim[i] = cands[i].lim;
                    }
                }
            }
        }
    }

    #[inline(always)]
    fn scan_body(geo: &Geometry, blk: &Block, qw: &[u64], cands: &mut [Cand]) {
        let w = geo.w;
        let mut i = 0;
        while i + 4 <= cands.len() {
            group::<4>(geo, blk, &qw[i * w..(i + 4) * w], &mut cands[i..i + 4]);
            i += 4;
        }
        while i < cands.len() {
            group::<1>(geo, blk, &qw[i * w..(i + 1) * w], &mut cands[i..i + 1]);
            i += 1;
        }
    }

    pub fn scan_portable(geo: &Geometry, blk: &Block, qw: &[u64], cands: &mut [Cand]) {
        scan_body(geo, blk, qw, cands)
    }

    /// # Safety
    /// The CPU must support POPCNT.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "popcnt")]
    pub unsafe fn scan_popcnt(geo: &Geometry, blk: &Block, qw: &[u64], cands: &mut [Cand]) {
        scan_body(geo, blk, qw, cands)
    }

    #[inline(always)]
    pub fn distances_body(geo: &Geometry, qw: &[u64], native: &[u8], out: &mut [u32]) {
        match geo.layout {
            Layout::N64 => {
                for (o, row) in out.iter_mut().zip(native.chunks_exact(8)) {
                    *o = (u64::from_le_bytes(row.try_into().unwrap()) ^ qw[0]).count_ones();
                }
            }
            Layout::Words if geo.stride.is_multiple_of(8) => {
                for (o, row) in out.iter_mut().zip(native.chunks_exact(geo.stride)) {
                    let mut d = 0;
                    let last = geo.w - 1;
                    for (x, q) in row[..last * 8].chunks_exact(8).zip(qw) {
                        d += (u64::from_le_bytes(x.try_into().unwrap()) ^ q).count_ones();
                    }
                    let x = u64::from_le_bytes(row[last * 8..].try_into().unwrap()) & geo.tail_mask;
                    *o = d + (x ^ qw[last]).count_ones();
                }
            }
            _ => {
                for (o, row) in out.iter_mut().zip(native.chunks_exact(geo.stride)) {
                    *o = geo.dist(qw, row);
                }
            }
        }
    }

    /// # Safety
    /// The CPU must support POPCNT.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "popcnt")]
    pub unsafe fn distances_popcnt(geo: &Geometry, qw: &[u64], native: &[u8], out: &mut [u32]) {
        distances_body(geo, qw, native, out)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX-512 F, BW, VPOPCNTDQ and BITALG, and POPCNT ([`Kernel::Avx512`] is available).
    #[target_feature(enable = "avx512f,avx512bw,avx512vpopcntdq,avx512bitalg,popcnt")]
    pub unsafe fn scan(geo: &Geometry, blk: &Block, qw: &[u64], cands: &mut [Cand]) {
        let w = geo.w;
        // Queries in groups of Q held in registers, the remainder one at a time.
        macro_rules! groups {
            ($q:literal, $f:ident $(, $extra:expr)*) => {{
                let mut i = 0;
                while i + $q <= cands.len() {
                    $f::<$q>(geo, blk, &qw[i * w..(i + $q) * w], &mut cands[i..i + $q] $(, $extra)*);
                    i += $q;
                }
                while i < cands.len() {
                    $f::<1>(geo, blk, &qw[i * w..(i + 1) * w], &mut cands[i..i + 1] $(, $extra)*);
                    i += 1;
                }
            }};
        }
        match geo.layout {
            Layout::N64 => groups!(8, n64),
            Layout::N32 => groups!(8, n32),
            Layout::N16 => groups!(8, n16),
            Layout::Words => match w {
                1 => groups!(8, words_w1),
                2 => groups!(8, words_w2),
                4 => groups!(4, words_w4),
                _ => groups!(4, words_dyn),
            },
        }
    }

    /// Hot loop for codes read in place; `$lanes` codes per register, 8 registers per chunk.
    macro_rules! native_kernel {
        ($name:ident, $hit:ident, $set1:ident, $ty:ty, $popcnt:ident, $min:ident, $cmplt:ident, $lanes:expr) => {
            /// # Safety
            /// The CPU must support AVX-512 F, BW, VPOPCNTDQ and BITALG, and POPCNT ([`Kernel::Avx512`] is available).
            #[target_feature(enable = "avx512f,avx512bw,avx512vpopcntdq,avx512bitalg,popcnt")]
            unsafe fn $name<const Q: usize>(_geo: &Geometry, blk: &Block, qw: &[u64], cands: &mut [Cand]) {
                assert!(blk.native.len() >= blk.nchunks * 512 && qw.len() >= Q && cands.len() >= Q);
                let mut qv = [_mm512_setzero_si512(); Q];
                let mut lim = [_mm512_setzero_si512(); Q];
                for i in 0..Q {
                    qv[i] = $set1(qw[i] as $ty);
                    lim[i] = $set1(cands[i].lim as $ty);
                }
                let base = blk.native.as_ptr();
                for c in 0..blk.nchunks {
                    let p = base.add(c * 512) as *const i64;
                    let mut v = [_mm512_setzero_si512(); 8];
                    for t in 0..8 {
                        v[t] = _mm512_loadu_epi64(p.add(8 * t));
                    }
                    for i in 0..Q {
                        let mut mn = $popcnt(_mm512_xor_si512(v[0], qv[i]));
                        for t in 1..8 {
                            mn = $min(mn, $popcnt(_mm512_xor_si512(v[t], qv[i])));
                        }
                        if $cmplt(mn, lim[i]) != 0 {
                            $hit(p, blk.j0 + (c * 8 * $lanes) as u32, qv[i], &mut cands[i]);
                            lim[i] = $set1(cands[i].lim as $ty);
                        }
                    }
                }
            }

            /// Revisits a chunk with a candidate: distances of all its codes, one combined bit
            /// mask of those below the limit, then one loop over the set bits.
            ///
            /// # Safety
            /// The CPU must support AVX-512 F, BW, VPOPCNTDQ and BITALG, and POPCNT ([`Kernel::Avx512`] is available).
            /// `p` must point to one chunk of the block: 8 × 8 readable 64-bit words.
            #[cold]
            #[inline(never)]
            #[target_feature(enable = "avx512f,avx512bw,avx512vpopcntdq,avx512bitalg,popcnt")]
            unsafe fn $hit(p: *const i64, jb: u32, q: __m512i, cand: &mut Cand) {
                let lim = $set1(cand.lim as $ty);
                let mut dist = [0 as $ty; 8 * $lanes];
                let mut bits = [0u64; $lanes / 8];
                for t in 0..8 {
                    let d = $popcnt(_mm512_xor_si512(_mm512_loadu_epi64(p.add(8 * t)), q));
                    _mm512_storeu_epi64(dist.as_mut_ptr().add(t * $lanes) as *mut i64, d);
                    bits[t * $lanes / 64] |= ($cmplt(d, lim) as u64) << ((t * $lanes) % 64);
                }
                for (w, &word) in bits.iter().enumerate() {
                    let mut m = word;
                    while m != 0 {
                        let b = w * 64 + m.trailing_zeros() as usize;
                        cand.push(dist[b] as u32, jb + b as u32);
                        m &= m - 1;
                    }
                }
            }
        };
    }

    /// # Safety
    /// The CPU must support AVX-512 F, BW, VPOPCNTDQ and BITALG, and POPCNT ([`Kernel::Avx512`] is available).
    #[inline(always)]
    unsafe fn set1_64(x: u64) -> __m512i {
        _mm512_set1_epi64(x as i64)
    }
    /// # Safety
    /// The CPU must support AVX-512 F, BW, VPOPCNTDQ and BITALG, and POPCNT ([`Kernel::Avx512`] is available).
    #[inline(always)]
    unsafe fn set1_32(x: u32) -> __m512i {
        _mm512_set1_epi32(x as i32)
    }
    /// # Safety
    /// The CPU must support AVX-512 F, BW, VPOPCNTDQ and BITALG, and POPCNT ([`Kernel::Avx512`] is available).
    #[inline(always)]
    unsafe fn set1_16(x: u16) -> __m512i {
        _mm512_set1_epi16(x as i16)
    }

    native_kernel!(n64, hit_n64, set1_64, u64, _mm512_popcnt_epi64, _mm512_min_epu64, _mm512_cmplt_epu64_mask, 8);
    native_kernel!(n32, hit_n32, set1_32, u32, _mm512_popcnt_epi32, _mm512_min_epu32, _mm512_cmplt_epu32_mask, 16);
    native_kernel!(n16, hit_n16, set1_16, u16, _mm512_popcnt_epi16, _mm512_min_epu16, _mm512_cmplt_epu16_mask, 32);

    /// Hot loop over repacked words, W words per code known at compile time.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW, VPOPCNTDQ and BITALG, and POPCNT ([`Kernel::Avx512`] is available).
    #[inline(always)]
    unsafe fn words_fixed<const Q: usize, const W: usize>(blk: &Block, qw: &[u64], cands: &mut [Cand]) {
        assert!(blk.words.len() >= blk.nchunks * 64 * W && qw.len() >= Q * W && cands.len() >= Q);
        let mut qv = [[_mm512_setzero_si512(); W]; Q];
        let mut lim = [_mm512_setzero_si512(); Q];
        for i in 0..Q {
            for w in 0..W {
                qv[i][w] = _mm512_set1_epi64(qw[i * W + w] as i64);
            }
            lim[i] = _mm512_set1_epi64(cands[i].lim as i64);
        }
        let base = blk.words.as_ptr() as *const i64;
        for c in 0..blk.nchunks {
            let pc = base.add(c * 64 * W);
            let mut mn = [_mm512_set1_epi64(-1); Q];
            for g in 0..8 {
                let p = pc.add(g * 8 * W);
                let mut v = [_mm512_setzero_si512(); W];
                for w in 0..W {
                    v[w] = _mm512_loadu_epi64(p.add(8 * w));
                }
                for i in 0..Q {
                    let mut acc = _mm512_popcnt_epi64(_mm512_xor_si512(v[0], qv[i][0]));
                    for w in 1..W {
                        acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(_mm512_xor_si512(v[w], qv[i][w])));
                    }
                    mn[i] = _mm512_min_epu64(mn[i], acc);
                }
            }
            for i in 0..Q {
                if _mm512_cmplt_epu64_mask(mn[i], lim[i]) != 0 {
                    hit_words(pc, W, blk.j0 + (c * 64) as u32, &qw[i * W..(i + 1) * W], &mut cands[i]);
                    lim[i] = _mm512_set1_epi64(cands[i].lim as i64);
                }
            }
        }
    }

    /// # Safety
    /// The CPU must support AVX-512 F, BW, VPOPCNTDQ and BITALG, and POPCNT ([`Kernel::Avx512`] is available).
    #[target_feature(enable = "avx512f,avx512bw,avx512vpopcntdq,avx512bitalg,popcnt")]
    unsafe fn words_w1<const Q: usize>(_g: &Geometry, blk: &Block, qw: &[u64], cands: &mut [Cand]) {
        words_fixed::<Q, 1>(blk, qw, cands)
    }
    /// # Safety
    /// The CPU must support AVX-512 F, BW, VPOPCNTDQ and BITALG, and POPCNT ([`Kernel::Avx512`] is available).
    #[target_feature(enable = "avx512f,avx512bw,avx512vpopcntdq,avx512bitalg,popcnt")]
    unsafe fn words_w2<const Q: usize>(_g: &Geometry, blk: &Block, qw: &[u64], cands: &mut [Cand]) {
        words_fixed::<Q, 2>(blk, qw, cands)
    }
    /// # Safety
    /// The CPU must support AVX-512 F, BW, VPOPCNTDQ and BITALG, and POPCNT ([`Kernel::Avx512`] is available).
    #[target_feature(enable = "avx512f,avx512bw,avx512vpopcntdq,avx512bitalg,popcnt")]
    unsafe fn words_w4<const Q: usize>(_g: &Geometry, blk: &Block, qw: &[u64], cands: &mut [Cand]) {
        words_fixed::<Q, 4>(blk, qw, cands)
    }

    /// Any number of words per code.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW, VPOPCNTDQ and BITALG, and POPCNT ([`Kernel::Avx512`] is available).
    #[target_feature(enable = "avx512f,avx512bw,avx512vpopcntdq,avx512bitalg,popcnt")]
    unsafe fn words_dyn<const Q: usize>(geo: &Geometry, blk: &Block, qw: &[u64], cands: &mut [Cand]) {
        let w = geo.w;
        assert!(blk.words.len() >= blk.nchunks * 64 * w && qw.len() >= Q * w && cands.len() >= Q);
        let mut lim = [_mm512_setzero_si512(); Q];
        for i in 0..Q {
            lim[i] = _mm512_set1_epi64(cands[i].lim as i64);
        }
        let base = blk.words.as_ptr() as *const i64;
        for c in 0..blk.nchunks {
            let pc = base.add(c * 64 * w);
            let mut mn = [_mm512_set1_epi64(-1); Q];
            for g in 0..8 {
                let p = pc.add(g * 8 * w);
                let mut acc = [_mm512_setzero_si512(); Q];
                for wi in 0..w {
                    let v = _mm512_loadu_epi64(p.add(8 * wi));
                    for i in 0..Q {
                        let q = _mm512_set1_epi64(*qw.get_unchecked(i * w + wi) as i64);
                        acc[i] = _mm512_add_epi64(acc[i], _mm512_popcnt_epi64(_mm512_xor_si512(v, q)));
                    }
                }
                for i in 0..Q {
                    mn[i] = _mm512_min_epu64(mn[i], acc[i]);
                }
            }
            for i in 0..Q {
                if _mm512_cmplt_epu64_mask(mn[i], lim[i]) != 0 {
                    hit_words(pc, w, blk.j0 + (c * 64) as u32, &qw[i * w..(i + 1) * w], &mut cands[i]);
                    lim[i] = _mm512_set1_epi64(cands[i].lim as i64);
                }
            }
        }
    }

    /// # Safety
    /// The CPU must support AVX-512 F, BW, VPOPCNTDQ and BITALG, and POPCNT ([`Kernel::Avx512`] is available).
    /// `pc` must point to one chunk of the block: 64 codes of `w` readable 64-bit words each, and `q` hold `w` words.
    #[cold]
    #[inline(never)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vpopcntdq,avx512bitalg,popcnt")]
    unsafe fn hit_words(pc: *const i64, w: usize, jb: u32, q: &[u64], cand: &mut Cand) {
        let lim = _mm512_set1_epi64(cand.lim as i64);
        let mut dist = [0u64; 64];
        let mut bits = 0u64;
        for g in 0..8 {
            let p = pc.add(g * 8 * w);
            let mut acc = _mm512_setzero_si512();
            for wi in 0..w {
                let x = _mm512_xor_si512(_mm512_loadu_epi64(p.add(8 * wi)), _mm512_set1_epi64(q[wi] as i64));
                acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(x));
            }
            _mm512_storeu_epi64(dist.as_mut_ptr().add(g * 8) as *mut i64, acc);
            bits |= (_mm512_cmplt_epu64_mask(acc, lim) as u64) << (8 * g);
        }
        while bits != 0 {
            let b = bits.trailing_zeros() as usize;
            cand.push(dist[b] as u32, jb + b as u32);
            bits &= bits - 1;
        }
    }

    /// Word-major repack of codes of exactly 2 or 4 words (128 or 256 bits) by in-register
    /// transposition: one permutation per output register.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW, VPOPCNTDQ and BITALG, and POPCNT ([`Kernel::Avx512`] is available).
    #[target_feature(enable = "avx512f,avx512bw,avx512vpopcntdq,avx512bitalg,popcnt")]
    pub unsafe fn repack_words(native: &[u8], ncodes: usize, w: usize, out: &mut [u64]) {
        assert!(native.len() >= ncodes * 8 * w && out.len() >= ncodes * w && ncodes.is_multiple_of(8));
        let src = native.as_ptr() as *const i64;
        let dst = out.as_mut_ptr() as *mut i64;
        if w == 2 {
            // Two registers hold codes 0-3 and 4-7 as (w0, w1) pairs.
            let even = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
            let odd = _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15);
            for g in 0..ncodes / 8 {
                let a = _mm512_loadu_epi64(src.add(g * 16));
                let b = _mm512_loadu_epi64(src.add(g * 16 + 8));
                _mm512_storeu_epi64(dst.add(g * 16), _mm512_permutex2var_epi64(a, even, b));
                _mm512_storeu_epi64(dst.add(g * 16 + 8), _mm512_permutex2var_epi64(a, odd, b));
            }
        } else {
            // Four registers hold two codes each as (w0..w3) runs. Step 1 pairs words (0,2) and
            // (1,3) of four codes; step 2 splits each pair into single words of eight codes.
            let i02 = _mm512_setr_epi64(0, 4, 8, 12, 2, 6, 10, 14);
            let i13 = _mm512_setr_epi64(1, 5, 9, 13, 3, 7, 11, 15);
            let lo = _mm512_setr_epi64(0, 1, 2, 3, 8, 9, 10, 11);
            let hi = _mm512_setr_epi64(4, 5, 6, 7, 12, 13, 14, 15);
            for g in 0..ncodes / 8 {
                let a = _mm512_loadu_epi64(src.add(g * 32));
                let b = _mm512_loadu_epi64(src.add(g * 32 + 8));
                let c = _mm512_loadu_epi64(src.add(g * 32 + 16));
                let d = _mm512_loadu_epi64(src.add(g * 32 + 24));
                // ab02 = [c0w0 c1w0 c2w0 c3w0 | c0w2 c1w2 c2w2 c3w2], etc.
                let ab02 = _mm512_permutex2var_epi64(a, i02, b);
                let ab13 = _mm512_permutex2var_epi64(a, i13, b);
                let cd02 = _mm512_permutex2var_epi64(c, i02, d);
                let cd13 = _mm512_permutex2var_epi64(c, i13, d);
                _mm512_storeu_epi64(dst.add(g * 32), _mm512_permutex2var_epi64(ab02, lo, cd02));
                _mm512_storeu_epi64(dst.add(g * 32 + 8), _mm512_permutex2var_epi64(ab13, lo, cd13));
                _mm512_storeu_epi64(dst.add(g * 32 + 16), _mm512_permutex2var_epi64(ab02, hi, cd02));
                _mm512_storeu_epi64(dst.add(g * 32 + 24), _mm512_permutex2var_epi64(ab13, hi, cd13));
            }
        }
    }

    /// # Safety
    /// The CPU must support AVX-512 F, BW, VPOPCNTDQ and BITALG, and POPCNT ([`Kernel::Avx512`] is available).
    #[target_feature(enable = "avx512f,avx512bw,avx512vpopcntdq,avx512bitalg,popcnt")]
    pub unsafe fn distances(geo: &Geometry, qw: &[u64], native: &[u8], out: &mut [u32]) {
        let n = out.len();
        let p = native.as_ptr();
        let o = out.as_mut_ptr();
        let mut j = 0;
        match geo.layout {
            Layout::N64 => {
                let q = _mm512_set1_epi64(qw[0] as i64);
                while j + 8 <= n {
                    let d = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_epi64(p.add(j * 8) as *const i64), q));
                    _mm256_storeu_si256(o.add(j) as *mut __m256i, _mm512_cvtepi64_epi32(d));
                    j += 8;
                }
            }
            Layout::N32 => {
                let q = _mm512_set1_epi32(qw[0] as i32);
                while j + 16 <= n {
                    let d = _mm512_popcnt_epi32(_mm512_xor_si512(_mm512_loadu_epi64(p.add(j * 4) as *const i64), q));
                    _mm512_storeu_epi64(o.add(j) as *mut i64, d);
                    j += 16;
                }
            }
            Layout::N16 => {
                let q = _mm512_set1_epi16(qw[0] as i16);
                while j + 32 <= n {
                    let d = _mm512_popcnt_epi16(_mm512_xor_si512(_mm512_loadu_epi64(p.add(j * 2) as *const i64), q));
                    _mm512_storeu_epi64(o.add(j) as *mut i64, _mm512_cvtepu16_epi32(_mm512_castsi512_si256(d)));
                    _mm512_storeu_epi64(o.add(j + 16) as *mut i64, _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64::<1>(d)));
                    j += 32;
                }
            }
            Layout::Words => {}
        }
        scalar::distances_body(geo, qw, &native[j * geo.stride..], &mut out[j..]);
    }

    /// # Safety
    /// The CPU must support AVX-512 F, BW, VPOPCNTDQ and BITALG, and POPCNT ([`Kernel::Avx512`] is available).
    #[target_feature(enable = "avx512f,avx512bw,avx512vpopcntdq,avx512bitalg,popcnt")]
    pub unsafe fn distance_sum(geo: &Geometry, blk: &Block, qw: &[u64]) -> u64 {
        let w = geo.w;
        let nq = qw.len() / w;
        let mut total = _mm512_setzero_si512();
        match geo.layout {
            Layout::N64 => {
                for qs in (0..nq).step_by(8) {
                    let qn = (nq - qs).min(8);
                    let mut qv = [_mm512_setzero_si512(); 8];
                    for i in 0..qn {
                        qv[i] = _mm512_set1_epi64(qw[qs + i] as i64);
                    }
                    let p = blk.native.as_ptr() as *const i64;
                    let mut acc = [_mm512_setzero_si512(); 8];
                    for t in 0..blk.nchunks * 8 {
                        let v = _mm512_loadu_epi64(p.add(8 * t));
                        for i in 0..8 {
                            acc[i] = _mm512_add_epi64(acc[i], _mm512_popcnt_epi64(_mm512_xor_si512(v, qv[i])));
                        }
                    }
                    for a in acc.iter().take(qn) {
                        total = _mm512_add_epi64(total, *a);
                    }
                }
            }
            Layout::Words if w <= 64 => {
                for qs in (0..nq).step_by(4) {
                    let qn = (nq - qs).min(4);
                    let mut q = [0u64; 4 * 64];
                    for i in 0..qn * w {
                        q[i] = qw[qs * w + i];
                    }
                    let p = blk.words.as_ptr() as *const i64;
                    let mut acc = [_mm512_setzero_si512(); 4];
                    for g in 0..blk.nchunks * 8 {
                        for wi in 0..w {
                            let v = _mm512_loadu_epi64(p.add((g * w + wi) * 8));
                            for i in 0..4 {
                                let x = _mm512_xor_si512(v, _mm512_set1_epi64(q[i * w + wi] as i64));
                                acc[i] = _mm512_add_epi64(acc[i], _mm512_popcnt_epi64(x));
                            }
                        }
                    }
                    for a in acc.iter().take(qn) {
                        total = _mm512_add_epi64(total, *a);
                    }
                }
            }
            _ => {
                let n = blk.nchunks * geo.chunk();
                let mut s = 0u64;
                for i in 0..nq {
                    let q = &qw[i * w..(i + 1) * w];
                    for t in 0..n {
                        s += match geo.layout {
                            Layout::Words => geo.dist_repacked(blk.words, t, q),
                            _ => geo.dist(q, &blk.native[t * geo.stride..(t + 1) * geo.stride]),
                        } as u64;
                    }
                }
                return s;
            }
        }
        _mm512_reduce_add_epi64(total) as u64
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    /// Per-byte popcount by nibble lookup (W. Muła's `vpshufb` method).
    ///
    /// # Safety
    /// The CPU must support AVX2 and POPCNT ([`Kernel::Avx2`] is available).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn popcnt_bytes(v: __m256i) -> __m256i {
        let lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
        let low = _mm256_set1_epi8(0x0f);
        let lo = _mm256_and_si256(v, low);
        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), low);
        _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi))
    }

    /// Popcount per 64-bit lane.
    ///
    /// # Safety
    /// The CPU must support AVX2 and POPCNT ([`Kernel::Avx2`] is available).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn popcnt64(v: __m256i) -> __m256i {
        _mm256_sad_epu8(popcnt_bytes(v), _mm256_setzero_si256())
    }
    /// # Safety
    /// The CPU must support AVX2 and POPCNT ([`Kernel::Avx2`] is available).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn popcnt32(v: __m256i) -> __m256i {
        let b = popcnt_bytes(v);
        _mm256_madd_epi16(_mm256_maddubs_epi16(b, _mm256_set1_epi8(1)), _mm256_set1_epi16(1))
    }
    /// # Safety
    /// The CPU must support AVX2 and POPCNT ([`Kernel::Avx2`] is available).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn popcnt16(v: __m256i) -> __m256i {
        _mm256_maddubs_epi16(popcnt_bytes(v), _mm256_set1_epi8(1))
    }

    /// # Safety
    /// The CPU must support AVX2 and POPCNT ([`Kernel::Avx2`] is available).
    #[target_feature(enable = "avx2,popcnt")]
    pub unsafe fn scan(geo: &Geometry, blk: &Block, qw: &[u64], cands: &mut [Cand]) {
        let w = geo.w;
        macro_rules! groups {
            ($f:ident $(, $l:literal)?) => {{
                let mut i = 0;
                while i + 4 <= cands.len() {
                    $f::<4 $(, $l)?>(geo, blk, &qw[i * w..(i + 4) * w], &mut cands[i..i + 4]);
                    i += 4;
                }
                while i < cands.len() {
                    $f::<1 $(, $l)?>(geo, blk, &qw[i * w..(i + 1) * w], &mut cands[i..i + 1]);
                    i += 1;
                }
            }};
        }
        match geo.layout {
            Layout::N64 => groups!(native, 64),
            Layout::N32 => groups!(native, 32),
            Layout::N16 => groups!(native, 16),
            Layout::Words => groups!(words),
        }
    }

    /// # Safety
    /// The CPU must support AVX2 and POPCNT ([`Kernel::Avx2`] is available).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn set1<const L: usize>(x: u64) -> __m256i {
        match L {
            16 => _mm256_set1_epi16(x as i16),
            32 => _mm256_set1_epi32(x as i32),
            _ => _mm256_set1_epi64x(x as i64),
        }
    }

    /// Lane-wise minimum of distances (lanes of L bits; 64-bit lanes hold values below 2^32,
    /// so an unsigned 32-bit minimum keeps them intact).
    ///
    /// # Safety
    /// The CPU must support AVX2 and POPCNT ([`Kernel::Avx2`] is available).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn min<const L: usize>(a: __m256i, b: __m256i) -> __m256i {
        match L {
            16 => _mm256_min_epu16(a, b),
            _ => _mm256_min_epu32(a, b),
        }
    }

    /// Any lane of `mn` below the limit (distances and limits are small non-negative numbers).
    ///
    /// # Safety
    /// The CPU must support AVX2 and POPCNT ([`Kernel::Avx2`] is available).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn any_below<const L: usize>(mn: __m256i, lim: __m256i) -> bool {
        let m = match L {
            16 => _mm256_cmpgt_epi16(lim, mn),
            32 => _mm256_cmpgt_epi32(lim, mn),
            _ => _mm256_cmpgt_epi64(lim, mn),
        };
        _mm256_movemask_epi8(m) != 0
    }

    /// # Safety
    /// The CPU must support AVX2 and POPCNT ([`Kernel::Avx2`] is available).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn popcnt_lanes<const L: usize>(x: __m256i) -> __m256i {
        match L {
            16 => popcnt16(x),
            32 => popcnt32(x),
            _ => popcnt64(x),
        }
    }

    /// Codes read in place: 16 registers of 256 bits per chunk.
    ///
    /// # Safety
    /// The CPU must support AVX2 and POPCNT ([`Kernel::Avx2`] is available).
    #[target_feature(enable = "avx2,popcnt")]
    unsafe fn native<const Q: usize, const L: usize>(geo: &Geometry, blk: &Block, qw: &[u64], cands: &mut [Cand]) {
        assert!(blk.native.len() >= blk.nchunks * 512 && qw.len() >= Q && cands.len() >= Q);
        let mut lim = [_mm256_setzero_si256(); Q];
        let mut qv = [_mm256_setzero_si256(); Q];
        for i in 0..Q {
            lim[i] = set1::<L>(cands[i].lim as u64);
            qv[i] = set1::<L>(qw[i]);
        }
        for c in 0..blk.nchunks {
            let mut mn = [_mm256_set1_epi8(-1); Q];
            let p = blk.native.as_ptr().add(c * 512) as *const __m256i;
            for t in 0..16 {
                let v = _mm256_loadu_si256(p.add(t));
                for i in 0..Q {
                    mn[i] = min::<L>(mn[i], popcnt_lanes::<L>(_mm256_xor_si256(v, qv[i])));
                }
            }
            for i in 0..Q {
                if any_below::<L>(mn[i], lim[i]) {
                    hit(geo, blk, c, &qw[i..i + 1], &mut cands[i]);
                    lim[i] = set1::<L>(cands[i].lim as u64);
                }
            }
        }
    }

    /// Repacked words: a group of 8 codes is two registers per word.
    ///
    /// # Safety
    /// The CPU must support AVX2 and POPCNT ([`Kernel::Avx2`] is available).
    #[target_feature(enable = "avx2,popcnt")]
    unsafe fn words<const Q: usize>(geo: &Geometry, blk: &Block, qw: &[u64], cands: &mut [Cand]) {
        let w = geo.w;
        assert!(blk.words.len() >= blk.nchunks * 64 * w && qw.len() >= Q * w && cands.len() >= Q);
        let mut lim = [_mm256_setzero_si256(); Q];
        for i in 0..Q {
            lim[i] = _mm256_set1_epi64x(cands[i].lim as i64);
        }
        let z = _mm256_setzero_si256();
        for c in 0..blk.nchunks {
            let mut mn = [_mm256_set1_epi8(-1); Q];
            let pc = blk.words.as_ptr().add(c * 64 * w) as *const __m256i;
            for g in 0..8 {
                let p = pc.add(g * 2 * w);
                for i in 0..Q {
                    let (mut s0, mut s1) = (z, z);
                    let (mut b0, mut b1) = (z, z);
                    for wi in 0..w {
                        let q = _mm256_set1_epi64x(*qw.get_unchecked(i * w + wi) as i64);
                        b0 = _mm256_add_epi8(b0, popcnt_bytes(_mm256_xor_si256(_mm256_loadu_si256(p.add(2 * wi)), q)));
                        b1 = _mm256_add_epi8(b1, popcnt_bytes(_mm256_xor_si256(_mm256_loadu_si256(p.add(2 * wi + 1)), q)));
                        // A byte count grows by at most 8 per word: fold into 64-bit sums before 255.
                        if wi % 31 == 30 || wi + 1 == w {
                            s0 = _mm256_add_epi64(s0, _mm256_sad_epu8(b0, z));
                            s1 = _mm256_add_epi64(s1, _mm256_sad_epu8(b1, z));
                            b0 = z;
                            b1 = z;
                        }
                    }
                    mn[i] = _mm256_min_epu32(mn[i], _mm256_min_epu32(s0, s1));
                }
            }
            for i in 0..Q {
                if any_below::<64>(mn[i], lim[i]) {
                    hit(geo, blk, c, &qw[i * w..(i + 1) * w], &mut cands[i]);
                    lim[i] = _mm256_set1_epi64x(cands[i].lim as i64);
                }
            }
        }
    }

    /// Revisits one chunk code by code.
    ///
    /// # Safety
    /// The CPU must support AVX2 and POPCNT ([`Kernel::Avx2`] is available).
    #[cold]
    #[inline(never)]
    #[target_feature(enable = "popcnt")]
    unsafe fn hit(geo: &Geometry, blk: &Block, c: usize, q: &[u64], cand: &mut Cand) {
        let ch = geo.chunk();
        for t in c * ch..(c + 1) * ch {
            let d = match geo.layout {
                Layout::Words => geo.dist_repacked(blk.words, t, q),
                _ => geo.dist(q, &blk.native[t * geo.stride..(t + 1) * geo.stride]),
            };
            cand.push(d, blk.j0 + t as u32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repack_layout_and_simd_transpose() {
        for bits in [128usize, 256, 100, 192, 8] {
            let geo = Geometry::new(bits);
            let n = 24;
            let native: Vec<u8> = (0..n * geo.stride).map(|i| (i * 37 % 251) as u8).collect();
            let mut fast = vec![];
            geo.repack(&native, n, &mut fast);
            let mut slow = vec![0; n * geo.w];
            geo.repack_scalar(&native, n, &mut slow);
            assert_eq!(fast, slow, "bits {bits}");
            // Word wi of code j sits at group j/8, lane j%8.
            for j in 0..n {
                for wi in 0..geo.w {
                    let want = geo.word(&native[j * geo.stride..(j + 1) * geo.stride], wi);
                    assert_eq!(slow[((j / 8) * geo.w + wi) * 8 + j % 8], want);
                }
            }
        }
    }

    #[test]
    fn tail_mask_follows_packbits_order() {
        // 12 bits: byte 0 full, top 4 bits of byte 1.
        assert_eq!(Geometry::new(12).tail_mask, 0xf0ff);
        assert_eq!(Geometry::new(64).tail_mask, u64::MAX);
        assert_eq!(Geometry::new(65).tail_mask, 0x80);
    }
}
