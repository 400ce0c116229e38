//! Shutdown: one signal that tells every long-running task to finish.
//!
//! Owns the trigger (SIGTERM / SIGINT or a caller) and a cheap, cloneable
//! listener that tasks await next to their work. It must not decide the order
//! in which parts of the gateway stop; `server` does that.

use tokio::sync::watch;

#[derive(Clone)]
pub struct Shutdown {
    sender: std::sync::Arc<watch::Sender<bool>>,
    receiver: watch::Receiver<bool>,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        let (sender, receiver) = watch::channel(false);
        Shutdown {
            sender: std::sync::Arc::new(sender),
            receiver,
        }
    }

    pub fn trigger(&self) {
        self.sender.send_replace(true);
    }

    /// Tasks await [`Shutdown::triggered`]; only tests look without waiting.
    #[cfg(test)]
    pub(crate) fn is_triggered(&self) -> bool {
        *self.receiver.borrow()
    }

    /// Resolves once `trigger` has been called (at once if it already was).
    pub async fn triggered(&self) {
        let mut receiver = self.receiver.clone();
        // An error means the sender is gone, which also means "stop".
        let _ = receiver.wait_for(|stopped| *stopped).await;
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

/// Waits for SIGTERM or SIGINT (Ctrl-C) and names the one that came.
pub async fn termination_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => tokio::select! {
                _ = terminate.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn listeners_see_the_trigger() {
        let shutdown = Shutdown::new();
        let listener = shutdown.clone();
        assert!(!listener.is_triggered());
        let waiting = tokio::spawn(async move { listener.triggered().await });
        shutdown.trigger();
        waiting.await.expect("listener finished");
        assert!(shutdown.is_triggered());
    }
}
