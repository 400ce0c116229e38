//! Outbox: the bounded queue of frames waiting for one socket.
//!
//! Producers (the router, shutdown, the backend) push shared frame bytes or ask
//! for a close; the socket's own task drains it. A full outbox refuses the push
//! instead of waiting, so one slow reader never stalls delivery to anyone else.
//! It allocates nothing until a frame is queued. It must not know about
//! WebSocket framing or Redis.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

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

    pub fn push(&self, frame: ByteString) -> Pushed {
        let mut state = self.state.lock();
        if state.close.is_some() {
            return Pushed::Closed;
        }
        if state.frames.len() >= self.capacity {
            return Pushed::Full;
        }
        state.frames.push_back(frame);
        drop(state);
        self.waker.wake();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_come_out_in_order_until_full() {
        let outbox = Outbox::new(2);
        assert_eq!(outbox.push("a".into()), Pushed::Queued);
        assert_eq!(outbox.push("b".into()), Pushed::Queued);
        assert_eq!(outbox.push("c".into()), Pushed::Full);
        let mut batch = VecDeque::new();
        match outbox.next(&mut batch).await {
            Next::Frames => assert_eq!(batch, ["a", "b"]),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(outbox.push("d".into()), Pushed::Queued);
    }

    #[tokio::test]
    async fn close_wins_over_queued_frames() {
        let outbox = Outbox::new(4);
        outbox.push("a".into());
        outbox.close(CloseCode::SlowConsumer);
        outbox.close(CloseCode::Normal);
        assert_eq!(outbox.push("b".into()), Pushed::Closed);
        match outbox.next(&mut VecDeque::new()).await {
            Next::Close(code, note) => {
                assert_eq!((code, note), (CloseCode::SlowConsumer, CloseNote::Standard))
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
