//! Search tests: every kernel, layout, block size, shard count and thread count must give exactly
//! the brute-force answer (full sort by (distance, index)) computed bit by bit.

use super::*;
use crate::codes::BinaryCodes;
use ndarray::array;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Distance computed one bit at a time from the packbits layout (independent of the kernels).
fn bit_distance(a: &[u8], b: &[u8], bits: usize) -> u32 {
    (0..bits).filter(|&j| (a[j / 8] >> (7 - j % 8)) & 1 != (b[j / 8] >> (7 - j % 8)) & 1).count() as u32
}

/// Brute force: all (distance, index) pairs of one query, fully sorted.
fn brute(q: &[u8], db: CodesRef) -> Vec<(u32, u32)> {
    let mut v: Vec<(u32, u32)> = (0..db.n).map(|j| (bit_distance(q, db.row(j), db.bits), j as u32)).collect();
    v.sort();
    v
}

fn brute_topk(qs: CodesRef, db: CodesRef, k: usize) -> (Array2<i64>, Array2<i32>) {
    let mut idx = Array2::zeros((qs.n, k));
    let mut dist = Array2::zeros((qs.n, k));
    for i in 0..qs.n {
        for (r, &(d, j)) in brute(qs.row(i), db).iter().take(k).enumerate() {
            idx[[i, r]] = j as i64;
            dist[[i, r]] = d as i32;
        }
    }
    (idx, dist)
}

fn brute_radius(qs: CodesRef, db: CodesRef, r: usize) -> Vec<Vec<(u32, u32)>> {
    (0..qs.n).map(|i| brute(qs.row(i), db).into_iter().filter(|&(d, _)| d as usize <= r).map(|(d, j)| (j, d)).collect()).collect()
}

/// Random packed codes: `pool` distinct random codes, each database row a pool code with `flips`
/// random bits flipped (many exact duplicates and near ties when pool and flips are small).
/// Padding bits are set to 1 when `dirty` (memory-mapped files may carry them; kernels ignore them).
fn gen_codes(rng: &mut ChaCha8Rng, n: usize, bits: usize, pool: usize, flips: usize, dirty: bool) -> Vec<u8> {
    let s = bits.div_ceil(8);
    let pool: Vec<Vec<u8>> = (0..pool.max(1)).map(|_| (0..s).map(|_| rng.gen()).collect()).collect();
    let mut data = Vec::with_capacity(n * s);
    for _ in 0..n {
        let mut row = pool[rng.gen_range(0..pool.len())].clone();
        for _ in 0..flips {
            let j = rng.gen_range(0..bits);
            row[j / 8] ^= 0x80 >> (j % 8);
        }
        let rem = bits % 8;
        if rem != 0 {
            let pad = 0xffu8 >> rem;
            if dirty {
                row[s - 1] |= pad;
            } else {
                row[s - 1] &= !pad;
            }
        }
        data.extend_from_slice(&row);
    }
    data
}

/// A database of `n` and `nq` queries from one seed: queries have one more flipped bit.
fn gen_pair(seed: u64, n: usize, nq: usize, bits: usize, pool: usize, flips: usize, dirty: bool) -> (Vec<u8>, Vec<u8>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dbd = gen_codes(&mut rng, n, bits, pool, flips, dirty);
    let qd = gen_codes(&mut rng, nq, bits, pool, flips + 1, dirty);
    (dbd, qd)
}

fn option_sets() -> Vec<SearchOptions> {
    let mut v = vec![];
    for kernel in Kernel::available() {
        v.push(SearchOptions { kernel: Some(kernel), ..Default::default() });
        v.push(SearchOptions { kernel: Some(kernel), query_block: Some(5), block_codes: Some(256), shards: Some(3) });
        v.push(SearchOptions { kernel: Some(kernel), query_block: Some(9), block_codes: Some(512), shards: Some(1) });
    }
    v
}

