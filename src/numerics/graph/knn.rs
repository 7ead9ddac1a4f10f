//! k nearest neighbours of every row of a point set: exact with a kd-tree ([`knn`]), approximate
//! with a random-projection forest and neighbour exploring ([`knn_approx`]) for large sets.

use super::kdtree::{Cand, KdTree};
use crate::numerics::pages::prefetch;
use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;

/// Exact k nearest neighbours (squared distance, index) of every row of `pts` among the other
/// rows, nearest first, ties by index; a kd-tree, queries in parallel.
pub fn knn(pts: &Array2<f64>, k: usize) -> Vec<Vec<(f64, usize)>> {
    let pts = pts.as_standard_layout();
    let tree = KdTree::build(pts.as_slice().expect("standard layout"), pts.ncols());
    (0..pts.nrows()).into_par_iter().map(|i| tree.query(i, k)).collect()
}

/// Approximate k nearest neighbours (same output as [`knn`]) for large n: candidates from 8
/// random-projection trees (split at the median projection on a random direction down to leaves
/// of ≤ max(2k + 2, 32) points), exact top k among them, then 2 rounds of neighbour exploring
/// (the current neighbours, their neighbours and up to 2k reverse neighbours are candidates, as
/// in NN-descent). O(n log n · dim + n (trees · leaf + k²) dim): near-linear. For memory
/// locality the work runs on the points reordered by the leaves of the first tree (in place: the
/// points are taken by value, so no second copy of them is made).
pub fn knn_approx(pts: Array2<f64>, k: usize, seed: u64) -> Vec<Vec<(f64, usize)>> {
    knn_approx_ordered(pts, k, seed).0
}

