//! Export of packed codes to the formats other search engines load.
//!
//! - faiss: [`write_faiss`] writes an `IndexBinaryFlat` or an `IndexBinaryIVF` in faiss's own
//!   serialization (`faiss.read_index_binary` loads it; layout of faiss's `index_write.cpp`:
//!   fourcc `IBxF` / `IBwF`, the binary index header `d:i32 code_size:i32 ntotal:i64
//!   is_trained:u8 metric:i32`, vectors as `size:u64` + items, array inverted lists `ilar`).
//! - Milvus: [`write_milvus_json`] writes a row-based bulk-insert JSON file (`{"rows": [...]}`),
//!   the code as the list of its bytes, the form Milvus expects for a `BINARY_VECTOR` field.
//! - Elasticsearch / OpenSearch: [`write_bulk_ndjson`] writes the `_bulk` API's newline-delimited
//!   JSON: an action line and a document per item, the code as a hex string (Elasticsearch
//!   `dense_vector` with `element_type: bit`) or as signed bytes (OpenSearch `knn_vector` with
//!   `data_type: binary`, `space_type: hamming`).
//!
//! Every file is written to a temporary name and renamed when complete.

use crate::codes::{BinaryCodes, CodesRef};
use crate::npy::write_atomic;
use anyhow::{bail, Result};
use ndarray::ArrayView2;
use rand::seq::index::sample;
use rand::SeedableRng;
use std::io::Write;
use std::path::Path;

/// `IndexBinaryIVF` training as faiss does it: at most 256 training points per centroid (a seeded
/// sample beyond that), 25 iterations.
#[derive(Clone, Debug)]
pub struct IvfOptions {
    pub nlist: usize,
    pub iterations: usize,
    pub max_points_per_centroid: usize,
    pub seed: u64,
}

impl IvfOptions {
    pub fn new(nlist: usize) -> Self {
        Self { nlist, iterations: 25, max_points_per_centroid: 256, seed: 1234 }
    }
}

/// What a faiss export wrote.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FaissSummary {
    pub kind: &'static str,
    pub n: usize,
    pub bits: usize,
    pub nlist: Option<usize>,
    /// Items per inverted list (IVF only).
    pub list_sizes: Vec<usize>,
}

fn fourcc(s: &[u8; 4]) -> [u8; 4] {
    // faiss's fourcc packs the characters little-endian, so the bytes on disk are the characters.
    *s
}

fn check_faiss_bits(bits: usize) -> Result<()> {
    if bits == 0 || !bits.is_multiple_of(8) {
        bail!("faiss binary indexes need a code length that is a multiple of 8 bits, found {bits}");
    }
    Ok(())
}

/// faiss's binary index header (`write_index_binary_header`); metric 1 is faiss's METRIC_L2,
/// the value binary indexes carry.
fn binary_header(w: &mut impl Write, bits: usize, ntotal: usize) -> Result<()> {
    w.write_all(&(bits as i32).to_le_bytes())?;
    w.write_all(&((bits / 8) as i32).to_le_bytes())?;
    w.write_all(&(ntotal as i64).to_le_bytes())?;
    w.write_all(&[1u8])?;
    w.write_all(&1i32.to_le_bytes())?;
    Ok(())
}

fn flat_index(w: &mut impl Write, codes: CodesRef) -> Result<()> {
    w.write_all(&fourcc(b"IBxF"))?;
    binary_header(w, codes.bits, codes.n)?;
    w.write_all(&(codes.data.len() as u64).to_le_bytes())?;
    w.write_all(codes.data)?;
    Ok(())
}

