//! Readings from /proc: a process's resident memory and CPU seconds, the
//! machine's busy and stolen seconds, and [`CpuSample`], which turns two
//! readings into where the cores went during a step. It only reads /proc:
//! it must not signal or otherwise touch the processes it reads.

use std::time::Instant;

use serde_json::json;

use crate::args::Args;

/// A process's resident memory (`VmRSS`) in KiB, or none if unreadable.
pub(crate) fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU seconds a process (`/proc/PID/stat`) has used so far, in user
/// space and in the kernel.
#[derive(Clone, Copy, Default)]
struct CpuTimes {
    user: f64,
    kernel: f64,
}

impl CpuTimes {
    fn read(stat_path: &str) -> Option<CpuTimes> {
        let stat = std::fs::read_to_string(stat_path).ok()?;
        // The command name may hold spaces; fields resume after its ')'.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        // SAFETY: sysconf only reads a configuration value.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        (ticks > 0).then(|| CpuTimes {
            user: utime / ticks as f64,
            kernel: stime / ticks as f64,
        })
    }

    fn of_process(pid: u32) -> Option<CpuTimes> {
        CpuTimes::read(&format!("/proc/{pid}/stat"))
    }

    fn total(self) -> f64 {
        self.user + self.kernel
    }

    fn minus(self, earlier: CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user - earlier.user,
            kernel: self.kernel - earlier.kernel,
        }
    }

    fn plus(self, other: CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user + other.user,
            kernel: self.kernel + other.kernel,
        }
    }
}

/// Seconds (busy, stolen) of all the machine's cores so far, from the first
/// line of /proc/stat. Busy is everything but idle and I/O wait, steal
/// included; steal is time the hypervisor ran something else while this
/// machine wanted a core.
fn machine_seconds() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<f64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()?;
    let total: f64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4)?;
    let steal = *ticks.get(7)?;
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_second > 0).then(|| {
        (
            (total - idle) / per_second as f64,
            steal / per_second as f64,
        )
    })
}

/// CPU seconds of the server(s), Redis, this load generator and the whole
/// machine at one moment.
#[derive(Clone)]
pub(crate) struct CpuSample {
    servers: Vec<Option<CpuTimes>>,
    redis: Option<f64>,
    loadgen: Option<f64>,
    machine: Option<(f64, f64)>,
    at: Instant,
}

impl CpuSample {
    pub(crate) fn take(args: &Args) -> CpuSample {
        CpuSample {
            servers: args
                .server_pid
                .iter()
                .map(|&pid| CpuTimes::of_process(pid))
                .collect(),
            redis: args
                .redis_pid
                .and_then(CpuTimes::of_process)
                .map(CpuTimes::total),
            loadgen: CpuTimes::of_process(std::process::id()).map(CpuTimes::total),
            machine: machine_seconds(),
            at: Instant::now(),
        }
    }

    /// Cores each process (and the machine) kept busy since `self`, and the
    /// server's CPU microseconds per event (delivered frame, or connect).
    pub(crate) fn since(&self, args: &Args, events: u64) -> serde_json::Value {
        let now = CpuSample::take(args);
        let wall = now.at.duration_since(self.at).as_secs_f64();
        let used = |before: Option<f64>, after: Option<f64>| match (before, after) {
            (Some(b), Some(a)) => Some(a - b),
            _ => None,
        };
        // No server given (the ceiling run) reads "none", not zero.
        let server: Option<CpuTimes> = if self.servers.is_empty() {
            None
        } else {
            self.servers
                .iter()
                .zip(&now.servers)
                .map(|(b, a)| a.zip(*b).map(|(a, b)| a.minus(b)))
                .try_fold(CpuTimes::default(), |sum, one| one.map(|one| sum.plus(one)))
        };
        let server_s = server.map(CpuTimes::total);
        let cores = |seconds: Option<f64>| seconds.map(|s| if wall > 0.0 { s / wall } else { 0.0 });
        let machine = self.machine.zip(now.machine);
        json!({
            "wall_s": wall,
            "server_cpu_s": server_s,
            "redis_cpu_s": used(self.redis, now.redis),
            "loadgen_cpu_s": used(self.loadgen, now.loadgen),
            "server_cores": cores(server_s),
            "server_kernel_share": server
                .filter(|times| times.total() > 0.0)
                .map(|times| times.kernel / times.total()),
            "redis_cores": cores(used(self.redis, now.redis)),
            "loadgen_cores": cores(used(self.loadgen, now.loadgen)),
            "machine_busy_cores": cores(machine.map(|(b, a)| a.0 - b.0)),
            "machine_steal_cores": cores(machine.map(|(b, a)| a.1 - b.1)),
            "machine_cores": std::thread::available_parallelism().map_or(0, usize::from),
            "server_cpu_us_per_delivery": server_s
                .filter(|_| events > 0)
                .map(|s| s * 1e6 / events as f64),
        })
    }
}
