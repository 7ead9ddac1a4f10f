//! Selection without a full sort: there are only `bits + 1` Hamming distances, so candidates are
//! filtered against a shrinking distance limit and ordered by counting.
//!
//! A candidate is a key `(distance << 32) | index`; ordering keys numerically is ordering by
//! (distance, database index), the ranking convention of cmh.

/// `(distance, index)` packed so that numeric order is ranking order.
#[inline]
pub(crate) fn key(d: u32, idx: u32) -> u64 {
    ((d as u64) << 32) | idx as u64
}
#[inline]
pub(crate) fn key_dist(k: u64) -> u32 {
    (k >> 32) as u32
}
#[inline]
pub(crate) fn key_index(k: u64) -> u32 {
    k as u32
}

/// The candidates of one query over one database shard, offered in increasing index order.
///
/// Invariant: every item of the shard seen so far that belongs to the shard's top k (or lies
/// within the radius) is in `keys`, in increasing index order. An item is offered only when its
/// distance is below `lim`:
/// - radius search: `lim = r + 1` forever;
/// - top-k: `lim` starts at `bits + 1` (accept all). When `keys` reaches `cap`, [`Cand::compact`]
///   finds the smallest distance `t` with at least k kept items at distance ≤ t, keeps the k best
///   (all below t, then the earliest ones at t) and sets `lim = t`: a later item (larger index)
///   at distance ≥ t ranks after all k kept items, so it can never enter the top k.
pub(crate) struct Cand {
    /// Accept an item iff its distance is `< lim`.
    pub lim: u32,
    k: usize,
    cap: usize,
    keys: Vec<u64>,
    hist: Vec<u32>,
}

impl Cand {
    pub fn topk(k: usize, bits: usize) -> Self {
        debug_assert!(k >= 1);
        let cap = (2 * k).max(k + 64);
        Self { lim: bits as u32 + 1, k, cap, keys: Vec::new(), hist: Vec::new() }
    }

    pub fn radius(r: usize, bits: usize) -> Self {
        Self { lim: r.min(bits) as u32 + 1, k: usize::MAX, cap: usize::MAX, keys: Vec::new(), hist: Vec::new() }
    }

    /// Offers item `idx` at distance `d`; indices must be offered in increasing order.
    #[inline]
    pub fn push(&mut self, d: u32, idx: u32) {
        if d < self.lim {
            debug_assert!(self.keys.last().is_none_or(|&k| key_index(k) < idx));
            self.keys.push(key(d, idx));
            if self.keys.len() >= self.cap {
                self.compact();
            }
        }
    }

    /// Keeps the k best candidates (see the type's doc) and lowers `lim`.
    #[cold]
    #[inline(never)]
    fn compact(&mut self) {
        if self.keys.len() <= self.k {
            return;
        }
        // Kept items may sit at distance == lim (the earliest ones at the previous threshold).
        let nd = self.lim as usize + 1;
        self.hist.clear();
        self.hist.resize(nd, 0);
        for &k in &self.keys {
            self.hist[key_dist(k) as usize] += 1;
        }
        // t = smallest distance with (count at distance <= t) >= k.
        let mut below = 0usize;
        let mut t = 0usize;
        while below + (self.hist[t] as usize) < self.k {
            below += self.hist[t] as usize;
            t += 1;
        }
        let mut take_at_t = self.k - below;
        let t = t as u32;
        self.keys.retain(|&k| {
            let d = key_dist(k);
            if d < t {
                true
            } else if d == t && take_at_t > 0 {
                take_at_t -= 1;
                true
            } else {
                false
            }
        });
        debug_assert_eq!(self.keys.len(), self.k);
        self.lim = t;
    }

    /// The shard's result ordered by (distance, index): at most k keys for top-k, all for radius.
    pub fn finish(mut self, bits: usize) -> Vec<u64> {
        if self.keys.len() > self.k {
            self.compact();
        }
        sort_by_distance(&mut self.keys, bits);
        self.keys
    }
}

/// Stable counting sort of keys by distance (`0..=bits`). Keys that arrive in increasing index
/// order within each distance come out ordered by (distance, index).
pub(crate) fn sort_by_distance(keys: &mut Vec<u64>, bits: usize) {
    if keys.len() <= 1 {
        return;
    }
    let mut start = vec![0usize; bits + 2];
    for &k in keys.iter() {
        start[key_dist(k) as usize + 1] += 1;
    }
    for d in 1..start.len() {
        start[d] += start[d - 1];
    }
    let mut out = vec![0u64; keys.len()];
    for &k in keys.iter() {
        let s = &mut start[key_dist(k) as usize];
        out[*s] = k;
        *s += 1;
    }
    *keys = out;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compaction_keeps_the_k_best_with_ties_by_index() {
        // k = 2, cap = 66; offer distances 5,3,3,7,3 at indices 0..5 then force finish.
        let mut c = Cand::topk(2, 8);
        for (i, d) in [5u32, 3, 3, 7, 3].into_iter().enumerate() {
            c.push(d, i as u32);
        }
        let keys = c.finish(8);
        let got: Vec<(u32, u32)> = keys.iter().map(|&k| (key_dist(k), key_index(k))).collect();
        assert_eq!(got, vec![(3, 1), (3, 2)]);
    }

    #[test]
    fn lim_drops_after_compaction() {
        let mut c = Cand::topk(1, 8);
        // cap = 65: fill with distance 4, then the 65th push triggers compaction -> lim = 4.
        for i in 0..65 {
            c.push(4, i);
        }
        assert_eq!(c.lim, 4);
        c.push(4, 100); // equal distance, larger index: rejected
        c.push(2, 101);
        let keys = c.finish(8);
        assert_eq!(keys, vec![key(2, 101)]);
    }

    #[test]
    fn counting_sort_is_stable() {
        let mut keys = vec![key(2, 0), key(1, 1), key(2, 3), key(0, 7), key(1, 9)];
        sort_by_distance(&mut keys, 4);
        assert_eq!(keys, vec![key(0, 7), key(1, 1), key(1, 9), key(2, 0), key(2, 3)]);
    }
}
