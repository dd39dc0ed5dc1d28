//! The default number of CPU compute threads: the physical cores this process may use.
//!
//! Hyper-threads share a core's vector units, so the matmul kernels (bound by SIMD throughput and memory) gain
//! nothing from a second thread per core and lose to the extra synchronisation (llama.cpp's default is also the
//! physical core count, `cpu_get_num_physical_cores`). On Linux the cores are counted from sysfs topology
//! (distinct `physical_package_id`/`core_id` pairs of the online CPUs); elsewhere, or if sysfs is unreadable,
//! the logical count from `available_parallelism` is used. Never more than `available_parallelism` (which
//! honours CPU affinity and cgroup quotas).

use std::collections::HashSet;

pub fn default_num_threads() -> usize {
    let logical = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    match physical_cores() {
        Some(p) if p > 0 => p.min(logical),
        _ => logical,
    }
}

#[cfg(target_os = "linux")]
fn physical_cores() -> Option<usize> {
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").ok()?;
    let mut cores = HashSet::new();
    for cpu in parse_cpu_list(online.trim())? {
        let topo = format!("/sys/devices/system/cpu/cpu{cpu}/topology");
        let read = |f: &str| std::fs::read_to_string(format!("{topo}/{f}")).ok().map(|s| s.trim().to_string());
        cores.insert((read("physical_package_id")?, read("core_id")?));
    }
    Some(cores.len())
}

#[cfg(not(target_os = "linux"))]
fn physical_cores() -> Option<usize> {
    None
}

/// A sysfs CPU list such as `0-3,8,10-11`.
fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().ok()?..=b.parse::<usize>().ok()?),
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

// Kept beside the code: the parser is the only part with logic of its own.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,8,10-11"), Some(vec![0, 1, 2, 3, 8, 10, 11]));
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(parse_cpu_list("0-x"), None);
    }

    #[test]
    fn default_is_between_one_and_the_logical_count() {
        let n = default_num_threads();
        let logical = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        assert!(n >= 1 && n <= logical, "{n} of {logical}");
    }
}
