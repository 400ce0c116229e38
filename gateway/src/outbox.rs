//! Outbox: the bounded queue of frames waiting for one socket.
//!
//! Producers (the router, shutdown, the backend) push shared frame bytes or ask
//! for a close; the socket's own task drains it. A full outbox refuses the push
//! instead of waiting, so one slow reader never stalls delivery to anyone else.
//! It allocates nothing until a frame is queued. It must not know about
//! WebSocket framing or Redis.
//!
//! A push does not wake the socket: it hands the socket's waker to the
//! caller's [`Wakeups`], which wakes a whole run of sockets together.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytestring::ByteString;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use shared_proto::close::CloseCode;

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// The outbox is full: the socket is not keeping up.
    Full,
    /// The socket is closing; the frame was discarded.
    Closed,
}

/// What accompanies a close besides its code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseNote {
    /// The table's reason for the code.
    Standard,
    /// Draining: the table's reason plus a "retry after" hint.
    RetryAfter(Duration),
    /// A reason given by the backend (`gateway.disconnect`).
    Reason(Arc<str>),
}

/// What the socket task should do next.
#[derive(Debug)]
pub enum Next {
    /// Frames to send are in the batch, oldest first (drained together to
    /// batch writes).
    Frames,
    Close(CloseCode, CloseNote),
}

pub struct Outbox {
    capacity: usize,
    state: Mutex<State>,
    waker: AtomicWaker,
}

struct State {
    frames: VecDeque<ByteString>,
    close: Option<(CloseCode, CloseNote)>,
}

impl Outbox {
    pub fn new(capacity: usize) -> Outbox {
        Outbox {
            capacity,
            state: Mutex::new(State {
                frames: VecDeque::new(),
                close: None,
            }),
            waker: AtomicWaker::new(),
        }
    }

    /// Queues a frame; the socket's waker, if it is waiting, goes to
    /// `wakeups` (a socket already holding a wake-up gives none).
    pub fn push(&self, frame: ByteString, wakeups: &mut Wakeups) -> Pushed {
        let mut state = self.state.lock();
        if state.close.is_some() {
            return Pushed::Closed;
        }
        if state.frames.len() >= self.capacity {
            return Pushed::Full;
        }
        state.frames.push_back(frame);
        drop(state);
        if let Some(waker) = self.waker.take() {
            wakeups.hold(waker);
        }
        Pushed::Queued
    }

    /// Asks the socket to close; the first request wins and queued frames
    /// are discarded, since the close is what the client must see next.
    pub fn close(&self, code: CloseCode) {
        self.close_with(code, CloseNote::Standard);
    }

    /// Like `close`, with a hint or a reason of its own for the client.
    pub fn close_with(&self, code: CloseCode, note: CloseNote) {
        let mut state = self.state.lock();
        if state.close.is_none() {
            state.close = Some((code, note));
            state.frames = VecDeque::new();
        }
        drop(state);
        self.waker.wake();
    }

    pub fn is_closing(&self) -> bool {
        self.state.lock().close.is_some()
    }

    pub fn len(&self) -> usize {
        self.state.lock().frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn poll_next(&self, cx: &mut Context<'_>, batch: &mut VecDeque<ByteString>) -> Poll<Next> {
        self.waker.register(cx.waker());
        let mut state = self.state.lock();
        if let Some((code, note)) = &state.close {
            return Poll::Ready(Next::Close(*code, note.clone()));
        }
        if state.frames.is_empty() {
            return Poll::Pending;
        }
        // The queue and the caller's emptied batch trade places: no copy,
        // and the two allocations take turns instead of one per wake-up.
        batch.clear();
        if batch.capacity() > 16 {
            // Give back a burst's memory: idle sockets are the common case.
            batch.shrink_to_fit();
        }
        std::mem::swap(&mut state.frames, batch);
        Poll::Ready(Next::Frames)
    }

    /// Waits for frames (moved into `batch`, which is emptied first) or a close.
    pub async fn next(&self, batch: &mut VecDeque<ByteString>) -> Next {
        poll_fn(|cx| self.poll_next(cx, batch)).await
    }
}

/// Socket wake-ups held back while a run of payloads is routed, then given
/// together. Socket tasks live on the worker threads and the router runs on
/// another, so each wake-up is a cross-thread hand-off: given one by one, a
/// worker sleeps and wakes again per frame and each socket writes one frame
/// per system call. Given together, a worker serves every woken socket in
/// one go, and a socket that got several frames in the run writes them with
/// one vectored write. The caller bounds how long it holds them.
#[derive(Default)]
pub struct Wakeups {
    wakers: Vec<Waker>,
    oldest: Option<Instant>,
}

impl Wakeups {
    pub fn new() -> Wakeups {
        Wakeups::default()
    }

