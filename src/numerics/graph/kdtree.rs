//! A kd-tree over the rows of a row-major point matrix, for exact k-nearest-neighbour queries.
// `!(a > b)` is also true for NaN, which these checks must catch.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use std::collections::BinaryHeap;

/// A kd-tree over the rows of a row-major point matrix (split on the widest dimension at the
/// median; leaves of at most 16 points).
pub struct KdTree<'a> {
    pts: &'a [f64],
    dim: usize,
    idx: Vec<usize>,
    nodes: Vec<KdNode>,
}

enum KdNode {
    Leaf { start: usize, end: usize },
    Split { dim: usize, value: f64, left: usize, right: usize },
}

/// Max-heap entry ordered by (distance², index).
#[derive(PartialEq)]
pub(super) struct Cand(pub(super) f64, pub(super) usize);
impl Eq for Cand {}
impl PartialOrd for Cand {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Cand {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0).then(self.1.cmp(&o.1))
    }
}

impl<'a> KdTree<'a> {
    const LEAF: usize = 16;

    pub fn build(pts: &'a [f64], dim: usize) -> Self {
        let n = pts.len().checked_div(dim).unwrap_or(0);
        let mut t = Self { pts, dim, idx: (0..n).collect(), nodes: Vec::new() };
        if n > 0 {
            t.build_node(0, n);
        }
        t
    }

    fn coord(&self, i: usize, d: usize) -> f64 {
        self.pts[i * self.dim + d]
    }

    fn build_node(&mut self, start: usize, end: usize) -> usize {
        let id = self.nodes.len();
        self.nodes.push(KdNode::Leaf { start, end });
        if end - start <= Self::LEAF {
            return id;
        }
        let (mut best_d, mut best_spread) = (0, 0.0);
        for d in 0..self.dim {
            let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
            for &i in &self.idx[start..end] {
                let c = self.coord(i, d);
                lo = lo.min(c);
                hi = hi.max(c);
            }
            if hi - lo > best_spread {
                best_spread = hi - lo;
                best_d = d;
            }
        }
        if !(best_spread > 0.0) {
            return id; // all points identical: one leaf
        }
        let mid = start + (end - start) / 2;
        let (pts, dim) = (self.pts, self.dim);
        self.idx[start..end].select_nth_unstable_by(mid - start, |&a, &b| pts[a * dim + best_d].total_cmp(&pts[b * dim + best_d]));
        let value = self.coord(self.idx[mid], best_d);
        let left = self.build_node(start, mid);
        let right = self.build_node(mid, end);
        self.nodes[id] = KdNode::Split { dim: best_d, value, left, right };
        id
    }

    pub fn query(&self, q: usize, k: usize) -> Vec<(f64, usize)> {
        let mut heap = BinaryHeap::with_capacity(k + 1);
        if !self.nodes.is_empty() && k > 0 {
            self.search(0, q, k, &mut heap);
        }
        heap.into_sorted_vec().into_iter().map(|Cand(d, i)| (d, i)).collect()
    }

    fn search(&self, node: usize, q: usize, k: usize, heap: &mut BinaryHeap<Cand>) {
        match self.nodes[node] {
            KdNode::Leaf { start, end } => {
                let qp = &self.pts[q * self.dim..(q + 1) * self.dim];
                for &i in &self.idx[start..end] {
                    if i == q {
                        continue;
                    }
                    let p = &self.pts[i * self.dim..(i + 1) * self.dim];
                    let d2: f64 = qp.iter().zip(p).map(|(a, b)| (a - b) * (a - b)).sum();
                    let c = Cand(d2, i);
                    if heap.len() < k {
                        heap.push(c);
                    } else if c < *heap.peek().expect("k > 0") {
                        heap.pop();
                        heap.push(c);
                    }
                }
            }
            KdNode::Split { dim, value, left, right } => {
                let diff = self.coord(q, dim) - value;
                let (near, far) = if diff < 0.0 { (left, right) } else { (right, left) };
                self.search(near, q, k, heap);
                // Points on the far side are at least |diff| away (ties at equal distance must be
                // visited too, for the index tie-break).
                if heap.len() < k || diff * diff <= heap.peek().expect("non-empty").0 {
                    self.search(far, q, k, heap);
                }
            }
        }
    }
}
