//! Multi-index hashing must return exactly the linear scan's top-k and radius results (which the
//! tests above check against brute force), whatever the number of substrings, with the index
//! alone (unlimited budget), with every query handed to the scan, and with the default budget.

use super::*;
use crate::search::mih::{auto_substrings, build_index_file, substrings, BuildOptions};

/// Between bits / 16 (tables of at most 2^16 buckets keep the tests small) and 10 more.
fn substrings_for_test(bits: usize, frac: f64) -> usize {
    let lo = bits.div_ceil(16);
    lo + (frac * (bits.min(lo + 10) - lo) as f64) as usize
}

fn budgets() -> [f64; 3] {
    [f64::INFINITY, 0.0, MihOptions::default().budget]
}

fn opts(budget: f64) -> MihOptions {
    MihOptions { budget, ..Default::default() }
}

/// Every verification path the machine has (the kernel option also picks the index's): portable,
/// POPCNT and AVX-512 where available.
fn kernel_opts(budget: f64) -> Vec<MihOptions> {
    Kernel::available().into_iter().map(|k| MihOptions { budget, scan: SearchOptions { kernel: Some(k), ..Default::default() } }).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn mih_topk_equals_scan(
        bits in bits_strategy(), n in 1usize..=700, nq in 1usize..=40, pool in 1usize..=60,
        flips in 0usize..=8, kfrac in 0.0f64..=1.0, mfrac in 0.0f64..=1.0, dirty in any::<bool>(), seed in any::<u64>(),
    ) {
        let (dbd, qd) = gen_pair(seed, n, nq, bits, pool, flips, dirty);
        let db = CodesRef::new(n, bits, &dbd).unwrap();
        let qs = CodesRef::new(nq, bits, &qd).unwrap();
        let k = ((kfrac * kfrac * n as f64) as usize).clamp(1, n);
        let m = substrings_for_test(bits, mfrac);
        let idx = MihIndex::build(db, Some(m)).unwrap();
        prop_assert_eq!(idx.codes().data.len(), dbd.len());
        let want = topk(qs, db, k).unwrap();
        for (b, o) in budgets().into_iter().flat_map(|b| kernel_opts(b).into_iter().map(move |o| (b, o))) {
            let (got, stats) = idx.topk_with(qs, k, &o).unwrap();
            prop_assert_eq!(&got, &want, "bits {} n {} k {} m {} {:?}", bits, n, k, m, o);
            prop_assert_eq!(stats.indexed + stats.scanned, nq);
            if b == f64::INFINITY {
                prop_assert_eq!(stats.scanned, 0);
            }
            if b == 0.0 {
                prop_assert_eq!(stats.indexed, 0);
            }
        }
    }

    #[test]
    fn mih_radius_equals_scan(
        bits in bits_strategy(), n in 1usize..=700, nq in 1usize..=24, pool in 1usize..=60,
        flips in 0usize..=8, rfrac in 0.0f64..=1.0, mfrac in 0.0f64..=1.0, dirty in any::<bool>(), seed in any::<u64>(),
    ) {
        let (dbd, qd) = gen_pair(seed, n, nq, bits, pool, flips, dirty);
        let db = CodesRef::new(n, bits, &dbd).unwrap();
        let qs = CodesRef::new(nq, bits, &qd).unwrap();
        let r = (rfrac * rfrac * (bits as f64 * 0.6)) as usize;
        let m = substrings_for_test(bits, mfrac);
        let idx = MihIndex::build(db, Some(m)).unwrap();
        let want = radius(qs, db, r).unwrap();
        for o in budgets().into_iter().flat_map(kernel_opts) {
            let (got, _) = idx.radius_with(qs, r, &o).unwrap();
            prop_assert_eq!(&got, &want, "bits {} n {} r {} m {} {:?}", bits, n, r, m, o);
        }
    }
}