    fn hold(&mut self, waker: Waker) {
        if self.oldest.is_none() {
            self.oldest = Some(Instant::now());
        }
        self.wakers.push(waker);
    }

    pub fn len(&self) -> usize {
        self.wakers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.wakers.is_empty()
    }

    /// Wakes every held socket.
    pub fn wake_all(&mut self) {
        self.oldest = None;
        for waker in self.wakers.drain(..) {
            waker.wake();
        }
    }

    /// Wakes every held socket once the oldest wake-up has waited `window`,
    /// so a long run of payloads cannot hold back its first frames.
    pub fn wake_if_held_for(&mut self, window: Duration) {
        if self.oldest.is_some_and(|oldest| oldest.elapsed() >= window) {
            self.wake_all();
        }
    }
}

impl Drop for Wakeups {
    /// A held wake-up is never lost, whatever path drops the holder.
    fn drop(&mut self) {
        self.wake_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_come_out_in_order_until_full() {
        let outbox = Outbox::new(2);
        let wakeups = &mut Wakeups::new();
        assert_eq!(outbox.push("a".into(), wakeups), Pushed::Queued);
        assert_eq!(outbox.push("b".into(), wakeups), Pushed::Queued);
        assert_eq!(outbox.push("c".into(), wakeups), Pushed::Full);
        let mut batch = VecDeque::new();
        match outbox.next(&mut batch).await {
            Next::Frames => assert_eq!(batch, ["a", "b"]),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(outbox.push("d".into(), wakeups), Pushed::Queued);
    }

    #[tokio::test]
    async fn close_wins_over_queued_frames() {
        let outbox = Outbox::new(4);
        let wakeups = &mut Wakeups::new();
        outbox.push("a".into(), wakeups);
        outbox.close(CloseCode::SlowConsumer);
        outbox.close(CloseCode::Normal);
        assert_eq!(outbox.push("b".into(), wakeups), Pushed::Closed);
        match outbox.next(&mut VecDeque::new()).await {
            Next::Close(code, note) => {
                assert_eq!((code, note), (CloseCode::SlowConsumer, CloseNote::Standard))
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Yields until the outbox's reader is waiting (its waker registered).
    async fn until_waiting(outbox: &Outbox) {
        while outbox
            .waker
            .take()
            .map(|waker| outbox.waker.register(&waker))
            .is_none()
        {
            tokio::task::yield_now().await;
        }
    }

    /// A waiting socket is woken once per run of pushes, and only when the
    /// run's wake-ups are given.
    #[tokio::test]
    async fn a_waiting_socket_is_woken_once_when_the_run_is_given() {
        let outbox = Arc::new(Outbox::new(8));
        let reader = {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                let mut batch = VecDeque::new();
                match outbox.next(&mut batch).await {
                    Next::Frames => batch.len(),
                    Next::Close(..) => 0,
                }
            })
        };
        until_waiting(&outbox).await;
        let mut wakeups = Wakeups::new();
        for frame in ["a", "b", "c"] {
            assert_eq!(outbox.push(frame.into(), &mut wakeups), Pushed::Queued);
        }
        assert_eq!(wakeups.len(), 1, "one wake-up for the whole run");
        tokio::task::yield_now().await;
        assert!(!reader.is_finished(), "held back until the run is given");
        wakeups.wake_if_held_for(Duration::from_secs(3600));
        assert_eq!(wakeups.len(), 1, "the window has not passed");
        wakeups.wake_if_held_for(Duration::ZERO);
        assert!(wakeups.is_empty());
        assert_eq!(
            reader.await.expect("reader"),
            3,
            "all three frames in one batch"
        );
    }

    #[tokio::test]
    async fn dropping_the_holder_wakes_what_it_held() {
        let outbox = Arc::new(Outbox::new(8));
        let reader = {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.next(&mut VecDeque::new()).await })
        };
        until_waiting(&outbox).await;
        let mut wakeups = Wakeups::new();
        outbox.push("a".into(), &mut wakeups);
        drop(wakeups);
        assert!(matches!(reader.await.expect("reader"), Next::Frames));
    }
}
