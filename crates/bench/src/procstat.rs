//! The broker's resource use, read from `/proc/PID/stat` (CPU time) and
//! `/proc/PID/status` (memory), and the load generator's own CPU time.

use std::fs;

/// A snapshot of a process's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcSample {
    /// User + system CPU seconds since the process started.
    pub cpu_s: f64,
    /// Resident set size now, KiB.
    pub rss_kib: u64,
    /// Peak resident set size (VmHWM), KiB.
    pub hwm_kib: u64,
}

/// Read a snapshot of process `pid`; `None` if it is gone or unreadable.
pub fn sample(pid: u32) -> Option<ProcSample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let ticks = cpu_ticks(&stat)?;
    Some(ProcSample {
        cpu_s: ticks as f64 / clock_ticks_per_second(),
        rss_kib: status_kib(&status, "VmRSS")?,
        hwm_kib: status_kib(&status, "VmHWM")?,
    })
}

/// CPU seconds (user + system) this process has used so far: all its threads,
/// finished ones included (`getrusage(RUSAGE_SELF)`, microsecond resolution
/// where `/proc/PID/stat` counts 10 ms ticks). `None` if the call fails.
pub fn own_cpu_s() -> Option<f64> {
    // SAFETY: `rusage` is plain old data; all zeroes is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes only the struct it is given.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return None;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(secs(ru.ru_utime) + secs(ru.ru_stime))
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a constant of the C library.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line, in clock ticks. The
/// command name (field 2) may hold spaces and parentheses, so fields are counted
/// from the last `)`.
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // rest starts at field 3 (state); utime is field 14 → index 11.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// A `Key:   1234 kB` figure of `/proc/PID/status`.
pub fn status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_awkward_name() {
        let line = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1234 567 0 0 20 0 3 0 100 1000 10 18446744073709551615";
        assert_eq!(cpu_ticks(line), Some(1234 + 567));
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn status_fields() {
        let status = "Name:\tcoremq\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(status_kib(status, "VmHWM"), Some(20480));
        assert_eq!(status_kib(status, "VmRSS"), Some(10240));
        assert_eq!(status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let s = sample(std::process::id()).expect("own /proc entry");
        assert!(s.rss_kib > 0 && s.hwm_kib >= s.rss_kib);
        assert!(s.cpu_s >= 0.0);
    }

    /// CPU time of the calling thread (`CLOCK_THREAD_CPUTIME_ID`), seconds.
    fn thread_cpu_s() -> f64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes only the struct it is given.
        assert_eq!(
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) },
            0
        );
        ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
    }

    #[test]
    fn own_cpu_counts_every_thread_including_finished_ones() {
        let before = own_cpu_s().expect("getrusage");
        // Two threads that burn CPU (a bounded amount of work) and report
        // their own CPU time, then finish before the second reading.
        let burn = || {
            std::thread::spawn(|| {
                let start = thread_cpu_s();
                let mut x = 0x9e37_79b9_7f4a_7c15u64;
                for i in 0..30_000_000u64 {
                    x = (x ^ i).rotate_left(7).wrapping_mul(0x2545_f491_4f6c_dd1d);
                }
                std::hint::black_box(x);
                thread_cpu_s() - start
            })
        };
        let (a, b) = (burn(), burn());
        let spent = a.join().expect("thread") + b.join().expect("thread");
        let after = own_cpu_s().expect("getrusage");
        assert!(spent > 0.0, "the threads used no CPU time?");
        // The process total covers both threads' time (getrusage rounds to µs).
        assert!(
            after - before >= spent - 1e-4,
            "process CPU grew by {:.6} s, its finished threads used {spent:.6} s",
            after - before
        );
    }
}
