//! The gateway process itself: it runs on jemalloc with the project's
//! allocator settings, so memory freed after a burst of sockets goes back to
//! the system from jemalloc's own background thread.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn thread_names(pid: u32) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
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
