//! Order statistics of one contender's runs: min, median, p90 and max by
//! the nearest-rank method (each figure is one of the measured values,
//! never an interpolation between two runs).

use serde::Serialize;

/// The summary of a set of durations, in µs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub runs: usize,
    pub min: u64,
    /// 25th percentile (the plot's box starts here).
    pub p25: u64,
    pub median: u64,
    /// 75th percentile (the plot's box ends here).
    pub p75: u64,
    pub p90: u64,
    pub max: u64,
}

impl Summary {
    /// The summary of `values`; None when there are none.
    pub fn of(values: &[u64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let mut sorted = values.to_vec();
        sorted.sort_unstable();
        Some(Self {
            runs: sorted.len(),
            min: sorted[0],
            p25: nearest_rank(&sorted, 25),
            median: nearest_rank(&sorted, 50),
            p75: nearest_rank(&sorted, 75),
            p90: nearest_rank(&sorted, 90),
            max: sorted[sorted.len() - 1],
        })
    }
}

/// The `percent`th percentile of `sorted` (ascending, not empty) by
/// nearest rank: the value at rank ceil(percent/100 * n), 1-based.
pub fn nearest_rank(sorted: &[u64], percent: u32) -> u64 {
    let n = sorted.len();
    let rank = (usize::try_from(percent).unwrap_or(100) * n).div_ceil(100);
    sorted[rank.clamp(1, n) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_picks_measured_values() {
        let v: Vec<u64> = (1..=10).collect();
        assert_eq!(nearest_rank(&v, 50), 5);
        assert_eq!(nearest_rank(&v, 90), 9);
        assert_eq!(nearest_rank(&v, 91), 10);
        assert_eq!(nearest_rank(&v, 100), 10);
        assert_eq!(nearest_rank(&v, 0), 1);
        assert_eq!(nearest_rank(&[7], 90), 7);
        // Odd count: the median is the middle value.
        assert_eq!(nearest_rank(&[1, 2, 3, 4, 5], 50), 3);
        // Even count: the lower middle, not an average of the two.
        assert_eq!(nearest_rank(&[10, 20, 30, 40], 50), 20);
    }

    #[test]
    fn summary_sorts_and_handles_one_and_none() {
        let s = Summary::of(&[30, 10, 50, 20, 40]).unwrap();
        assert_eq!(
            s,
            Summary {
                runs: 5,
                min: 10,
                p25: 20,
                median: 30,
                p75: 40,
                p90: 50,
                max: 50
            }
        );
        let one = Summary::of(&[42]).unwrap();
        assert_eq!((one.min, one.median, one.p90, one.max), (42, 42, 42, 42));
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn p90_of_twenty_is_the_eighteenth() {
        let v: Vec<u64> = (1..=20).rev().map(|x| x * 100).collect();
        let s = Summary::of(&v).unwrap();
        assert_eq!((s.median, s.p90, s.max), (1000, 1800, 2000));
    }
}
