//! Summary statistics over latency samples (nearest-rank percentiles).

/// Nearest-rank percentile `p` (0..=100) of `samples`; `None` when empty.
/// The input need not be sorted.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() || !(0.0..=100.0).contains(&p) {
        return None;
    }
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

pub fn mean(samples: &[f64]) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    Some(samples.iter().sum::<f64>() / samples.len() as f64)
}

/// p50/p99/max/mean of a sample set.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Summary {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

pub fn summarize(samples: &[f64]) -> Option<Summary> {
    Some(Summary {
        n: samples.len(),
        p50: percentile(samples, 50.0)?,
        p99: percentile(samples, 99.0)?,
        max: percentile(samples, 100.0)?,
        mean: mean(samples)?,
    })
}

/// Median of `samples` (p50).
pub fn median(samples: &[f64]) -> Option<f64> {
    percentile(samples, 50.0)
}

/// CPU share in percent of one core: `cpu_secs` used over `wall_secs`.
pub fn cpu_percent(cpu_secs: f64, wall_secs: f64) -> Option<f64> {
    (wall_secs > 0.0).then(|| 100.0 * cpu_secs / wall_secs)
}

/// Memory per connection in KiB: growth of `after_kib` over `before_kib`
/// spread over `conns` connections.
pub fn per_connection_kib(before_kib: u64, after_kib: u64, conns: usize) -> Option<f64> {
    (conns > 0).then(|| (after_kib as f64 - before_kib as f64) / conns as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&v, 1.0), Some(1.0));
    }

    #[test]
    fn percentiles_ignore_order_and_non_finite_values() {
        let v = [5.0, 1.0, f64::NAN, 3.0, 2.0, 4.0];
        assert_eq!(percentile(&v, 50.0), Some(3.0));
        assert_eq!(percentile(&v, 99.0), Some(5.0));
        assert_eq!(median(&[7.0]), Some(7.0));
    }

    #[test]
    fn empty_and_out_of_range_inputs() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[1.0], 101.0), None);
        assert_eq!(percentile(&[f64::NAN], 50.0), None);
        assert_eq!(summarize(&[]), None);
        assert_eq!(mean(&[]), None);
    }

    #[test]
    fn small_sets_p99_is_the_max() {
        let v = [10.0, 20.0, 30.0];
        let s = summarize(&v).unwrap();
        assert_eq!(s.p50, 20.0);
        assert_eq!(s.p99, 30.0);
        assert_eq!(s.max, 30.0);
        assert_eq!(s.mean, 20.0);
        assert_eq!(s.n, 3);
    }

    #[test]
    fn cpu_and_memory_helpers() {
        assert_eq!(cpu_percent(0.06, 60.0), Some(0.1));
        assert_eq!(cpu_percent(1.0, 0.0), None);
        assert_eq!(per_connection_kib(1000, 3000, 100), Some(20.0));
        assert_eq!(per_connection_kib(1000, 3000, 0), None);
    }
}
