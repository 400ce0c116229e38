//! Runtime thread: an OS thread of its own running a single-threaded tokio
//! runtime until it is stopped.
//!
//! The layer's receiver (and with it the router and the receiver's writes
//! to sockets) runs on one, so none of the work the socket threads do for
//! new connections — TLS handshakes, token signatures, JWKS file reads —
//! waits in the same line as routing Redis messages. It owns the thread and
//! its runtime; it must not know what runs there.

use std::io;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

pub(crate) struct RuntimeThread {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl RuntimeThread {
    /// Starts the thread, called `name`, and waits until its runtime runs.
    pub(crate) fn start(name: &str) -> io::Result<RuntimeThread> {
        let (started, runtime_ready) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = started.send(Err(error));
                        return;
                    }
                };
                let _ = started.send(Ok(runtime.handle().clone()));
                // Runs every task spawned through the handle until stopped
                // (or until the process lets go of the sender).
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        let handle = runtime_ready
            .recv()
            .map_err(|_| io::Error::other("the runtime thread ended before its runtime ran"))??;
        Ok(RuntimeThread {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where to spawn the tasks that run on this thread.
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for RuntimeThread {
    /// Ends the runtime (tasks still on it are dropped) and the thread.
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_run_on_the_named_thread_until_it_is_dropped() {
        let thread = RuntimeThread::start("relay-test").expect("started");
        let (name_sent, name) = std::sync::mpsc::channel();
        thread.handle().spawn(async move {
            let _ = name_sent.send(std::thread::current().name().map(str::to_string));
        });
        assert_eq!(
            name.recv().expect("the task ran"),
            Some("relay-test".to_string())
        );
        let forever = thread.handle().spawn(std::future::pending::<()>());
        drop(thread);
        assert!(forever.is_finished(), "dropped with its runtime");
    }
}