/// Binary k-means in Hamming space: centroids are per-bit majority votes of their members
/// (ties keep the previous bit), points go to the nearest centroid (ties: lowest centroid).
/// An empty cluster is re-seeded with a point of the largest one. Returns the centroids.
pub(crate) fn binary_kmeans(codes: CodesRef, opts: &IvfOptions) -> Result<BinaryCodes> {
    let k = opts.nlist;
    if k == 0 {
        bail!("the number of inverted lists must be at least 1");
    }
    if codes.n < k {
        bail!("{} codes cannot train {k} inverted lists (faiss needs at least as many training points as lists)", codes.n);
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed);
    let cap = k.saturating_mul(opts.max_points_per_centroid.max(1));
    let train = if codes.n > cap {
        let mut rows = sample(&mut rng, codes.n, cap).into_vec();
        rows.sort_unstable();
        codes.to_owned().select_rows(&rows)
    } else {
        codes.to_owned()
    };
    let tv = train.view();
    let init = sample(&mut rng, tv.n, k).into_vec();
    let mut cent = train.select_rows(&init);
    let bits = codes.bits;
    for _ in 0..opts.iterations {
        let assign = crate::search::topk(tv, cent.view(), 1)?.indices;
        let mut ones = vec![0u32; k * bits];
        let mut size = vec![0usize; k];
        for i in 0..tv.n {
            let c = assign[[i, 0]] as usize;
            size[c] += 1;
            let row = tv.row(i);
            for b in 0..bits {
                ones[c * bits + b] += ((row[b / 8] >> (7 - b % 8)) & 1) as u32;
            }
        }
        let largest = (0..k).max_by_key(|&c| size[c]).unwrap();
        let s = cent.stride();
        let mut data = cent.as_bytes().to_vec();
        for c in 0..k {
            let row = &mut data[c * s..(c + 1) * s];
            if size[c] == 0 {
                // Re-seed from the largest cluster.
                let members: Vec<usize> = (0..tv.n).filter(|&i| assign[[i, 0]] as usize == largest).collect();
                let pick = members[rand::Rng::gen_range(&mut rng, 0..members.len())];
                row.copy_from_slice(tv.row(pick));
                continue;
            }
            for b in 0..bits {
                let (o, half) = (2 * ones[c * bits + b] as usize, size[c]);
                let mask = 0x80u8 >> (b % 8);
                if o > half {
                    row[b / 8] |= mask;
                } else if o < half {
                    row[b / 8] &= !mask;
                }
            }
        }
        cent = BinaryCodes::from_packed(k, bits, data)?;
    }
    Ok(cent)
}

/// Writes `codes` as a faiss binary index: `IndexBinaryFlat`, or with `ivf` an `IndexBinaryIVF`
/// (flat binary quantizer over centroids from `binary_kmeans`, every code in the list of its
/// nearest centroid, ids = database indices, `nprobe` 1 as faiss's default).
pub fn write_faiss(codes: CodesRef, ivf: Option<&IvfOptions>, path: &Path) -> Result<FaissSummary> {
    check_faiss_bits(codes.bits)?;
    let Some(opts) = ivf else {
        write_atomic(path, |w| flat_index(w, codes))?;
        return Ok(FaissSummary { kind: "IndexBinaryFlat", n: codes.n, bits: codes.bits, nlist: None, list_sizes: vec![] });
    };
    let cent = binary_kmeans(codes, opts)?;
    let nlist = opts.nlist;
    let assign = crate::search::topk(codes, cent.view(), 1)?.indices;
    let mut sizes = vec![0usize; nlist];
    for &c in assign.iter() {
        sizes[c as usize] += 1;
    }
    // Items of each list in database order (a counting sort by list).
    let mut start = vec![0usize; nlist + 1];
    for (c, &s) in sizes.iter().enumerate() {
        start[c + 1] = start[c] + s;
    }
    let mut order = vec![0u32; codes.n];
    let mut cur = start.clone();
    for (i, &c) in assign.iter().enumerate() {
        order[cur[c as usize]] = i as u32;
        cur[c as usize] += 1;
    }
    drop(assign);
    write_atomic(path, |w| {
        w.write_all(&fourcc(b"IBwF"))?;
        binary_header(w, codes.bits, codes.n)?;
        w.write_all(&(nlist as u64).to_le_bytes())?;
        w.write_all(&1u64.to_le_bytes())?; // nprobe
        flat_index(w, cent.view())?;
        // Direct map: none (type byte 0, empty array).
        w.write_all(&[0u8])?;
        w.write_all(&0u64.to_le_bytes())?;
        // Array inverted lists: "full" sizes when more than half the lists are used, else "sprs"
        // (list, size) pairs of the non-empty ones.
        w.write_all(&fourcc(b"ilar"))?;
        w.write_all(&(nlist as u64).to_le_bytes())?;
        w.write_all(&((codes.bits / 8) as u64).to_le_bytes())?;
        let non_empty = sizes.iter().filter(|&&s| s > 0).count();
        if non_empty > nlist / 2 {
            w.write_all(&fourcc(b"full"))?;
            w.write_all(&(nlist as u64).to_le_bytes())?;
            for &s in &sizes {
                w.write_all(&(s as u64).to_le_bytes())?;
            }
        } else {
            w.write_all(&fourcc(b"sprs"))?;
            w.write_all(&(2 * non_empty as u64).to_le_bytes())?;
            for (c, &s) in sizes.iter().enumerate().filter(|(_, &s)| s > 0) {
                w.write_all(&(c as u64).to_le_bytes())?;
                w.write_all(&(s as u64).to_le_bytes())?;
            }
        }
        for bounds in start.windows(2) {
            let items = &order[bounds[0]..bounds[1]];
            for &i in items {
                w.write_all(codes.row(i as usize))?;
            }
            for &i in items {
                w.write_all(&(i as i64).to_le_bytes())?;
            }
        }
        Ok(())
    })?;
    Ok(FaissSummary { kind: "IndexBinaryIVF", n: codes.n, bits: codes.bits, nlist: Some(nlist), list_sizes: sizes })
}

