//! The gateway process itself: it runs on jemalloc with the project's
//! allocator settings, so memory freed after a burst of sockets goes back to
//! the system from jemalloc's own background thread; and its threads: the
//! receiver's `relay` thread keeps the process's priority while the socket
//! threads, where handshakes run, take a lower one.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// The name of each thread of `pid` (see [`thread_priorities`]).
fn thread_names(pid: u32) -> Vec<String> {
    thread_priorities(pid)
        .into_iter()
        .map(|(_, name, _)| name)
        .collect()
}

#[tokio::test]
async fn jemalloc_runs_with_its_background_purge_thread() {
    let mut stack = stack().await;
    // A burst of sockets that then close leaves freed memory to purge; the
    // background threads start when there is purging to do.
    let mut sockets = Vec::new();
    for user in 0..300 {
        sockets.push(connect(&stack.gateway, user).await);
    }
    stack.notify("user_7", "\"allocated\"").await;
    expect_frame(&mut sockets[7], r#"{"message": "allocated"}"#).await;
    drop(sockets);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let names = thread_names(stack.gateway.pid());
        if names.iter().any(|name| name == "jemalloc_bg_thd") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no jemalloc background thread (malloc_conf not read?): {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Each thread of `pid`: its id, its name and its nice value (field 19 of
/// `stat`, counted after the name's closing parenthesis).
fn thread_priorities(pid: u32) -> Vec<(String, String, i64)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| {
            let name = std::fs::read_to_string(task.path().join("comm")).ok()?;
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            let (_, after_name) = stat.rsplit_once(')')?;
            // After the name: state is field 3, nice field 19.
            let nice = after_name.split_whitespace().nth(16)?.parse().ok()?;
            let id = task.file_name().to_string_lossy().into_owned();
            Some((id, name.trim().to_string(), nice))
        })
        .collect()
}

#[tokio::test]
async fn the_socket_threads_run_below_the_relay_thread() {
    let stack = stack().await;
    let threads = thread_priorities(stack.gateway.pid());
    let nice_of = |wanted: &str| {
        threads
            .iter()
            .find(|(_, name, _)| name == wanted)
            .map(|(_, _, nice)| *nice)
    };
    let relay = nice_of("relay").expect("a relay thread");
    assert!(
        threads.iter().any(|(_, _, nice)| *nice == relay + 10),
        "a socket thread ten below the relay thread: {threads:?}"
    );
    let pid = stack.gateway.pid().to_string();
    let main = threads
        .iter()
        .find(|(id, _, _)| *id == pid)
        .map(|(_, _, nice)| *nice);
    assert_eq!(
        main,
        Some(relay),
        "the main thread keeps its priority: {threads:?}"
    );
}