/// [`knn_approx`] and the order it worked in: the points in the leaf order of its first tree
/// (position p holds point `order[p]`), an order in which nearby points sit at nearby positions,
/// so that a product with the kNN graph taken in it reads memory almost sequentially.
pub fn knn_approx_ordered(pts: Array2<f64>, k: usize, seed: u64) -> (Vec<Vec<(f64, usize)>>, Vec<usize>) {
    const TREES: u64 = 8;
    const ROUNDS: usize = 2;
    let n = pts.nrows();
    let dim = pts.ncols();
    let pts = if pts.is_standard_layout() { pts } else { pts.as_standard_layout().into_owned() };
    let leaf = (2 * k + 2).max(32);
    let forest: Vec<Vec<Vec<usize>>> = (0..TREES)
        .into_par_iter()
        .map(|t| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(t));
            let mut idx: Vec<usize> = (0..n).collect();
            let mut leaves = Vec::new();
            rp_split(&mut idx, pts.as_slice().expect("standard layout"), dim, leaf, &mut rng, &mut leaves);
            leaves
        })
        .collect();
    // Reorder: position p holds original point perm[p]; nearby positions are nearby points.
    let perm: Vec<usize> = forest[0].iter().flatten().copied().collect();
    let mut pos = vec![0u32; n];
    for (p, &i) in perm.iter().enumerate() {
        pos[i] = p as u32;
    }
    let (mut ps, offset) = pts.into_raw_vec_and_offset();
    ps.drain(..offset.unwrap_or(0));
    ps.truncate(n * dim);
    permute_rows(&mut ps, dim, &perm);
    // Per tree, the leaf of each position, and the leaves as position lists.
    let leaves: Vec<(Vec<Vec<u32>>, Vec<u32>)> = forest
        .into_par_iter()
        .map(|tree| {
            let mut leaf_of = vec![0u32; n];
            let lists: Vec<Vec<u32>> = tree
                .iter()
                .enumerate()
                .map(|(l, members)| {
                    members
                        .iter()
                        .map(|&i| {
                            leaf_of[pos[i] as usize] = l as u32;
                            pos[i]
                        })
                        .collect()
                })
                .collect();
            (lists, leaf_of)
        })
        .collect();
    // Exact top k of position p among `cands` (positions), ties by original index.
    let top_k = |p: usize, cands: &mut Vec<u32>, out: &mut [(f64, u32)]| {
        cands.sort_unstable();
        cands.dedup();
        let qp = &ps[p * dim..(p + 1) * dim];
        // The candidates' rows lie at scattered positions: each is requested a few candidates
        // ahead of its distance, so the loads overlap instead of stalling one by one.
        let mut d: Vec<Cand> = Vec::with_capacity(cands.len());
        for (t, &j) in cands.iter().enumerate() {
            if let Some(&ahead) = cands.get(t + PREFETCH_AHEAD) {
                let row = ps[ahead as usize * dim..].as_ptr();
                (0..dim).step_by(8).for_each(|c| prefetch(row.wrapping_add(c)));
            }
            let j = j as usize;
            if j != p {
                d.push(Cand(qp.iter().zip(&ps[j * dim..(j + 1) * dim]).map(|(a, b)| (a - b) * (a - b)).sum(), perm[j]));
            }
        }
        if d.len() > k {
            d.select_nth_unstable(k - 1);
            d.truncate(k);
        }
        d.sort_unstable();
        for (o, Cand(d2, i)) in out.iter_mut().zip(d) {
            *o = (d2, pos[i]);
        }
    };
    // nn[p * k .. (p + 1) * k]: the current neighbours of position p (squared distance, position).
    let mut nn = vec![(0.0f64, 0u32); n * k];
    nn.par_chunks_mut(k).enumerate().for_each_init(Vec::new, |cands, (p, out)| {
        cands.clear();
        for (lists, leaf_of) in &leaves {
            cands.extend_from_slice(&lists[leaf_of[p] as usize]);
        }
        top_k(p, cands, out);
    });
    for _ in 0..ROUNDS {
        let mut reverse: Vec<Vec<u32>> = vec![Vec::new(); n];
        for (p, row) in nn.chunks(k).enumerate() {
            for &(_, q) in row {
                if reverse[q as usize].len() < 2 * k {
                    reverse[q as usize].push(p as u32);
                }
            }
        }
        let prev = &nn;
        let mut next = vec![(0.0f64, 0u32); n * k];
        next.par_chunks_mut(k).enumerate().for_each_init(Vec::new, |cands, (p, out)| {
            cands.clear();
            cands.extend_from_slice(&reverse[p]);
            for &(_, q) in &prev[p * k..(p + 1) * k] {
                cands.push(q);
                cands.extend(prev[q as usize * k..(q as usize + 1) * k].iter().map(|x| x.1));
            }
            top_k(p, cands, out);
        });
        nn = next;
    }
    let mut out = vec![Vec::new(); n];
    for (p, row) in nn.chunks(k).enumerate() {
        out[perm[p]] = row.iter().map(|&(d2, q)| (d2, perm[q as usize])).collect();
    }
    (out, perm)
}

/// How many candidates ahead of its distance a candidate's row is requested ([`knn_approx`]).
const PREFETCH_AHEAD: usize = 4;

/// Reorders the rows (of `dim` values each) of a row-major buffer in place so that new row p is
/// old row `perm[p]` (perm a permutation), following its cycles with one row of scratch.
pub fn permute_rows(buf: &mut [f64], dim: usize, perm: &[usize]) {
    let mut done = vec![false; perm.len()];
    let mut first = vec![0.0; dim];
    for start in 0..perm.len() {
        if done[start] {
            continue;
        }
        first.copy_from_slice(&buf[start * dim..(start + 1) * dim]);
        let mut p = start;
        loop {
            done[p] = true;
            let src = perm[p];
            if src == start {
                buf[p * dim..(p + 1) * dim].copy_from_slice(&first);
                break;
            }
            buf.copy_within(src * dim..(src + 1) * dim, p * dim);
            p = src;
        }
    }
}