fn check_labels(codes: CodesRef, labels: Option<ArrayView2<u8>>) -> Result<()> {
    if let Some(l) = labels {
        if l.nrows() != codes.n {
            bail!("labels have {} rows but there are {} codes", l.nrows(), codes.n);
        }
    }
    Ok(())
}

/// Class indices of item `i` (the columns set to 1), as a JSON list.
fn label_list(labels: ArrayView2<u8>, i: usize) -> String {
    let cls: Vec<String> = labels.row(i).iter().enumerate().filter(|(_, &v)| v != 0).map(|(c, _)| c.to_string()).collect();
    format!("[{}]", cls.join(","))
}

/// Milvus row-based bulk-insert JSON: `{"rows": [{"id": i, "code": [bytes], "labels": [...]}]}`,
/// one row per line. The collection's `code` field is a `BINARY_VECTOR` of `dim = bits`.
pub fn write_milvus_json(codes: CodesRef, labels: Option<ArrayView2<u8>>, path: &Path) -> Result<()> {
    check_labels(codes, labels)?;
    if !codes.bits.is_multiple_of(8) {
        bail!("Milvus binary vectors need a code length that is a multiple of 8 bits, found {}", codes.bits);
    }
    write_atomic(path, |w| {
        w.write_all(b"{\"rows\": [\n")?;
        for i in 0..codes.n {
            let bytes: Vec<String> = codes.row(i).iter().map(|b| b.to_string()).collect();
            write!(w, "{{\"id\": {i}, \"code\": [{}]", bytes.join(","))?;
            if let Some(l) = labels {
                write!(w, ", \"labels\": {}", label_list(l, i))?;
            }
            w.write_all(if i + 1 < codes.n { b"},\n" } else { b"}\n" })?;
        }
        w.write_all(b"]}\n")?;
        Ok(())
    })
}

/// Which engine's bulk format [`write_bulk_ndjson`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BulkFlavour {
    /// Elasticsearch `dense_vector`, `element_type: bit`: the code as a hex string.
    Elasticsearch,
    /// OpenSearch `knn_vector`, `data_type: binary`: the code as signed bytes (-128..127).
    OpenSearch,
}

