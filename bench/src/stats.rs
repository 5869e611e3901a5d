//! Small statistics and process accounting helpers.

use std::time::Duration;

/// The `q` quantile (0..=1, nearest rank) of `v`; `None` when `v` is empty.
pub fn quantile(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f64::total_cmp);
    let rank = ((q.clamp(0.0, 1.0) * s.len() as f64).ceil() as usize).clamp(1, s.len());
    Some(s[rank - 1])
}

/// The median (mean of the two middle values for an even count).
pub fn median(v: &[f64]) -> Option<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 })
}

/// Peak resident set (VmHWM, bytes) and CPU time (user + system) of a live process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcUsage {
    pub peak_rss_bytes: u64,
    pub rss_bytes: u64,
    pub cpu: Duration,
}

/// Reads `/proc/<pid>/status` and `/proc/<pid>/stat`.
pub fn proc_usage(pid: u32) -> anyhow::Result<ProcUsage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    Ok(ProcUsage { peak_rss_bytes: kib("VmHWM:"), rss_bytes: kib("VmRSS:"), cpu: cpu_from_stat(&stat)? })
}

/// utime + stime from a `/proc/<pid>/stat` line (fields 14 and 15, after the `(comm)`).
fn cpu_from_stat(stat: &str) -> anyhow::Result<Duration> {
    let after = stat.rsplit_once(')').map(|(_, r)| r).ok_or_else(|| anyhow::anyhow!("malformed stat"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state): utime is field 14 → index 11, stime → 12.
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields.get(i).and_then(|f| f.parse().ok()).ok_or_else(|| anyhow::anyhow!("stat field {i} missing"))
    };
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(Duration::from_secs_f64((ticks(11)? + ticks(12)?) as f64 / hz))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(50.0));
        assert_eq!(quantile(&v, 0.99), Some(99.0));
        assert_eq!(quantile(&v, 1.0), Some(100.0));
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(median(&[3.0, 1.0, 2.0, 10.0]), Some(2.5));
    }

    #[test]
    fn stat_fields_after_comm() {
        let line = "123 (a b) c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0";
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let d = cpu_from_stat(line).expect("parse");
        assert!((d.as_secs_f64() - 300.0 / hz).abs() < 1e-9);
    }

    #[test]
    fn own_process_usage_is_readable() {
        let u = proc_usage(std::process::id()).expect("own /proc");
        assert!(u.peak_rss_bytes >= u.rss_bytes && u.rss_bytes > 0);
    }
}
