//! A set of u64 sequence numbers stored as disjoint half-open ranges: the
//! receiver's record of datagrams received out of order (above its
//! cumulative point). Loss makes holes, so ranges, not a bitmap per number,
//! keep it small and make "list the gaps" (NACKs) and "list what we have"
//! (ACKs) cheap.

use std::collections::BTreeMap;
use std::ops::Range;

#[derive(Clone, Debug, Default)]
pub(crate) struct RangeSet {
    /// start -> end (exclusive); disjoint and never adjacent.
    map: BTreeMap<u64, u64>,
}

impl RangeSet {
    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub(crate) fn contains(&self, x: u64) -> bool {
        self.map
            .range(..=x)
            .next_back()
            .is_some_and(|(_, &end)| x < end)
    }

    /// Adds `x`; returns false if it was already there.
    pub(crate) fn insert(&mut self, x: u64) -> bool {
        if self.contains(x) {
            return false;
        }
        let mut start = x;
        let mut end = x + 1;
        // Merge with the range ending at x.
        if let Some((&s, &e)) = self.map.range(..x).next_back()
            && e == x
        {
            start = s;
            self.map.remove(&s);
        }
        // Merge with the range starting at x + 1.
        if let Some(e) = self.map.remove(&(x + 1)) {
            end = e;
        }
        self.map.insert(start, end);
        true
    }

    /// The lowest range.
    pub(crate) fn first(&self) -> Option<Range<u64>> {
        self.map.first_key_value().map(|(&s, &e)| s..e)
    }

    /// Forgets every number below `x`; returns how many there were.
    pub(crate) fn remove_below(&mut self, x: u64) -> u64 {
        let mut removed = 0;
        while let Some((&s, &e)) = self.map.first_key_value() {
            if s >= x {
                break;
            }
            self.map.remove(&s);
            if e > x {
                removed += x - s;
                self.map.insert(x, e);
                break;
            }
            removed += e - s;
        }
        removed
    }

    /// The ranges, lowest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.map.iter().map(|(&s, &e)| s..e)
    }

    /// The ranges of numbers in `lo..hi` that are *not* in the set.
    pub(crate) fn gaps(&self, lo: u64, hi: u64) -> impl Iterator<Item = Range<u64>> + '_ {
        let mut at = lo;
        let mut inner = self.map.range(lo..hi.max(lo));
        // Start from the range that may straddle `lo`.
        let straddle = self
            .map
            .range(..=lo)
            .next_back()
            .map(|(&s, &e)| s..e)
            .filter(|r| r.end > lo);
        if let Some(r) = &straddle {
            at = r.end;
        }
        let mut done = at >= hi;
        std::iter::from_fn(move || {
            while !done {
                match inner.next() {
                    Some((&s, &e)) => {
                        if e <= at {
                            continue;
                        }
                        if s > at {
                            let gap = at..s.min(hi);
                            at = e;
                            done = at >= hi;
                            return Some(gap);
                        }
                        at = e;
                        done = at >= hi;
                    }
                    None => {
                        done = true;
                        return Some(at..hi);
                    }
                }
            }
            None
        })
    }

    /// How many numbers of `lo..hi` are missing from the set.
    pub(crate) fn missing(&self, lo: u64, hi: u64) -> u64 {
        self.gaps(lo, hi).map(|r| r.end - r.start).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(it: impl Iterator<Item = Range<u64>>) -> Vec<(u64, u64)> {
        it.map(|r| (r.start, r.end)).collect()
    }

    fn set(xs: &[u64]) -> RangeSet {
        let mut s = RangeSet::default();
        for &x in xs {
            s.insert(x);
        }
        s
    }

    #[test]
    fn inserts_merge() {
        let mut s = set(&[5, 7, 6, 1, 2]);
        assert_eq!(pairs(s.iter()), [(1, 3), (5, 8)]);
        assert!(!s.insert(6));
        assert!(s.insert(3));
        assert!(s.insert(4));
        assert_eq!(pairs(s.iter()), [(1, 8)]);
        assert!(s.contains(1) && s.contains(7) && !s.contains(8) && !s.contains(0));
    }

    #[test]
    fn gaps_and_missing() {
        let s = set(&[3, 4, 8, 10, 11]);
        assert_eq!(pairs(s.gaps(0, 15)), [(0, 3), (5, 8), (9, 10), (12, 15)]);
        assert_eq!(pairs(s.gaps(4, 11)), [(5, 8), (9, 10)]);
        assert_eq!(s.gaps(3, 5).count(), 0);
        assert_eq!(s.gaps(9, 9).count(), 0);
        assert_eq!(s.missing(0, 12), 7);
        assert_eq!(pairs(RangeSet::default().gaps(2, 5)), [(2, 5)]);
    }

    #[test]
    fn remove_below_trims() {
        let mut s = set(&[1, 2, 3, 7, 8]);
        assert_eq!(s.remove_below(2), 1);
        assert_eq!(pairs(s.iter()), [(2, 4), (7, 9)]);
        assert_eq!(s.remove_below(8), 3);
        assert_eq!(pairs(s.iter()), [(8, 9)]);
        assert_eq!(s.first().map(|r| (r.start, r.end)), Some((8, 9)));
    }

    #[test]
    fn matches_a_naive_model() {
        let mut x: u64 = 7;
        let mut s = RangeSet::default();
        let mut naive = std::collections::BTreeSet::new();
        for _ in 0..3000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let v = (x >> 33) % 200;
            assert_eq!(s.insert(v), naive.insert(v));
            if v.is_multiple_of(17) {
                let cut = v / 2;
                let before = naive.len();
                naive.retain(|&n| n >= cut);
                assert_eq!(s.remove_below(cut), (before - naive.len()) as u64);
            }
            let (lo, hi) = (v / 3, v + 10);
            let missing = (lo..hi).filter(|n| !naive.contains(n)).count() as u64;
            assert_eq!(s.missing(lo, hi), missing);
        }
    }
}