/// `_bulk` API input: `{"index": {"_index": NAME, "_id": "i"}}` then `{"id": i, "code": ...,
/// "labels": [...]}` per item.
pub fn write_bulk_ndjson(codes: CodesRef, labels: Option<ArrayView2<u8>>, index: &str, flavour: BulkFlavour, path: &Path) -> Result<()> {
    check_labels(codes, labels)?;
    if !codes.bits.is_multiple_of(8) {
        bail!("bit vectors need a code length that is a multiple of 8 bits, found {}", codes.bits);
    }
    let name = serde_json::to_string(index)?;
    write_atomic(path, |w| {
        for i in 0..codes.n {
            writeln!(w, "{{\"index\": {{\"_index\": {name}, \"_id\": \"{i}\"}}}}")?;
            let row = codes.row(i);
            let code = match flavour {
                BulkFlavour::Elasticsearch => format!("\"{}\"", row.iter().map(|b| format!("{b:02x}")).collect::<String>()),
                BulkFlavour::OpenSearch => format!("[{}]", row.iter().map(|&b| (b as i8).to_string()).collect::<Vec<_>>().join(",")),
            };
            write!(w, "{{\"id\": {i}, \"code\": {code}")?;
            if let Some(l) = labels {
                write!(w, ", \"labels\": {}", label_list(l, i))?;
            }
            w.write_all(b"}\n")?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn codes() -> BinaryCodes {
        BinaryCodes::from_packed(3, 16, vec![0x5f, 0x82, 0xc2, 0xd9, 0xcf, 0xeb]).unwrap()
    }

    #[test]
    fn faiss_flat_bytes_match_faiss_serialization() {
        // faiss.serialize_index_binary of IndexBinaryFlat(16) holding these three codes.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.faiss");
        write_faiss(codes().view(), None, &p).unwrap();
        let mut want = b"IBxF".to_vec();
        want.extend_from_slice(&[16, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(&[0x5f, 0x82, 0xc2, 0xd9, 0xcf, 0xeb]);
        assert_eq!(std::fs::read(&p).unwrap(), want);
        let e = format!("{:#}", write_faiss(BinaryCodes::zeros(2, 12).view(), None, &p).unwrap_err());
        assert!(e.contains("multiple of 8"), "{e}");
    }

    #[test]
    fn binary_kmeans_finds_separated_clusters() {
        // Two groups: near 0x0000 and near 0xffff (one bit flipped each).
        let mut data = vec![];
        for i in 0..20 {
            let flip = 1u16 << (i % 16);
            let v = if i < 10 { flip } else { !flip };
            data.extend_from_slice(&v.to_be_bytes());
        }
        let c = BinaryCodes::from_packed(20, 16, data).unwrap();
        let cent = binary_kmeans(c.view(), &IvfOptions { nlist: 2, iterations: 5, max_points_per_centroid: 256, seed: 3 }).unwrap();
        let mut rows: Vec<&[u8]> = (0..2).map(|i| cent.view().row(i)).collect();
        rows.sort();
        assert_eq!(rows, vec![&[0u8, 0][..], &[0xff, 0xff][..]]);
        let e = format!("{:#}", binary_kmeans(c.view(), &IvfOptions::new(21)).unwrap_err());
        assert!(e.contains("20 codes cannot train 21"), "{e}");
    }

    #[test]
    fn milvus_and_bulk_files() {
        let dir = tempfile::tempdir().unwrap();
        let labels = array![[1u8, 0, 1], [0, 0, 0], [0, 1, 0]];
        let p = dir.path().join("m.json");
        write_milvus_json(codes().view(), Some(labels.view()), &p).unwrap();
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(v["rows"][0], serde_json::json!({"id": 0, "code": [0x5f, 0x82], "labels": [0, 2]}));
        assert_eq!(v["rows"][1]["labels"], serde_json::json!([]));
        assert_eq!(v["rows"].as_array().unwrap().len(), 3);
        let p = dir.path().join("e.ndjson");
        write_bulk_ndjson(codes().view(), None, "codes", BulkFlavour::Elasticsearch, &p).unwrap();
        let lines: Vec<serde_json::Value> =
            std::fs::read_to_string(&p).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 6);
        assert_eq!(lines[2], serde_json::json!({"index": {"_index": "codes", "_id": "1"}}));
        assert_eq!(lines[3], serde_json::json!({"id": 1, "code": "c2d9"}));
        write_bulk_ndjson(codes().view(), Some(labels.view()), "codes", BulkFlavour::OpenSearch, &p).unwrap();
        let lines: Vec<serde_json::Value> =
            std::fs::read_to_string(&p).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines[1], serde_json::json!({"id": 0, "code": [95, -126], "labels": [0, 2]}));
        let e = format!("{:#}", write_milvus_json(codes().view(), Some(labels.slice(ndarray::s![..2, ..])), &p).unwrap_err());
        assert!(e.contains("labels have 2 rows but there are 3 codes"), "{e}");
    }
}