#[test]
fn mih_hand_worked_ties_and_duplicates() {
    // 8-bit codes, m = 2 (bits 0-3 and 4-7). Query 0000 0000. Database:
    //   0: 1000 0000 (d 1)   1: 0000 0000 (d 0)   2: 1100 0011 (d 4)   3: 0000 0001 (d 1)
    //   4: 0000 0000 (d 0)   5: 1000 0001 (d 2, first reached in table 0 at radius 1)
    // Codes 1 and 4 match both substrings exactly and must be reported once each.
    let q = BinaryCodes::from_bits(array![[0u8, 0, 0, 0, 0, 0, 0, 0]].view()).unwrap();
    let db = BinaryCodes::from_bits(
        array![
            [1u8, 0, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 1, 1],
            [0, 0, 0, 0, 0, 0, 0, 1],
            [0, 0, 0, 0, 0, 0, 0, 0],
            [1, 0, 0, 0, 0, 0, 0, 1]
        ]
        .view(),
    )
    .unwrap();
    let idx = MihIndex::build(db.view(), Some(2)).unwrap();
    assert_eq!(idx.substrings(), &[(0, 4), (4, 4)]);
    let o = opts(f64::INFINITY);
    let (r, stats) = idx.topk_with(q.view(), 4, &o).unwrap();
    assert_eq!(r.indices, array![[1i64, 4, 0, 3]]);
    assert_eq!(r.distances, array![[0i32, 0, 1, 1]]);
    assert_eq!(stats.indexed, 1);
    let (r, _) = idx.topk_with(q.view(), 6, &o).unwrap();
    assert_eq!(r.indices, array![[1i64, 4, 0, 3, 5, 2]]);
    assert_eq!(r.distances, array![[0i32, 0, 1, 1, 2, 4]]);
    let (rr, _) = idx.radius_with(q.view(), 2, &o).unwrap();
    assert_eq!(rr, vec![vec![(1u32, 0u32), (4, 0), (0, 1), (3, 1), (5, 2)]]);
    // Radius 0 stops after the exact-match lookup of the first table (bucket 0000: codes 1, 3, 4).
    let (rr, stats) = idx.radius_with(q.view(), 0, &o).unwrap();
    assert_eq!(rr, vec![vec![(1u32, 0u32), (4, 0)]]);
    assert_eq!((stats.probes, stats.candidates), (1, 3));
}

#[test]
fn mih_substring_plan() {
    assert_eq!(substrings(10, 3), vec![(0, 4), (4, 3), (7, 3)]);
    assert_eq!(substrings(64, 4), vec![(0, 16), (16, 16), (32, 16), (48, 16)]);
    // Substrings of log2 n bits up to 16, of log2(n / 128) bits beyond, at most 28.
    assert_eq!(auto_substrings(10_000_000, 64), 4);
    assert_eq!(auto_substrings(10_000_000, 128), 8);
    assert_eq!(auto_substrings(1 << 16, 64), 4);
    assert_eq!(auto_substrings(1 << 20, 64), 4);
    assert_eq!(auto_substrings(40_000, 64), 4);
    assert_eq!(auto_substrings(10, 256), 77);
    assert_eq!(auto_substrings(1 << 30, 64), 3);
    assert_eq!(auto_substrings(1 << 40, 64), 3);
    assert_eq!(auto_substrings(1, 1), 1);
    let db = BinaryCodes::zeros(4, 64);
    let e = format!("{:#}", MihIndex::build(db.view(), Some(2)).unwrap_err());
    assert!(e.contains("32 bits long") && e.contains("at least 3 substrings"), "{e}");
    let e = format!("{:#}", MihIndex::build(db.view(), Some(65)).unwrap_err());
    assert!(e.contains("between 1 and the code length (64)"), "{e}");
}

/// A batch is searched step by step with every query's lookups sorted by bucket together, in
/// runs of at most `STEP_ENTRIES` lookups (uniformly random queries probe radius 4 and beyond:
/// more than a million lookups a step), with duplicated queries sharing every bucket: the result
/// is the scan's and, for each query, what it gets searched alone.
#[test]
fn mih_large_batches_equal_the_scan_and_single_queries() {
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let (n, bits) = (20_000, 64);
    let dbd = gen_codes(&mut rng, n, bits, 500, 6, false);
    let mut qd = gen_codes(&mut rng, 300, bits, 300, 0, false);
    qd.extend(gen_codes(&mut rng, 200, bits, 500, 8, false));
    let copy = qd[..100 * 8].to_vec();
    qd.extend(copy);
    let nq = qd.len() / 8;
    let (db, qs) = (CodesRef::new(n, bits, &dbd).unwrap(), CodesRef::new(nq, bits, &qd).unwrap());
    let idx = MihIndex::build(db, Some(4)).unwrap();
    let o = opts(f64::INFINITY);
    let (got, stats) = idx.topk_with(qs, 5, &o).unwrap();
    assert_eq!(got, topk(qs, db, 5).unwrap());
    assert!(stats.probes > 1 << 20, "{stats:?}");
    for i in (0..nq).step_by(37) {
        let q = CodesRef::new(1, bits, &qd[i * 8..(i + 1) * 8]).unwrap();
        let one = idx.topk_with(q, 5, &o).unwrap().0;
        assert_eq!((one.indices.row(0), one.distances.row(0)), (got.indices.row(i), got.distances.row(i)));
    }
    let (rr, _) = idx.radius_with(qs, 9, &o).unwrap();
    assert_eq!(rr, radius(qs, db, 9).unwrap());
}