fn bits_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![Just(16usize), Just(32), Just(64), Just(128), Just(256), 1..=300usize]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn topk_equals_brute_force(
        bits in bits_strategy(), n in 1usize..=900, nq in 1usize..=20, pool in 1usize..=40,
        flips in 0usize..=6, kfrac in 0.0f64..=1.0, dirty in any::<bool>(), seed in any::<u64>(),
    ) {
        let (dbd, qd) = gen_pair(seed, n, nq, bits, pool, flips, dirty);
        let db = CodesRef::new(n, bits, &dbd).unwrap();
        let qs = CodesRef::new(nq, bits, &qd).unwrap();
        let k = ((kfrac * n as f64) as usize).clamp(1, n);
        let (ri, rd) = brute_topk(qs, db, k);
        for opts in option_sets() {
            let got = topk_with(qs, db, k, &opts).unwrap();
            prop_assert_eq!(&got.indices, &ri, "indices, bits {} n {} k {} {:?}", bits, n, k, opts);
            prop_assert_eq!(&got.distances, &rd, "distances, bits {} n {} k {} {:?}", bits, n, k, opts);
        }
    }

    #[test]
    fn radius_equals_brute_force(
        bits in bits_strategy(), n in 1usize..=900, nq in 1usize..=12, pool in 1usize..=40,
        flips in 0usize..=6, rfrac in 0.0f64..=1.0, dirty in any::<bool>(), seed in any::<u64>(),
    ) {
        let (dbd, qd) = gen_pair(seed, n, nq, bits, pool, flips, dirty);
        let db = CodesRef::new(n, bits, &dbd).unwrap();
        let qs = CodesRef::new(nq, bits, &qd).unwrap();
        // Radii concentrated where results are neither empty nor everything.
        let r = (rfrac * rfrac * (bits as f64 * 0.6)) as usize;
        let want = brute_radius(qs, db, r);
        for opts in option_sets() {
            let got = radius_with(qs, db, r, &opts).unwrap();
            prop_assert_eq!(&got, &want, "bits {} n {} r {} {:?}", bits, n, r, opts);
        }
    }

    #[test]
    fn distances_equal_bitwise(bits in bits_strategy(), n in 0usize..=300, dirty in any::<bool>(), seed in any::<u64>()) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let dbd = gen_codes(&mut rng, n, bits, 50, 3, dirty);
        let qd = gen_codes(&mut rng, 1, bits, 1, 0, dirty);
        let db = CodesRef::new(n, bits, &dbd).unwrap();
        let want: Vec<u32> = (0..n).map(|j| bit_distance(&qd, db.row(j), bits)).collect();
        for kernel in Kernel::available() {
            let mut out = vec![0u32; n];
            distances_with(kernel, &qd, db, &mut out);
            prop_assert_eq!(&out, &want, "{:?} bits {}", kernel, bits);
        }
    }
}

#[test]
fn hand_worked_topk_with_ties() {
    // Query 0000. Database distances: 1, 0, 2, 1, 0 -> order (0,1) (0,4) (1,0) (1,3) (2,2).
    let q = BinaryCodes::from_bits(array![[0u8, 0, 0, 0]].view()).unwrap();
    let db = BinaryCodes::from_bits(array![[1u8, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]].view()).unwrap();
    for opts in option_sets() {
        let r = topk_with(q.view(), db.view(), 3, &opts).unwrap();
        assert_eq!(r.indices, array![[1i64, 4, 0]]);
        assert_eq!(r.distances, array![[0i32, 0, 1]]);
        let rr = radius_with(q.view(), db.view(), 1, &opts).unwrap();
        assert_eq!(rr, vec![vec![(1u32, 0u32), (4, 0), (0, 1), (3, 1)]]);
    }
}

