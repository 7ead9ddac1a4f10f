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
/// - top-k: `lim` starts at `bits + 1` (accept all) and is kept exact as items arrive: with
///   `below` = kept items at distance < lim, as soon as `below >= k` there are k items at distance
///   ≤ lim − 1, and a later item (larger index) at distance ≥ lim − 1 ranks after all of them, so
///   `lim` drops by one (`below -= hist[lim - 1]`), repeatedly. Thus `lim` is always the k-th best
///   distance seen so far, or `bits + 1` before k items were seen.
/// - Items at distance ≥ lim stay in `keys` until it reaches `cap`; [`Cand::compact`] then keeps
///   the k best (all below lim, then the earliest ones at lim).
pub(crate) struct Cand {
    /// Accept an item iff its distance is `< lim`.
    pub lim: u32,
    k: usize,
    cap: usize,
    keys: Vec<u64>,
    /// Kept keys per distance (top-k only).
    hist: Vec<u32>,
    /// Kept keys with distance < lim (top-k only).
    below: usize,
}

impl Cand {
    pub fn topk(k: usize, bits: usize) -> Self {
        debug_assert!(k >= 1);
        let cap = (4 * k).max(k + 256);
        Self { lim: bits as u32 + 1, k, cap, keys: Vec::new(), hist: vec![0; bits + 2], below: 0 }
    }

    pub fn radius(r: usize, bits: usize) -> Self {
        Self { lim: r.min(bits) as u32 + 1, k: usize::MAX, cap: usize::MAX, keys: Vec::new(), hist: vec![], below: 0 }
    }

    /// Offers item `idx` at distance `d`; indices must be offered in increasing order.
    #[inline]
    pub fn push(&mut self, d: u32, idx: u32) {
        if d < self.lim {
            debug_assert!(self.keys.last().is_none_or(|&k| key_index(k) < idx));
            self.keys.push(key(d, idx));
            if self.k != usize::MAX {
                self.hist[d as usize] += 1;
                self.below += 1;
                while self.below >= self.k {
                    self.lim -= 1;
                    self.below -= self.hist[self.lim as usize] as usize;
                }
                if self.keys.len() >= self.cap {
                    self.compact();
                }
            }
        }
    }

    /// Keeps the k best candidates: all below `lim`, then the earliest ones at `lim`.
    #[cold]
    #[inline(never)]
    fn compact(&mut self) {
        if self.keys.len() <= self.k {
            return;
        }
        let lim = self.lim;
        let mut at_lim = self.k - self.below;
        let mut w = 0;
        for r in 0..self.keys.len() {
            let key = self.keys[r];
            let d = key_dist(key);
            let keep = d < lim || (d == lim && at_lim > 0);
            at_lim -= (d == lim && at_lim > 0) as usize;
            self.keys[w] = key;
            w += keep as usize;
        }
        self.keys.truncate(w);
        debug_assert_eq!(self.keys.len(), self.k);
        self.hist[lim as usize] = (self.k - self.below) as u32;
        for h in &mut self.hist[lim as usize + 1..] {
            *h = 0;
        }
    }

    /// The shard's result ordered by (distance, index): at most k keys for top-k, all for radius.
    pub fn finish(mut self, bits: usize) -> Vec<u64> {
        if self.k == usize::MAX || self.keys.len() <= self.k {
            sort_by_distance(&mut self.keys, bits);
            return self.keys;
        }
        // Counting sort restricted to the k best: all keys below lim (hist holds their counts),
        // then the earliest k - below keys at lim; stale keys beyond lim are skipped.
        let lim = self.lim as usize;
        let mut start = vec![0usize; lim + 1];
        for d in 1..=lim {
            start[d] = start[d - 1] + self.hist[d - 1] as usize;
        }
        debug_assert_eq!(start[lim], self.below);
        let mut out = vec![0u64; self.k];
        for &key in &self.keys {
            let d = key_dist(key) as usize;
            if d < lim || (d == lim && start[d] < self.k) {
                out[start[d]] = key;
                start[d] += 1;
            }
        }
        debug_assert_eq!(start[lim], self.k);
        out
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
    fn lim_tracks_the_kth_best_distance() {
        let mut c = Cand::topk(2, 8);
        assert_eq!(c.lim, 9);
        c.push(4, 0);
        assert_eq!(c.lim, 9); // one item: anything may still enter
        c.push(6, 1);
        assert_eq!(c.lim, 6); // two items at <= 6: later items need distance < 6
        c.push(6, 2); // rejected (ties lose to smaller indices)
        c.push(5, 3);
        assert_eq!(c.lim, 5);
        c.push(1, 4);
        assert_eq!(c.lim, 4); // best two: 1 and 4
        let keys = c.finish(8);
        assert_eq!(keys, vec![key(1, 4), key(4, 0)]);
    }

    #[test]
    fn compaction_at_capacity_keeps_order_and_counts() {
        // k = 3, cap = 259: many items at the threshold distance, then better ones.
        let mut c = Cand::topk(3, 8);
        c.push(5, 0);
        c.push(5, 1);
        c.push(7, 2);
        assert_eq!(c.lim, 7);
        for i in 3..400 {
            c.push(if i % 2 == 0 { 6 } else { 8 }, i);
        }
        // 6 < 7 was accepted once (index 4), which set lim to 6; no more accepted.
        assert_eq!(c.lim, 6);
        c.push(2, 500);
        assert_eq!(c.lim, 5);
        let keys = c.finish(8);
        assert_eq!(keys, vec![key(2, 500), key(5, 0), key(5, 1)]);
        // Many pushes below lim force compactions; the result stays exact.
        let mut c = Cand::topk(3, 300);
        let mut all = vec![];
        for i in 0..2000u32 {
            let d = 299 - (i % 300) / 3;
            all.push(key(d, i));
            c.push(d, i);
        }
        all.sort();
        assert_eq!(c.finish(300), all[..3].to_vec());
    }

    #[test]
    fn counting_sort_is_stable() {
        let mut keys = vec![key(2, 0), key(1, 1), key(2, 3), key(0, 7), key(1, 9)];
        sort_by_distance(&mut keys, 4);
        assert_eq!(keys, vec![key(0, 7), key(1, 1), key(1, 9), key(2, 0), key(2, 3)]);
    }
}
