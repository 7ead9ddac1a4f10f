//! Hamming search over packed codes (see [`crate::codes`] for the layout).

use crate::codes::CodesRef;
use anyhow::{bail, Result};
use ndarray::Array2;

#[inline]
fn hamming(a: &[u8], b: &[u8]) -> u32 {
    let mut d = 0;
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        d += (u64::from_le_bytes(x.try_into().unwrap()) ^ u64::from_le_bytes(y.try_into().unwrap())).count_ones();
    }
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        d += (x ^ y).count_ones();
    }
    d
}

/// Hamming distances from one packed query row to every database code.
pub fn distances(query: &[u8], db: CodesRef, out: &mut [u32]) {
    debug_assert_eq!(out.len(), db.n);
    for (j, o) in out.iter_mut().enumerate() {
        *o = hamming(query, db.row(j));
    }
}

/// Top-k results: row i holds query i's k nearest database indices, ordered by (distance, index).
#[derive(Clone, Debug, PartialEq)]
pub struct SearchResult {
    pub indices: Array2<i64>,
    pub distances: Array2<i32>,
}

/// Exhaustive top-k Hamming search.
pub fn topk(queries: CodesRef, db: CodesRef, k: usize) -> Result<SearchResult> {
    if queries.bits != db.bits {
        bail!("query codes have {} bits but database codes have {}", queries.bits, db.bits);
    }
    if k == 0 {
        bail!("k must be at least 1");
    }
    if k > db.n {
        bail!("k = {k} exceeds the database size {}", db.n);
    }
    let mut indices = Array2::zeros((queries.n, k));
    let mut dists = Array2::zeros((queries.n, k));
    let mut d = vec![0u32; db.n];
    for i in 0..queries.n {
        distances(queries.row(i), db, &mut d);
        let mut order: Vec<usize> = (0..db.n).collect();
        order.sort_by_key(|&j| (d[j], j));
        for (r, &j) in order[..k].iter().enumerate() {
            indices[[i, r]] = j as i64;
            dists[[i, r]] = d[j] as i32;
        }
    }
    Ok(SearchResult { indices, distances: dists })
}