/// Splits `idx` recursively at the median projection on a random Gaussian direction until the
/// pieces have at most `leaf` points; appends the leaves.
fn rp_split(idx: &mut [usize], ps: &[f64], dim: usize, leaf: usize, rng: &mut ChaCha8Rng, leaves: &mut Vec<Vec<usize>>) {
    if idx.len() <= leaf {
        leaves.push(idx.to_vec());
        return;
    }
    let dir: Vec<f64> = (0..dim).map(|_| rng.sample(StandardNormal)).collect();
    let mut keyed: Vec<(f64, usize)> =
        idx.iter().map(|&i| (ps[i * dim..(i + 1) * dim].iter().zip(&dir).map(|(a, b)| a * b).sum(), i)).collect();
    let mid = idx.len() / 2;
    keyed.select_nth_unstable_by(mid, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    for (slot, &(_, i)) in idx.iter_mut().zip(&keyed) {
        *slot = i;
    }
    let (left, right) = idx.split_at_mut(mid);
    rp_split(left, ps, dim, leaf, rng, leaves);
    rp_split(right, ps, dim, leaf, rng, leaves);
}

/// The k nearest neighbours by brute force, for tests: all distances, sorted by (distance, index).
#[cfg(test)]
pub(crate) fn brute_knn(pts: &Array2<f64>, k: usize) -> Vec<Vec<(f64, usize)>> {
    (0..pts.nrows())
        .map(|i| {
            let mut all: Vec<(f64, usize)> =
                (0..pts.nrows()).filter(|&j| j != i).map(|j| ((&pts.row(i) - &pts.row(j)).mapv(|v| v * v).sum(), j)).collect();
            all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            all.truncate(k);
            all
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::numerics::random::randn;

    #[test]
    fn kd_tree_knn_matches_brute_force() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for (n, d, k) in [(300, 3, 7), (200, 6, 15), (40, 1, 39), (5, 2, 4)] {
            // Integer coordinates and repeated rows make many distance ties.
            let mut pts = Array2::from_shape_simple_fn((n, d), || rng.gen_range(0..5) as f64);
            for i in 0..n / 10 {
                let src = pts.row(i + 1).to_owned();
                pts.row_mut(i).assign(&src);
            }
            assert_eq!(knn(&pts, k), brute_knn(&pts, k), "n={n} d={d} k={k}");
        }
    }

    #[test]
    fn approximate_knn_has_high_recall() {
        // Clustered data in 10 dimensions (like Zₘ: classes plus within-class spread in all
        // directions), where an exact kd-tree degenerates towards brute force.
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        let (n, d, k) = (3000, 10, 10);
        let centres = randn(10, d, &mut rng) * 3.0;
        let mut pts = randn(n, d, &mut rng);
        for i in 0..n {
            let c = centres.row(i % 10).to_owned();
            pts.row_mut(i).scaled_add(1.0, &c);
        }
        let exact = knn(&pts, k);
        let approx = knn_approx(pts.clone(), k, 5);
        let mut hits = 0;
        for (e, a) in exact.iter().zip(&approx) {
            assert_eq!(a.len(), k);
            assert!(a.windows(2).all(|w| (w[0].0, w[0].1) <= (w[1].0, w[1].1)), "sorted by (distance, index)");
            hits += a.iter().filter(|x| e.contains(x)).count();
        }
        let recall = hits as f64 / (n * k) as f64;
        assert!(recall > 0.95, "recall {recall:.3}");
        // Deterministic for a seed.
        assert_eq!(approx, knn_approx(pts.clone(), k, 5));
    }

    #[test]
    fn permute_rows_follows_the_permutation() {
        let dim = 3;
        let perm = vec![4, 0, 3, 1, 2, 6, 5];
        let old: Vec<f64> = (0..perm.len() * dim).map(|v| v as f64).collect();
        let mut buf = old.clone();
        permute_rows(&mut buf, dim, &perm);
        for (p, &src) in perm.iter().enumerate() {
            assert_eq!(&buf[p * dim..(p + 1) * dim], &old[src * dim..(src + 1) * dim], "row {p}");
        }
    }
}
