//! This process's resource use from Linux `/proc` (the benchmarks' memory and CPU columns); where `/proc` is
//! unavailable the readers return `None` and the tables print nothing rather than a made-up number.

/// Peak resident set size of this process (`VmHWM`), KiB.
pub fn peak_rss_kb() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Current resident set size of this process (`VmRSS`), MiB.
pub fn rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Peak resident set size of this process in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    peak_rss_kb().map(|kb| kb as f64 / 1024.0)
}

/// Resets the peak-RSS counter (Linux), so each benchmark row reports its own peak.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// CPU time (user + system) of this process so far, seconds, from `/proc/self/stat` (100 ticks/s).
pub fn cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_are_plausible_on_linux() {
        if !std::path::Path::new("/proc/self/status").exists() {
            eprintln!("skipped: no /proc");
            return;
        }
        // A 64 MiB buffer touched page by page must show in the peak.
        let before = peak_rss_kb().unwrap();
        let v = vec![1u8; 64 << 20];
        std::hint::black_box(&v);
        let after = peak_rss_kb().unwrap();
        assert!(after >= before.max(64 << 10), "{before} -> {after} KiB");
        let spent = cpu_seconds().unwrap();
        assert!(spent >= 0.0 && spent.is_finite());
    }
}