#[test]
fn many_threads_many_blocks_large_k() {
    // Long enough for several cache blocks, shards, compactions and hit paths per kernel.
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for bits in [16usize, 32, 64, 128, 256, 96, 200] {
        let n = 5000;
        let dbd = gen_codes(&mut rng, n, bits, 2000, 2, false);
        let qd = gen_codes(&mut rng, 19, bits, 2000, 3, false);
        let db = CodesRef::new(n, bits, &dbd).unwrap();
        let qs = CodesRef::new(19, bits, &qd).unwrap();
        for k in [1usize, 37, 700] {
            let (ri, rd) = brute_topk(qs, db, k);
            for threads in [1usize, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                for kernel in Kernel::available() {
                    let opts = SearchOptions { kernel: Some(kernel), block_codes: Some(1024), ..Default::default() };
                    let got = pool.install(|| topk_with(qs, db, k, &opts)).unwrap();
                    assert_eq!(got.indices, ri, "{kernel:?} bits {bits} k {k} threads {threads}");
                    assert_eq!(got.distances, rd);
                }
            }
        }
    }
}

#[test]
fn distance_sum_matches() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for bits in [64usize, 128, 37] {
        let dbd = gen_codes(&mut rng, 1000, bits, 1000, 0, false);
        let qd = gen_codes(&mut rng, 11, bits, 11, 0, false);
        let db = CodesRef::new(1000, bits, &dbd).unwrap();
        let qs = CodesRef::new(11, bits, &qd).unwrap();
        // distance_sum covers full chunks only: compare on a multiple of the chunk size.
        let db = CodesRef::new(768, bits, &db.data[..768 * db.stride()]).unwrap();
        let want: u64 = (0..11).map(|i| (0..768).map(|j| bit_distance(qs.row(i), db.row(j), bits) as u64).sum::<u64>()).sum();
        for kernel in Kernel::available() {
            let opts = SearchOptions { kernel: Some(kernel), ..Default::default() };
            assert_eq!(distance_sum(qs, db, &opts).unwrap(), want, "{kernel:?} bits {bits}");
        }
    }
}

#[test]
fn bad_input_is_refused_clearly() {
    let a = BinaryCodes::zeros(3, 64);
    let b = BinaryCodes::zeros(2, 32);
    let e = format!("{:#}", topk(b.view(), a.view(), 1).unwrap_err());
    assert!(e.contains("code length mismatch") && e.contains("32") && e.contains("64"), "{e}");
    assert!(format!("{:#}", radius(b.view(), a.view(), 1).unwrap_err()).contains("mismatch"));
    let e = format!("{:#}", topk(a.view(), a.view(), 0).unwrap_err());
    assert!(e.contains("k must be at least 1"), "{e}");
    let e = format!("{:#}", topk(a.view(), a.view(), 4).unwrap_err());
    assert!(e.contains("k = 4") && e.contains("database size (3"), "{e}");
    // Empty query set and radius over an empty database are fine.
    let none = BinaryCodes::zeros(0, 64);
    assert_eq!(topk(none.view(), a.view(), 2).unwrap().indices.dim(), (0, 2));
    assert_eq!(radius(a.view(), none.view(), 3).unwrap(), vec![vec![]; 3]);
}

fn write_packed(path: &std::path::Path, data: &[u8], n: usize, cols: usize) {
    crate::npy::write_npy(path, &Array2::from_shape_vec((n, cols), data.to_vec()).unwrap()).unwrap();
}

#[test]
fn mapped_codes_read_in_place_and_search() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (n, bits) = (1000, 60);
    let data = gen_codes(&mut rng, n, bits, 1000, 0, false);
    let path = dir.path().join("db_packed.npy");
    write_packed(&path, &data, n, 8);
    // Default bits = 8 × columns; explicit bits checked against the column count.
    assert_eq!(MappedCodes::open(&path, None).unwrap().bits(), 64);
    let m = MappedCodes::open(&path, Some(bits)).unwrap();
    assert_eq!((m.len(), m.bits()), (n, bits));
    assert_eq!(m.view().data, &data[..]);
    let e = format!("{:#}", MappedCodes::open(&path, Some(72)).unwrap_err());
    assert!(e.contains("db_packed.npy") && e.contains("need 9 columns"), "{e}");
    // Search on the map equals search on owned codes.
    let owned = BinaryCodes::from_packed(n, bits, data.clone()).unwrap();
    let q = owned.select_rows(&[5, 17, 999]);
    assert_eq!(topk(q.view(), m.view(), 10).unwrap(), topk(q.view(), owned.view(), 10).unwrap());
    // open_codes: packed uint8 -> mapped; int8 ±1 and bool -> owned; same codes either way.
    let f = open_codes(&path, Some(bits)).unwrap();
    assert!(matches!(f, CodeFile::Mapped(_)));
    owned.save_npy(dir.path(), "codes").unwrap();
    let f8 = open_codes(&dir.path().join("codes.npy"), None).unwrap();
    assert!(matches!(f8, CodeFile::Owned(_)));
    assert_eq!(f8.view().data, owned.as_bytes());
    assert_eq!(f8.view().bits, bits);
    let boolp = dir.path().join("codes_bool.npy");
    crate::npy::write_npy(&boolp, &owned.to_pm1().mapv(|v| v > 0)).unwrap();
    let fb = open_codes(&boolp, None).unwrap();
    assert!(matches!(fb, CodeFile::Owned(_)));
    assert_eq!(fb.view().data, owned.as_bytes());
}

