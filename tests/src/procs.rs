//! Process and filesystem plumbing shared by the harness modules: where the
//! repository and its `target/` directory are, free loopback ports, per-test
//! scratch directories, the current test's name, and signalling a child **by its
//! PID**.
//!
//! It owns no process. Callers must only pass PIDs of children they spawned and
//! still hold unreaped (so the PID cannot have been reused); nothing here looks
//! processes up by name or touches anything outside the repository's `target/`
//! and the system temp directory.

use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The workspace root (the parent of the `tests` package), found from this
/// package's manifest directory.
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    match manifest.parent() {
        Some(parent) => parent.to_path_buf(),
        None => manifest,
    }
}

/// Cargo's target directory: `CARGO_TARGET_DIR` when set (relative values are
/// taken from the repository root), else `<repo>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                repo_root().join(dir)
            }
        }
        _ => repo_root().join("target"),
    }
}

/// A port that was free on 127.0.0.1 a moment ago (bind `:0`, read, release).
/// Callers that start a server on it must retry on a bind collision.
pub fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

static SCRATCH_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Creates a fresh, empty directory under the system temp dir, unique to this
/// process and call: `<tmp>/gateway-tests/<tag>-<pid>-<n>-<nanos>`.
pub fn scratch_dir(tag: &str) -> io::Result<PathBuf> {
    let n = SCRATCH_COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join("gateway-tests").join(format!(
        "{}-{}-{}-{}",
        sanitize(tag),
        std::process::id(),
        n,
        nanos
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A unique number within this test process (for file names).
pub fn next_serial() -> u64 {
    SCRATCH_COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// The running test's name as libtest names its thread (`module::test_fn`),
/// sanitised for use in a file name; `"main"`-like names fall back to `"test"`.
pub fn current_test_name() -> String {
    match std::thread::current().name() {
        Some(name) if name != "main" && !name.is_empty() => sanitize(name),
        _ => "test".to_string(),
    }
}

/// Keeps `[A-Za-z0-9_.-]`, maps everything else (including `::`) to `_`.
pub fn sanitize(name: &str) -> String {
    let out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() {
        "x".to_string()
    } else {
        out
    }
}

/// The POSIX signals tests send to their own children.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Term,
    Int,
    Hup,
    Quit,
    Kill,
    Stop,
    Cont,
    Usr1,
    Usr2,
}

impl Signal {
    pub fn raw(self) -> libc::c_int {
        match self {
            Signal::Term => libc::SIGTERM,
            Signal::Int => libc::SIGINT,
            Signal::Hup => libc::SIGHUP,
            Signal::Quit => libc::SIGQUIT,
            Signal::Kill => libc::SIGKILL,
            Signal::Stop => libc::SIGSTOP,
            Signal::Cont => libc::SIGCONT,
            Signal::Usr1 => libc::SIGUSR1,
            Signal::Usr2 => libc::SIGUSR2,
        }
    }
}

/// `kill(pid, sig)` for one PID (never a process group: `pid` must be > 0).
pub fn send_signal(pid: u32, signal: Signal) -> io::Result<()> {
    let raw_pid = libc::pid_t::try_from(pid)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("bad pid {pid}")))?;
    // SAFETY: kill(2) has no memory-safety preconditions; the PID is positive,
    // so this addresses exactly one process.
    let rc = unsafe { libc::kill(raw_pid, signal.raw()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The last `max_lines` lines of `text`.
pub fn tail(text: &str, max_lines: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(max_lines);
    lines[start..].join("\n")
}