#[test]
fn sort_by_bucket_groups_lookups_in_bucket_order() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for (len, count) in [(4usize, 100usize), (16, 10), (16, 200_000), (20, 50)] {
        let mut e: Vec<u64> = (0..count).map(|q| ((rng.gen::<u64>() % (1 << len)) << 32) | q as u64).collect();
        let mut want = e.clone();
        want.sort_unstable();
        crate::search::mih::sort_by_bucket(&mut e, &mut Vec::new(), &mut Vec::new(), len);
        assert!(e.windows(2).all(|p| p[0] >> 32 <= p[1] >> 32), "len {len}");
        e.sort_unstable();
        assert_eq!(e, want);
    }
}

/// Clustered codes (near a few hundred centres) are where the index reads a small part of the
/// database; uniformly random long codes over a small database are where it hands over to the scan
/// (on a database this small a scan is cheap, so the default budget may hand over either way).
#[test]
fn mih_work_is_sublinear_on_clustered_codes_and_falls_back_on_random_ones() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (n, nq, bits) = (40_000, 64, 64);
    let dbd = gen_codes(&mut rng, n, bits, 400, 3, false);
    let qd = gen_codes(&mut rng, nq, bits, 400, 4, false);
    let (db, qs) = (CodesRef::new(n, bits, &dbd).unwrap(), CodesRef::new(nq, bits, &qd).unwrap());
    let idx = MihIndex::build(db, None).unwrap();
    let want = topk(qs, db, 10).unwrap();
    let (got, stats) = idx.topk_with(qs, 10, &opts(f64::INFINITY)).unwrap();
    assert_eq!(got, want);
    assert_eq!(stats.scanned, 0, "{stats:?}");
    assert!(stats.candidates < (n * nq / 4) as u64, "verified {} of {} pairs", stats.candidates, n * nq);
    assert_eq!(idx.topk_with(qs, 10, &MihOptions::default()).unwrap().0, want);

    let (n, bits) = (3000, 256);
    let dbd = gen_codes(&mut rng, n, bits, n, 0, false);
    let qd = gen_codes(&mut rng, nq, bits, nq, 0, false);
    let (db, qs) = (CodesRef::new(n, bits, &dbd).unwrap(), CodesRef::new(nq, bits, &qd).unwrap());
    let idx = MihIndex::build(db, None).unwrap();
    let (got, stats) = idx.topk_with(qs, 10, &MihOptions::default()).unwrap();
    assert_eq!(got, topk(qs, db, 10).unwrap());
    assert_eq!(stats.indexed, 0, "{stats:?}");
    // Most of the batch went straight to the scan after the trial queries gave up.
    assert!(stats.candidates + stats.probes < (n * nq / 2) as u64, "{stats:?}");
}