#[test]
fn mapped_codes_refuse_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trunc.npy");
    write_packed(&path, &vec![7u8; 100 * 8], 100, 8);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
    let e = format!("{:#}", MappedCodes::open(&path, None).unwrap_err());
    assert!(e.contains("trunc.npy") && e.contains("truncated") && e.contains("800 bytes"), "{e}");
    let e = format!("{:#}", open_codes(&path, None).unwrap_err());
    assert!(e.contains("trunc.npy") && e.contains("truncated"), "{e}");
    // Trailing bytes.
    let mut more = bytes.clone();
    more.extend_from_slice(&[0, 0]);
    std::fs::write(&path, &more).unwrap();
    assert!(format!("{:#}", MappedCodes::open(&path, None).unwrap_err()).contains("unexpected bytes"));
    // Wrong dtype, wrong rank, not an npy at all.
    let f32p = dir.path().join("f.npy");
    crate::npy::write_npy(&f32p, &array![[1.0f32, 2.0]]).unwrap();
    let e = format!("{:#}", MappedCodes::open(&f32p, None).unwrap_err());
    assert!(e.contains("f.npy") && e.contains("uint8") && e.contains("<f4"), "{e}");
    let e = format!("{:#}", open_codes(&f32p, None).unwrap_err());
    assert!(e.contains("f.npy") && e.contains("float32"), "{e}");
    let one = dir.path().join("one.npy");
    crate::npy::write_npy(&one, &ndarray::Array1::from(vec![1u8, 2, 3])).unwrap();
    assert!(format!("{:#}", MappedCodes::open(&one, None).unwrap_err()).contains("2-d"));
    let junk = dir.path().join("junk.npy");
    std::fs::write(&junk, b"hello world, not numpy").unwrap();
    assert!(format!("{:#}", MappedCodes::open(&junk, None).unwrap_err()).contains("junk.npy"));
    assert!(format!("{:#}", open_codes(&junk, None).unwrap_err()).contains("junk.npy"));
    let missing = dir.path().join("missing.npy");
    assert!(format!("{:#}", open_codes(&missing, None).unwrap_err()).contains("missing.npy"));
}

