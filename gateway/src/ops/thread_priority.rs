//! Thread priority: the socket threads run a little below the rest of the
//! process.
//!
//! Socket threads do the work new connections bring (TLS handshakes, token
//! signatures, upgrades); the `relay` thread delivers. When a reconnect
//! storm takes every core, the kernel should give the relay thread its
//! slice first, so the socket threads run [`SOCKET_THREAD_NICE`] nice
//! steps below the rest of the process: a lower priority any process may
//! take for itself, never a higher one.
//! It owns that one call; it must not know what runs on the thread.

/// How far below the relay and main threads the socket threads run (nice
/// values go from -20, first, to 19, last). Ten is a weight of about a
/// tenth: socket threads still get a tenth of a core the relay thread
/// wants, and all of a core nobody else wants. Five (a third) left the
/// running sockets' p99 at 1.8–2.8× its quiet figure during a handshake
/// storm, ten at 1.6–1.9× (`tests/bench/changes.md`).
pub(crate) const SOCKET_THREAD_NICE: i32 = 10;

/// Lowers the calling thread's priority by `by` nice steps from where it
/// is (at most to 19, the lowest); an error (a system that refuses it)
/// leaves the thread as it was.
pub(crate) fn lower_current_thread(by: i32) -> std::io::Result<()> {
    // SAFETY: plain system calls on the calling thread's own id; no memory
    // is passed but errno's, which `getpriority` needs cleared (it may
    // return -1 as a nice value).
    let result = unsafe {
        let thread = libc::gettid() as libc::id_t;
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, thread);
        if nice == -1 && *libc::__errno_location() != 0 {
            -1
        } else {
            libc::setpriority(libc::PRIO_PROCESS, thread, (nice + by).min(19))
        }
    };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_calling_thread_is_lowered() {
        let nice_of = |thread: libc::pid_t| {
            // SAFETY: reads the priority of a thread of this process.
            unsafe { libc::getpriority(libc::PRIO_PROCESS, thread as libc::id_t) }
        };
        // SAFETY: the calling thread's own id.
        let main = unsafe { libc::gettid() };
        let before = nice_of(main);
        let lowered = std::thread::spawn(move || {
            lower_current_thread(SOCKET_THREAD_NICE).expect("lowering is allowed");
            // SAFETY: the calling thread's own id.
            nice_of(unsafe { libc::gettid() })
        })
        .join()
        .expect("thread ran");
        assert_eq!(lowered, before + SOCKET_THREAD_NICE);
        assert_eq!(nice_of(main), before, "the other threads keep theirs");
    }
}
