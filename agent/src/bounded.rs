//! Bounded tables: every table the agent holds has a cap, a size it reports and a count of
//! what it forgot early to stay under the cap. Each owner describes its tables as
//! [`TableStat`]s; the telemetry exports them as `mcptap_table_entries{table}`,
//! `mcptap_table_capacity{table}` and `mcptap_evictions_total{table}`.

/// One table's size, cap and evictions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableStat {
    /// Name, as in the `table` label.
    pub name: &'static str,
    /// Entries held now.
    pub len: u64,
    /// Most entries held.
    pub cap: u64,
    /// Entries forgotten early because the cap was reached.
    pub evicted: u64,
}

impl TableStat {
    /// A table's numbers.
    pub fn new(name: &'static str, len: usize, cap: usize, evicted: u64) -> Self {
        TableStat {
            name,
            len: len as u64,
            cap: cap as u64,
            evicted,
        }
    }
}

/// Over `cap`, the keys of the least recently active `entries` (by last activity) to forget so
/// that 90% of the cap remain; none within it. Going below the cap keeps a flood from paying
/// for a selection on every insert. Nothing is collected unless the cap is passed.
pub fn least_recent<K>(entries: impl ExactSizeIterator<Item = (u64, K)>, cap: usize) -> Vec<K> {
    let len = entries.len();
    if len <= cap {
        return Vec::new();
    }
    let excess = len - cap * 9 / 10;
    let mut all: Vec<(u64, K)> = entries.collect();
    all.select_nth_unstable_by_key(excess - 1, |(t, _)| *t);
    all.truncate(excess);
    all.into_iter().map(|(_, k)| k).collect()
}

/// Insert `key` into a table with a cap; past the cap the entries least recently active (by
/// `at` of each value) go, down to 90% of it, and are counted in `evicted`. The entry just
/// inserted stays when `at` says it is the newest.
pub fn insert_capped<K, V, S>(
    map: &mut std::collections::HashMap<K, V, S>,
    key: K,
    value: V,
    cap: usize,
    at: impl Fn(&V) -> u64,
    evicted: &mut u64,
) where
    K: Clone + Eq + std::hash::Hash,
    S: std::hash::BuildHasher,
{
    map.insert(key, value);
    if map.len() <= cap {
        return;
    }
    let all: Vec<(u64, K)> = map.iter().map(|(k, v)| (at(v), k.clone())).collect();
    let old = least_recent(all.into_iter(), cap);
    *evicted += old.len() as u64;
    for k in old {
        map.remove(&k);
    }
}

/// The `n`th smallest of `values` (1-based), or 0 when there are none: the cutoff below
/// which the `n` oldest entries lie (ties may take a few more).
pub fn nth_oldest(values: impl Iterator<Item = u64>, n: usize) -> u64 {
    let mut v: Vec<u64> = values.collect();
    if v.is_empty() || n == 0 {
        return 0;
    }
    let i = n.min(v.len()) - 1;
    *v.select_nth_unstable(i).1
}

/// Longest a repeating warning stays quiet: under a flood, a cap is met many times a second.
const LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Holds back a warning that repeats: it is written at most once per `LOG_EVERY`, saying
/// how many times it was held back (the counters have every one).
#[derive(Debug, Default)]
pub struct LogLimit {
    last: Option<std::time::Instant>,
    held: u64,
}

impl LogLimit {
    /// `Some(times held back since the last one written)` when this one may be written.
    pub fn allow(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            self.held += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held))
    }
}

/// ` (N more like it held back)` for a warning that [`LogLimit`] let through.
pub fn held_back(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} more like it in the last 10 s)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_recent_goes_to_ninety_percent_only_past_the_cap() {
        let none = least_recent((0..10u32).map(u64::from).map(|t| (t, t)), 10);
        assert!(none.is_empty());
        let mut gone = least_recent((0..20u32).rev().map(u64::from).map(|t| (t, t)), 10);
        gone.sort();
        assert_eq!(gone, (0..11).collect::<Vec<_>>());
        assert_eq!(nth_oldest([5, 1, 9, 3].into_iter(), 2), 3);
        assert_eq!(nth_oldest(std::iter::empty(), 2), 0);
    }

    #[test]
    fn repeated_warnings_are_held_back() {
        let mut l = LogLimit::default();
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), None);
        assert_eq!(l.allow(), None);
        assert_eq!(held_back(2), " (2 more like it in the last 10 s)");
    }
}