/// The whole batch goes to the scan when the trial queries show that the index costs more than a
/// scan per query (uniformly random 128-bit codes, k = 100: most trial queries go over budget), and
/// stays with the index where its work is a small part of a scan (clustered 64-bit codes, k = 1).
#[test]
fn mih_batch_goes_to_the_scan_exactly_when_the_index_would_cost_more() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let nq = 200;
    let (n, bits) = (20_000, 128);
    let dbd = gen_codes(&mut rng, n, bits, n, 0, false);
    let qd = gen_codes(&mut rng, nq, bits, nq, 0, false);
    let (db, qs) = (CodesRef::new(n, bits, &dbd).unwrap(), CodesRef::new(nq, bits, &qd).unwrap());
    let idx = MihIndex::build(db, None).unwrap();
    let (got, stats) = idx.topk_with(qs, 100, &MihOptions::default()).unwrap();
    assert_eq!(got, topk(qs, db, 100).unwrap());
    // Only trial queries were tried on the index.
    assert!(stats.indexed + stats.scanned == nq && stats.scanned >= nq - 32, "{stats:?}");
    // Even without a budget, the index's work on these queries costs more than their scans.
    assert!(!idx.index_pays_off(&unlimited_costs(&idx, qs, 100)));

    let (n, bits) = (200_000, 64);
    let dbd = gen_codes(&mut rng, n, bits, 2000, 2, false);
    // Queries: database codes with one more bit flipped.
    let qd: Vec<u8> = (0..nq)
        .flat_map(|i| {
            let mut row = dbd[(i * 997 % n) * 8..][..8].to_vec();
            row[i % 8] ^= 1 << (i % 7);
            row
        })
        .collect();
    let (db, qs) = (CodesRef::new(n, bits, &dbd).unwrap(), CodesRef::new(nq, bits, &qd).unwrap());
    let idx = MihIndex::build(db, None).unwrap();
    let (got, stats) = idx.topk_with(qs, 1, &MihOptions::default()).unwrap();
    assert_eq!(got, topk(qs, db, 1).unwrap());
    assert_eq!(stats.scanned, 0, "{stats:?}");
    assert!(idx.index_pays_off(&unlimited_costs(&idx, qs, 1)));
}

/// (lookups, codes verified, false) of each query answered from the index alone.
fn unlimited_costs(idx: &MihIndex, qs: CodesRef, k: usize) -> Vec<(u64, u64, bool)> {
    let s = qs.stride();
    (0..qs.n.min(32))
        .map(|i| {
            let q = CodesRef::new(1, qs.bits, &qs.data[i * s..(i + 1) * s]).unwrap();
            let (_, st) = idx.topk_with(q, k, &opts(f64::INFINITY)).unwrap();
            (st.probes, st.candidates, false)
        })
        .collect()
}

#[test]
fn mih_index_file_round_trip_and_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let (n, bits) = (2500, 100);
    let dbd = gen_codes(&mut rng, n, bits, 300, 2, true);
    let qd = gen_codes(&mut rng, 17, bits, 300, 3, true);
    let (db, qs) = (CodesRef::new(n, bits, &dbd).unwrap(), CodesRef::new(17, bits, &qd).unwrap());
    let path = dir.path().join("db.cmhidx");
    let summary = build_index_file(db, &BuildOptions { substrings: Some(5), progress: false }, &path).unwrap();
    assert_eq!((summary.substrings, summary.substring_bits.clone()), (5, vec![20; 5]));
    assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, summary.bytes);
    let idx = MihIndex::open(&path).unwrap();
    assert_eq!((idx.len(), idx.bits(), idx.bytes()), (n, bits, summary.bytes));
    // The index keeps the codes with padding bits cleared; the scan ignores them anyway.
    assert_eq!(idx.codes().data, BinaryCodes::from_packed(n, bits, dbd.clone()).unwrap().as_bytes());
    let o = opts(f64::INFINITY);
    assert_eq!(idx.topk_with(qs, 25, &o).unwrap().0, topk(qs, db, 25).unwrap());
    assert_eq!(idx.radius_with(qs, 30, &o).unwrap().0, radius(qs, db, 30).unwrap());
    let e = format!("{:#}", idx.topk(BinaryCodes::zeros(1, 64).view(), 1).unwrap_err());
    assert!(e.contains("code length mismatch") && e.contains("100-bit"), "{e}");
    assert!(format!("{:#}", idx.topk(qs, n + 1).unwrap_err()).contains("exceeds the database size"));

    let bytes = std::fs::read(&path).unwrap();
    let bad = dir.path().join("bad.cmhidx");
    let check = |data: &[u8], want: &str| {
        std::fs::write(&bad, data).unwrap();
        let e = format!("{:#}", MihIndex::open(&bad).unwrap_err());
        assert!(e.contains("bad.cmhidx") && e.contains(want), "expected {want:?} in: {e}");
    };
    check(&bytes[..bytes.len() - 64], "the file holds");
    check(b"\x93NUMPY not an index", "magic");
    let mut v = bytes.clone();
    v[8] = 2;
    check(&v, "version 2");
    // Offsets of table 0 start right after the codes section; break their order.
    let codes_end = (64 + 16 * 5usize).div_ceil(64) * 64 + n * 13;
    let off0 = codes_end.div_ceil(64) * 64;
    let mut v = bytes.clone();
    v[off0 + 4..off0 + 8].copy_from_slice(&(n as u32 + 1).to_le_bytes());
    check(&v, "offsets array");
}