#[test]
fn npy_header_version_2_and_fortran() {
    let dir = tempfile::tempdir().unwrap();
    // Format 2.0 header (u32 length), hand-written.
    let header = "{'descr': '|u1', 'fortran_order': False, 'shape': (3, 2), }";
    let mut bytes = b"\x93NUMPY\x02\x00".to_vec();
    let pad = 64 - (12 + header.len() + 1) % 64;
    bytes.extend_from_slice(&((header.len() + pad + 1) as u32).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend(std::iter::repeat_n(b' ', pad));
    bytes.push(b'\n');
    bytes.extend_from_slice(&[1, 2, 3, 4, 5, 6]);
    let p = dir.path().join("v2.npy");
    std::fs::write(&p, &bytes).unwrap();
    let m = MappedCodes::open(&p, None).unwrap();
    assert_eq!((m.len(), m.bits()), (3, 16));
    assert_eq!(m.view().row(1), &[3, 4]);
    // Fortran order: refused by MappedCodes, loaded (transposed to C order) by open_codes.
    let header = "{'descr': '|u1', 'fortran_order': True, 'shape': (3, 2), }";
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    let pad = 64 - (10 + header.len() + 1) % 64;
    bytes.extend_from_slice(&((header.len() + pad + 1) as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend(std::iter::repeat_n(b' ', pad));
    bytes.push(b'\n');
    bytes.extend_from_slice(&[1, 3, 5, 2, 4, 6]);
    let pf = dir.path().join("fortran.npy");
    std::fs::write(&pf, &bytes).unwrap();
    assert!(format!("{:#}", MappedCodes::open(&pf, None).unwrap_err()).contains("Fortran"));
    let f = open_codes(&pf, None).unwrap();
    assert!(matches!(f, CodeFile::Owned(_)));
    assert_eq!(f.view().data, &[1, 2, 3, 4, 5, 6]);
}

#[test]
fn cli_run_writes_topk_and_radius() {
    let dir = tempfile::tempdir().unwrap();
    let db = BinaryCodes::from_bits(array![[1u8, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]].view()).unwrap();
    let q = BinaryCodes::from_bits(array![[0u8, 0, 0, 0], [1, 1, 1, 1]].view()).unwrap();
    db.save_npy(dir.path(), "db").unwrap();
    q.save_npy(dir.path(), "q").unwrap();
    let out = dir.path().join("out");
    let args = SearchArgs {
        db: Some(dir.path().join("db_packed.npy")),
        index: None,
        query: dir.path().join("q.npy"),
        k: Some(2),
        radius: None,
        bits: Some(4),
        out: out.clone(),
        kernel: None,
    };
    run(&args).unwrap();
    let idx = crate::npy::read_npy(&out.join("indices.npy")).unwrap();
    assert_eq!(idx.to_i64().unwrap().into_raw_vec_and_offset().0, vec![1, 4, 2, 0]);
    let dist = crate::npy::read_npy(&out.join("distances.npy")).unwrap();
    assert_eq!(dist.to_i64().unwrap().into_raw_vec_and_offset().0, vec![0, 0, 2, 3]);
    let out2 = dir.path().join("out2");
    run(&SearchArgs { k: None, radius: Some(1), out: out2.clone(), ..args.clone() }).unwrap();
    let off = crate::npy::read_npy(&out2.join("offsets.npy")).unwrap().to_i64().unwrap().into_raw_vec_and_offset().0;
    assert_eq!(off, vec![0, 4, 4]);
    // Bad input: nothing written.
    let out3 = dir.path().join("out3");
    let e = run(&SearchArgs { k: Some(9), out: out3.clone(), ..args.clone() }).unwrap_err();
    assert!(format!("{e:#}").contains("exceeds the database size"), "{e:#}");
    assert!(!out3.exists());
    let e = run(&SearchArgs { bits: None, out: out3.clone(), ..args.clone() }).unwrap_err();
    assert!(format!("{e:#}").contains("mismatch"), "{e:#}");
    // The same searches through a multi-index hashing index write the same files.
    let ix = dir.path().join("db.cmhidx");
    crate::search::mih::build_index_file(db.view(), &crate::search::mih::BuildOptions::default(), &ix).unwrap();
    let with_index = |a: &SearchArgs, out: &std::path::Path| SearchArgs {
        db: None,
        index: Some(ix.clone()),
        bits: None,
        out: out.to_path_buf(),
        ..a.clone()
    };
    let out4 = dir.path().join("out4");
    run(&with_index(&args, &out4)).unwrap();
    run(&with_index(&SearchArgs { k: None, radius: Some(1), ..args.clone() }, &out4.join("r"))).unwrap();
    for f in ["indices.npy", "distances.npy"] {
        assert_eq!(std::fs::read(out.join(f)).unwrap(), std::fs::read(out4.join(f)).unwrap(), "{f}");
    }
    for f in ["indices.npy", "distances.npy", "offsets.npy"] {
        assert_eq!(std::fs::read(out2.join(f)).unwrap(), std::fs::read(out4.join("r").join(f)).unwrap(), "{f}");
    }
}

mod mih;
