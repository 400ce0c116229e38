//! Outbox: the bounded queue of frames waiting for one socket.
//!
//! Producers (the router, shutdown, the backend) push shared frame bytes or ask
//! for a close; the socket's own task drains it. A full outbox refuses the push
//! instead of waiting, so one slow reader never stalls delivery to anyone else.
//! It allocates nothing until a frame is queued. It must not know about
//! WebSocket framing, Redis or metrics: it keeps count of the frames a
//! close discards and hands that count (and what is still queued when the
//! socket ends) to whoever counts drops.
//!
//! Full must mean the client, not the gateway: a receiver that pops a
//! backlog routes many payloads before anything is written, so an outbox
//! half full asks the giver of wake-ups to pause the run ([`Wakeups::pace`]):
//! write and wake now, and wait, briefly and once, for the socket to take
//! its frames. Only what a socket still has not taken after that counts
//! against it.
//!
//! A push does not wake the socket: it hands the socket's waker to the
//! caller's [`Wakeups`], which wakes a whole run of sockets together.
//!
//! Where the socket's connection allows it (a [`Wire`] is attached), the
//! frames a run queued for a socket whose task is waiting are not handed to
//! the task at all: whoever gives the run's wake-ups writes them to the
//! connection with one vectored write, and wakes the task only for what the
//! connection did not take. A frame to an idle socket then costs one system
//! call and no task poll. The outbox is the one place that decides who may
//! write next, so frames never interleave: the task only under a claim
//! (taking frames claims the wire; so does a frame of its own), the giver
//! of wake-ups only while the task holds no claim.

use std::cell::OnceCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytestring::ByteString;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use prometheus::IntCounter;
use shared_proto::close::CloseCode;
use shared_proto::{positioned_frame, Position, POSITION_LEN};

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
    /// batch writes); the first one's first `first_sent` bytes (header
    /// included) are on the wire already. The task holds the wire until it
    /// calls [`Outbox::release_wire`].
    Frames {
        first_sent: usize,
    },
    Close(CloseCode, CloseNote),
}

/// How far a [`Wire`] got with a run of frames without waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrittenNow {
    /// Frames written whole.
    pub whole: usize,
    /// Bytes of the next frame's wire form (header included) written.
    pub next_sent: usize,
}

/// A connection frames can be written to without waiting; the transport
/// implements it, since it knows the framing.
pub trait Wire: Send + Sync {
    /// Writes as much of `frames` as text frames as the connection takes
    /// now, the first from byte `first_sent` of its wire form on. A
    /// connection that would block or failed just stops it; the socket's
    /// task finds out which when it writes.
    fn write_now(&self, frames: &[ByteString], first_sent: usize) -> WrittenNow;
}

pub struct Outbox {
    capacity: usize,
    state: Mutex<State>,
    waker: AtomicWaker,
}

struct State {
    frames: VecDeque<ByteString>,
    close: Option<(CloseCode, CloseNote)>,
    /// Where the giver of a run's wake-ups may write; none until the socket
    /// task attaches it, and none again once the task ends.
    wire: Option<Arc<dyn Wire>>,
    /// The socket task is writing (or has ended): nobody else writes.
    task_holds_wire: bool,
    /// Bytes of `frames[0]` already written by a giver of wake-ups that the
    /// connection took only part of; the rest must go out before anything
    /// else.
    head_sent: usize,
    /// A pause did not get this socket below `pace_from`: it is on its own
    /// until it has taken its queue (a client that does not read must not
    /// pause every run).
    unpaced: bool,
    /// Frames the close discarded that nobody has taken to count yet (a
    /// `u32` fits in the state's padding: no socket grows by it).
    discarded: u32,
    /// The client asked for positions (recovery): it gets every message
    /// frame with its position first.
    positioned: bool,
    /// The final take ([`Outbox::take_unsent`]) happened: nothing is queued
    /// again. The receiver runs on another thread than the socket's task,
    /// so it may have found the socket in the registry just before the
    /// socket left it; such a push is refused, and the router counts it.
    finished: bool,
    /// Messages at or before this position reached the client by replay:
    /// a live copy is dropped. Cleared by the first live message past it
    /// (messages arrive in position order), so it is rarely allocated.
    replayed_through: Option<Box<Position>>,
}

/// One message's frame as the router hands it to many sockets: the frame
/// itself, and for sockets that asked for positions the same frame with its
/// position first, rendered once, when the first such socket needs it.
pub struct MessageFrame {
    plain: ByteString,
    /// Its queue score; none on the pub/sub layer.
    sent_at: Option<f64>,
    positioned: OnceCell<(Position, ByteString)>,
}

impl MessageFrame {
    /// A message frame sent at `sent_at` (its queue score); without a send
    /// time (the pub/sub layer's), positioned sockets get it as it is.
    pub fn new(frame: ByteString, sent_at: Option<f64>) -> MessageFrame {
        MessageFrame {
            plain: frame,
            sent_at,
            positioned: OnceCell::new(),
        }
    }

    /// The position and the positioned frame.
    pub fn into_positioned(self) -> Option<(Position, ByteString)> {
        self.positioned()?;
        self.positioned.into_inner()
    }

    fn positioned(&self) -> Option<&(Position, ByteString)> {
        let sent_at = self.sent_at?;
        Some(self.positioned.get_or_init(|| {
            let position = Position::of(sent_at, self.plain.as_bytes());
            let frame = ByteString::from(positioned_frame(&self.plain, position));
            (position, frame)
        }))
    }
}

/// The position a positioned frame starts with.
fn position_of_frame(frame: &str) -> Option<Position> {
    const PREFIX: &str = "{\"position\": \"";
    let digits = frame.strip_prefix(PREFIX)?.get(..POSITION_LEN)?;
    Position::parse(digits)
}

/// What a socket's outbox held back for good when its task ended, for the
/// caller to count (the outbox knows no metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsent {
    /// Frames the close discarded and nobody took yet.
    pub discarded: usize,
    /// That close, if one was asked for.
    pub close: Option<(CloseCode, CloseNote)>,
    /// Frames still queued: the task ended before sending them (a frame the
    /// connection took only part of and that was never finished included).
    pub left: usize,
}

impl Outbox {
    pub fn new(capacity: usize) -> Outbox {
        Outbox::with_positions(capacity, false)
    }

    /// An outbox whose message frames carry their positions
    /// ([`MessageFrame`]), for a client recovering missed messages.
    pub fn with_positions(capacity: usize, positioned: bool) -> Outbox {
        Outbox {
            capacity,
            state: Mutex::new(State {
                frames: VecDeque::new(),
                close: None,
                wire: None,
                task_holds_wire: false,
                head_sent: 0,
                unpaced: false,
                discarded: 0,
                positioned,
                finished: false,
                replayed_through: None,
            }),
            waker: AtomicWaker::new(),
        }
    }

    /// Queued frames from which a run should pause for this socket (derived,
    /// not stored: every socket has an outbox). A one-frame outbox (the
    /// canary's) never pauses anyone.
    fn pace_from(&self) -> usize {
        if self.capacity >= 2 {
            self.capacity / 2
        } else {
            usize::MAX
        }
    }

    /// Queues a frame. A waiting socket whose wire is free goes to
    /// `wakeups` to be written to when the run's wake-ups are given; any
    /// other waiting socket's waker goes there (a socket already held gives
    /// none). An outbox that reaches half its capacity asks `wakeups` to
    /// pause the run.
    pub fn push(self: &Arc<Self>, frame: ByteString, wakeups: &mut Wakeups) -> Pushed {
        let state = self.state.lock();
        self.push_locked(state, frame, wakeups)
    }

    /// [`Outbox::push`] of a message: its positioned frame if the client
    /// asked for positions, and nothing if it was replayed already.
    pub fn push_message(self: &Arc<Self>, message: &MessageFrame, wakeups: &mut Wakeups) -> Pushed {
        let mut state = self.state.lock();
        if !state.positioned {
            return self.push_locked(state, message.plain.clone(), wakeups);
        }
        let Some((position, frame)) = message.positioned() else {
            return self.push_locked(state, message.plain.clone(), wakeups);
        };
        if let Some(through) = &state.replayed_through {
            if *position <= **through {
                return Pushed::Queued;
            }
            state.replayed_through = None;
        }
        self.push_locked(state, frame.clone(), wakeups)
    }

    /// The messages up to `through` reached the client by replay: queued
    /// live copies are dropped, and so are those pushed from now on.
    pub fn replayed_through(&self, through: Position) {
        let mut state = self.state.lock();
        let through = match state.replayed_through.take() {
            Some(earlier) if *earlier > through => *earlier,
            _ => through,
        };
        // Nothing of the queue is on the wire yet: the replay comes first.
        if state.head_sent == 0 {
            state
                .frames
                .retain(|frame| position_of_frame(frame).is_none_or(|position| position > through));
        }
        state.replayed_through = Some(Box::new(through));
    }

    fn push_locked(
        self: &Arc<Self>,
        mut state: parking_lot::MutexGuard<'_, State>,
        frame: ByteString,
        wakeups: &mut Wakeups,
    ) -> Pushed {
        if state.close.is_some() || state.finished {
            return Pushed::Closed;
        }
        if state.frames.len() >= self.capacity {
            return Pushed::Full;
        }
        let first = state.frames.is_empty();
        state.frames.push_back(frame);
        let writable_by_giver = state.wire.is_some() && !state.task_holds_wire;
        let wants_pause = state.frames.len() == self.pace_from() && !state.unpaced;
        drop(state);
        if wants_pause {
            wakeups.pace_for(self.clone());
        }
        if writable_by_giver {
            // Frames queued before this one mean the socket is held already.
            if first {
                wakeups.write_later(self.clone());
            }
        } else if let Some(waker) = self.waker.take() {
            wakeups.hold(waker);
        }
        Pushed::Queued
    }

    /// Writes the queued frames to the wire if the task holds no claim;
    /// wakes the task for whatever is left. Returns the frames written.
    fn write_queued(&self) -> usize {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        let mut written = 0;
        if let (false, Some(wire)) = (state.task_holds_wire, &state.wire) {
            if !state.frames.is_empty() {
                let now = wire.write_now(state.frames.make_contiguous(), state.head_sent);
                state.frames.drain(..now.whole);
                state.head_sent = now.next_sent;
                written = now.whole;
                if state.frames.len() < self.pace_from() {
                    state.unpaced = false;
                }
            }
        }
        let left = !state.frames.is_empty();
        drop(guard);
        if left {
            self.waker.wake();
        }
        written
    }

    /// Asks the socket to close; the first request wins and queued frames
    /// are discarded, since the close is what the client must see next
    /// (all but a frame partly on the wire, which must be finished first).
    /// The discarded frames are kept count of until taken
    /// ([`Outbox::take_discarded`], [`Outbox::take_unsent`]).
    pub fn close(&self, code: CloseCode) {
        self.close_with(code, CloseNote::Standard);
    }

    /// Like `close`, with a hint or a reason of its own for the client.
    pub fn close_with(&self, code: CloseCode, note: CloseNote) {
        let mut state = self.state.lock();
        if state.close.is_none() {
            state.close = Some((code, note));
            let kept = usize::from(state.head_sent > 0);
            let discarded = u32::try_from(state.frames.len().saturating_sub(kept));
            state.discarded = state
                .discarded
                .saturating_add(discarded.unwrap_or(u32::MAX));
            if kept > 0 {
                state.frames.truncate(1);
            } else {
                state.frames = VecDeque::new();
            }
        }
        drop(state);
        self.waker.wake();
    }

    /// The frames a close discarded since the last take, for a closer that
    /// counts them at once (the drain); whatever is not taken here goes
    /// with [`Outbox::take_unsent`].
    pub fn take_discarded(&self) -> usize {
        std::mem::take(&mut self.state.lock().discarded) as usize
    }

    /// The final take, once the socket's task has ended and it is out of
    /// the registry: empties the queue, says what was never sent and why,
    /// and refuses pushes from then on (the receiver, on its own thread,
    /// may still hold the outbox from a run it began before).
    pub fn take_unsent(&self) -> Unsent {
        let mut state = self.state.lock();
        state.finished = true;
        let left = std::mem::take(&mut state.frames).len();
        state.head_sent = 0;
        Unsent {
            discarded: std::mem::take(&mut state.discarded) as usize,
            close: state.close.clone(),
            left,
        }
    }

    pub fn is_closing(&self) -> bool {
        self.state.lock().close.is_some()
    }

    /// The socket has taken enough of its queue (or is closing) for a
    /// paused run to go on.
    fn caught_up(&self) -> bool {
        let state = self.state.lock();
        state.close.is_some() || state.frames.len() < self.pace_from()
    }

    /// A pause was not enough: no run pauses for this socket again until
    /// it has taken its queue.
    fn stop_pacing(&self) {
        self.state.lock().unpaced = true;
    }

    pub fn len(&self) -> usize {
        self.state.lock().frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Lets the giver of a run's wake-ups write to `wire` from now on.
    pub fn attach_wire(&self, wire: Arc<dyn Wire>) {
        self.state.lock().wire = Some(wire);
    }

    /// For a write of the socket task's own (a ping, a reply, the close):
    /// nobody else writes until [`Outbox::release_wire`]. Returns a frame
    /// the giver of wake-ups left partly written, with the bytes of it
    /// already sent: the task must finish it first.
    pub fn claim_wire(&self) -> Option<(ByteString, usize)> {
        let mut state = self.state.lock();
        state.task_holds_wire = true;
        let sent = std::mem::take(&mut state.head_sent);
        if sent > 0 {
            state.frames.pop_front().map(|frame| (frame, sent))
        } else {
            None
        }
    }

    /// The socket task's write is done: the giver of wake-ups may write
    /// again.
    pub fn release_wire(&self) {
        self.state.lock().task_holds_wire = false;
    }

    /// The socket task has ended: nothing writes to its connection again,
    /// and the outbox lets go of it.
    pub fn retire_wire(&self) {
        let mut state = self.state.lock();
        state.task_holds_wire = true;
        state.wire = None;
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
        state.task_holds_wire = true;
        state.unpaced = false;
        let first_sent = std::mem::take(&mut state.head_sent);
        // The queue and the caller's emptied batch trade places: no copy,
        // and the two allocations take turns instead of one per wake-up.
        batch.clear();
        if batch.capacity() > 16 {
            // Give back a burst's memory: idle sockets are the common case.
            batch.shrink_to_fit();
        }
        std::mem::swap(&mut state.frames, batch);
        Poll::Ready(Next::Frames { first_sent })
    }

    /// Waits for frames (moved into `batch`, which is emptied first, and
    /// the wire claimed for them) or a close.
    pub async fn next(&self, batch: &mut VecDeque<ByteString>) -> Next {
        poll_fn(|cx| self.poll_next(cx, batch)).await
    }
}

/// How a [`Wakeups::pace`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paused {
    /// Every socket it paused for took its frames.
    CaughtUp,
    /// Some socket was still behind when the limit passed.
    GaveUp,
}

/// Yields a pause tries before it sleeps between looks.
const PAUSE_YIELDS: u32 = 16;

/// Socket wake-ups held back while a run of payloads is routed, then given
/// together. Given one by one, a socket's task would wake and write once
/// per frame; given together, a socket that got several frames in the run
/// writes them with one vectored write, and a worker serves every woken
/// socket in one go. Sockets with a free wire are not woken at all: their
/// frames are written here at the end of the run. Those writes are never
/// given early: when a receiver falls behind, its runs grow and each
/// socket's frames share a system call (a loopback write costs several
/// microseconds, routing a frame a fraction of one), which is what keeps a
/// backlog's cost per frame down. The caller bounds the run.
#[derive(Default)]
pub struct Wakeups {
    wakers: Vec<Waker>,
    writes: Vec<Arc<Outbox>>,
    /// Sockets that reached half their capacity during the run.
    pausing_for: Vec<Arc<Outbox>>,
    oldest: Option<Instant>,
    /// Counts the frames written here.
    delivered: Option<IntCounter>,
}

impl Wakeups {
    pub fn new() -> Wakeups {
        Wakeups::default()
    }

    /// Counts the frames it writes into `delivered`.
    pub fn counting(delivered: IntCounter) -> Wakeups {
        let mut wakeups = Wakeups::new();
        wakeups.delivered = Some(delivered);
        wakeups
    }

    fn hold(&mut self, waker: Waker) {
        self.oldest.get_or_insert_with(Instant::now);
        self.wakers.push(waker);
    }

    fn write_later(&mut self, outbox: Arc<Outbox>) {
        self.writes.push(outbox);
    }

    fn pace_for(&mut self, outbox: Arc<Outbox>) {
        self.pausing_for.push(outbox);
    }

    /// A socket reached half its capacity: the run should pause
    /// ([`Wakeups::pace`]) before routing its next payload.
    pub fn wants_pause(&self) -> bool {
        !self.pausing_for.is_empty()
    }

    /// Lets the run go on without the pause its sockets asked for.
    pub fn forget_pauses(&mut self) {
        self.pausing_for.clear();
    }

    /// Pauses the run for the sockets that asked for it: gives every
    /// wake-up held so far (writing what the wires take), then waits up to
    /// `limit` for those sockets to take their frames, yielding so that
    /// tasks on this thread run. A socket still behind after that is not
    /// waited for again until it has caught up, so a client that does not
    /// read costs one pause and then meets its outbox's bound alone.
    pub async fn pace(&mut self, limit: Duration) -> Paused {
        let started = Instant::now();
        self.wake_all();
        let mut yields = 0u32;
        loop {
            self.pausing_for.retain(|outbox| !outbox.caught_up());
            if self.pausing_for.is_empty() {
                return Paused::CaughtUp;
            }
            if started.elapsed() >= limit {
                for outbox in self.pausing_for.drain(..) {
                    outbox.stop_pacing();
                }
                return Paused::GaveUp;
            }
            // Tasks of this thread need a yield; tasks of another thread
            // need time, which a short sleep gives without spinning.
            if yields < PAUSE_YIELDS {
                yields += 1;
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.wakers.len() + self.writes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The run is over: writes to every held socket with a free wire and
    /// wakes the others.
    pub fn wake_all(&mut self) {
        let mut written = 0;
        for outbox in self.writes.drain(..) {
            written += outbox.write_queued();
        }
        if let Some(delivered) = &self.delivered {
            delivered.inc_by(written as u64);
        }
        self.wake_tasks();
    }

    fn wake_tasks(&mut self) {
        self.oldest = None;
        for waker in self.wakers.drain(..) {
            waker.wake();
        }
    }

    /// Wakes the held socket tasks once the oldest wake-up has waited
    /// `window`, so a long run of payloads cannot hold back their first
    /// frames when they run on another thread.
    pub fn wake_if_held_for(&mut self, window: Duration) {
        if self.oldest.is_some_and(|oldest| oldest.elapsed() >= window) {
            self.wake_tasks();
        }
    }
}

impl Drop for Wakeups {
    /// A held wake-up is never lost, whatever path drops the holder.
    fn drop(&mut self) {
        self.wake_all();
    }
}

/// An outbox's wire for tests, shared with the socket loop's tests.
#[cfg(test)]
pub(crate) mod test_wire {
    use super::*;

    /// A wire that takes `room` bytes in all, a frame's wire form being
    /// just its text here.
    pub(crate) struct TestWire {
        taken: Mutex<String>,
        room: Mutex<usize>,
    }

    impl TestWire {
        pub(crate) fn with_room(room: usize) -> Arc<TestWire> {
            Arc::new(TestWire {
                taken: Mutex::new(String::new()),
                room: Mutex::new(room),
            })
        }

        pub(crate) fn taken(&self) -> String {
            self.taken.lock().clone()
        }

        pub(crate) fn make_room(&self, room: usize) {
            *self.room.lock() = room;
        }
    }

    impl Wire for TestWire {
        fn write_now(&self, frames: &[ByteString], first_sent: usize) -> WrittenNow {
            let mut room = self.room.lock();
            let mut sent = first_sent;
            for (index, frame) in frames.iter().enumerate() {
                let rest = &frame[sent..];
                let take = rest.len().min(*room);
                self.taken.lock().push_str(&rest[..take]);
                *room -= take;
                if take < rest.len() {
                    return WrittenNow {
                        whole: index,
                        next_sent: sent + take,
                    };
                }
                sent = 0;
            }
            WrittenNow {
                whole: frames.len(),
                next_sent: 0,
            }
        }
    }

    /// An outbox attached to a [`TestWire`] with room for `room` bytes.
    pub(crate) fn on_wire(room: usize) -> (Arc<Outbox>, Arc<TestWire>) {
        let outbox = Arc::new(Outbox::new(8));
        let wire = TestWire::with_room(room);
        outbox.attach_wire(wire.clone());
        (outbox, wire)
    }

    /// [`on_wire`], with `frames` pushed as one run and given.
    pub(crate) fn given_to_wire(room: usize, frames: &[&str]) -> Arc<Outbox> {
        let (outbox, _) = on_wire(room);
        let mut wakeups = Wakeups::new();
        for frame in frames {
            outbox.push((*frame).into(), &mut wakeups);
        }
        wakeups.wake_all();
        outbox
    }
}

#[cfg(test)]
mod tests {
    use super::test_wire::{given_to_wire, on_wire};
    use super::*;

    #[tokio::test]
    async fn frames_come_out_in_order_until_full() {
        let outbox = Arc::new(Outbox::new(2));
        let wakeups = &mut Wakeups::new();
        assert_eq!(outbox.push("a".into(), wakeups), Pushed::Queued);
        assert_eq!(outbox.push("b".into(), wakeups), Pushed::Queued);
        assert_eq!(outbox.push("c".into(), wakeups), Pushed::Full);
        let mut batch = VecDeque::new();
        match outbox.next(&mut batch).await {
            Next::Frames { first_sent: 0 } => assert_eq!(batch, ["a", "b"]),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(outbox.push("d".into(), wakeups), Pushed::Queued);
    }

    #[tokio::test]
    async fn close_wins_over_queued_frames() {
        let outbox = Arc::new(Outbox::new(4));
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
                    Next::Frames { .. } => batch.len(),
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
        assert!(matches!(reader.await.expect("reader"), Next::Frames { .. }));
    }

    /// [`on_wire`], and a socket task waiting on the outbox that returns
    /// what it was given.
    async fn with_waiting_reader(
        room: usize,
    ) -> (
        Arc<Outbox>,
        Arc<super::test_wire::TestWire>,
        tokio::task::JoinHandle<(Next, Vec<ByteString>)>,
    ) {
        let (outbox, wire) = on_wire(room);
        let reader = {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                let mut batch = VecDeque::new();
                let next = outbox.next(&mut batch).await;
                (next, batch.into())
            })
        };
        until_waiting(&outbox).await;
        (outbox, wire, reader)
    }

    #[tokio::test]
    async fn a_free_wire_takes_the_runs_frames_and_the_task_is_not_woken() {
        let (outbox, wire, reader) = with_waiting_reader(100).await;
        let delivered = IntCounter::new("delivered", "test").expect("counter");
        let mut wakeups = Wakeups::counting(delivered.clone());
        for frame in ["a", "b", "c"] {
            assert_eq!(outbox.push(frame.into(), &mut wakeups), Pushed::Queued);
        }
        assert_eq!(wakeups.len(), 1, "held once for the run");
        assert_eq!(wire.taken(), "", "nothing written before the run is given");
        wakeups.wake_all();
        assert_eq!(wire.taken(), "abc");
        assert_eq!(delivered.get(), 3);
        tokio::task::yield_now().await;
        assert!(!reader.is_finished(), "the task was not woken");
        reader.abort();
    }

    #[tokio::test]
    async fn what_the_wire_does_not_take_goes_to_the_task_with_how_far_it_got() {
        let (outbox, wire, reader) = with_waiting_reader(3).await;
        let mut wakeups = Wakeups::new();
        outbox.push("abcd".into(), &mut wakeups);
        outbox.push("ef".into(), &mut wakeups);
        wakeups.wake_all();
        assert_eq!(wire.taken(), "abc");
        let (next, batch) = reader.await.expect("reader");
        assert!(matches!(next, Next::Frames { first_sent: 3 }), "{next:?}");
        assert_eq!(batch, ["abcd", "ef"]);
        // The task holds the wire until it has written them.
        let mut wakeups = Wakeups::new();
        outbox.push("g".into(), &mut wakeups);
        wakeups.wake_all();
        assert_eq!(
            wire.taken(),
            "abc",
            "no write while the task holds the wire"
        );
        outbox.release_wire();
        wire.make_room(10);
        let mut wakeups = Wakeups::new();
        outbox.push("h".into(), &mut wakeups);
        wakeups.wake_all();
        assert_eq!(
            wire.taken(),
            "abc",
            "queued frames wait for the task, which was woken for them"
        );
        assert_eq!(outbox.len(), 2);
    }

    #[tokio::test]
    async fn a_claim_first_hands_over_a_partly_written_frame() {
        let outbox = given_to_wire(2, &["abcd", "ef"]);
        assert_eq!(outbox.claim_wire(), Some(("abcd".into(), 2)));
        assert_eq!(outbox.claim_wire(), None, "handed over once");
        assert_eq!(outbox.len(), 1, "the rest stays queued for the task");
    }

    #[tokio::test]
    async fn a_close_keeps_a_partly_written_frame_for_the_task_to_finish() {
        let outbox = given_to_wire(1, &["abcd", "ef"]);
        outbox.close(CloseCode::SlowConsumer);
        assert!(matches!(
            outbox.next(&mut VecDeque::new()).await,
            Next::Close(CloseCode::SlowConsumer, _)
        ));
        assert_eq!(outbox.claim_wire(), Some(("abcd".into(), 1)));
        assert_eq!(outbox.len(), 0, "the frames not yet begun are discarded");
    }

    /// A task on this thread that takes whatever its outbox holds, as a
    /// socket reading at network speed does; returns how many frames it
    /// took, once the outbox closes.
    fn fast_reader(outbox: &Arc<Outbox>) -> tokio::task::JoinHandle<usize> {
        let outbox = outbox.clone();
        tokio::spawn(async move {
            let mut batch = VecDeque::new();
            let mut taken = 0;
            while let Next::Frames { .. } = outbox.next(&mut batch).await {
                taken += batch.len();
                outbox.release_wire();
            }
            taken
        })
    }

    /// A run deeper than the outbox reaches a reader that keeps up: the
    /// run pauses at half the capacity, the reader takes its frames, and
    /// nothing is refused.
    #[tokio::test]
    async fn a_run_pauses_at_half_capacity_and_a_fast_reader_takes_everything() {
        let outbox = Arc::new(Outbox::new(8));
        let reader = fast_reader(&outbox);
        until_waiting(&outbox).await;
        let mut wakeups = Wakeups::new();
        let mut pauses = 0;
        for index in 0..100 {
            let frame = ByteString::from(format!("{index}"));
            assert_eq!(
                outbox.push(frame, &mut wakeups),
                Pushed::Queued,
                "frame {index}"
            );
            if wakeups.wants_pause() {
                pauses += 1;
                assert_eq!(wakeups.pace(Duration::from_secs(5)).await, Paused::CaughtUp);
            }
        }
        assert!(pauses >= 100 / 4 - 1, "paused every 4 frames: {pauses}");
        wakeups.wake_all();
        tokio::task::yield_now().await;
        outbox.close(CloseCode::Normal);
        assert_eq!(reader.await.expect("reader"), 100);
    }

    /// A socket whose task does not take its frames costs one pause, up to
    /// its limit, then meets its bound alone: later runs never wait for it.
    #[tokio::test]
    async fn a_reader_that_does_not_keep_up_costs_one_pause_then_fills_up() {
        let outbox = Arc::new(Outbox::new(8));
        let mut wakeups = Wakeups::new();
        let mut outcomes = Vec::new();
        let mut pushed = Vec::new();
        for index in 0..10 {
            pushed.push(outbox.push(format!("{index}").into(), &mut wakeups));
            if wakeups.wants_pause() {
                outcomes.push(wakeups.pace(Duration::from_millis(20)).await);
            }
        }
        assert_eq!(outcomes, [Paused::GaveUp], "one pause, given up");
        assert_eq!(&pushed[..8], [Pushed::Queued; 8]);
        assert_eq!(&pushed[8..], [Pushed::Full; 2]);
        // Once it has taken its queue, it is paused for again.
        let mut batch = VecDeque::new();
        assert!(matches!(outbox.next(&mut batch).await, Next::Frames { .. }));
        outbox.release_wire();
        for index in 0..4 {
            outbox.push(format!("{index}").into(), &mut wakeups);
        }
        assert!(wakeups.wants_pause());
    }

    /// On a free wire the pause is the write itself: the frames go out at
    /// once and the run goes on without waking the task.
    #[tokio::test]
    async fn a_pause_on_a_free_wire_writes_the_frames_and_goes_on() {
        let (outbox, wire, reader) = with_waiting_reader(1_000).await;
        let mut wakeups = Wakeups::new();
        for frame in ["a", "b", "c", "d"] {
            outbox.push(frame.into(), &mut wakeups);
        }
        assert!(wakeups.wants_pause());
        assert_eq!(wakeups.pace(Duration::from_secs(5)).await, Paused::CaughtUp);
        assert_eq!(wire.taken(), "abcd");
        assert!(!reader.is_finished(), "the task was not woken");
        reader.abort();
    }

    /// The canary's one-frame outbox never pauses a run.
    #[test]
    fn a_one_frame_outbox_never_asks_for_a_pause() {
        let outbox = Arc::new(Outbox::new(1));
        let mut wakeups = Wakeups::new();
        outbox.push("a".into(), &mut wakeups);
        assert!(!wakeups.wants_pause());
    }

    #[tokio::test]
    async fn a_close_keeps_count_of_the_frames_it_discards() {
        let outbox = Arc::new(Outbox::new(8));
        let wakeups = &mut Wakeups::new();
        for frame in ["a", "b", "c"] {
            outbox.push(frame.into(), wakeups);
        }
        outbox.close(CloseCode::SlowConsumer);
        outbox.close(CloseCode::Normal);
        assert_eq!(outbox.push("late".into(), wakeups), Pushed::Closed);
        assert_eq!(
            outbox.take_unsent(),
            Unsent {
                discarded: 3,
                close: Some((CloseCode::SlowConsumer, CloseNote::Standard)),
                left: 0,
            },
            "the later close and the refused push discard nothing more"
        );
        assert_eq!(outbox.take_unsent().discarded, 0, "taken once");
    }

    #[tokio::test]
    async fn a_partly_written_frame_is_not_counted_as_discarded_by_the_close() {
        let outbox = given_to_wire(1, &["abcd", "ef", "gh"]);
        outbox.close_with(
            CloseCode::DisconnectedByBackend,
            CloseNote::Reason("x".into()),
        );
        assert_eq!(outbox.claim_wire(), Some(("abcd".into(), 1)), "finished");
        let unsent = outbox.take_unsent();
        assert_eq!((unsent.discarded, unsent.left), (2, 0));

        // Never finished (the task ended first): left unsent.
        let outbox = given_to_wire(1, &["abcd", "ef"]);
        outbox.close(CloseCode::SlowConsumer);
        let unsent = outbox.take_unsent();
        assert_eq!((unsent.discarded, unsent.left), (1, 1));
    }

    #[tokio::test]
    async fn discards_taken_at_the_close_are_not_taken_again() {
        let outbox = Arc::new(Outbox::new(8));
        let wakeups = &mut Wakeups::new();
        outbox.push("a".into(), wakeups);
        outbox.push("b".into(), wakeups);
        outbox.close_with(
            CloseCode::GoingAway,
            CloseNote::RetryAfter(Duration::from_secs(1)),
        );
        assert_eq!(outbox.take_discarded(), 2);
        assert_eq!(outbox.take_discarded(), 0);
        assert_eq!(outbox.take_unsent().discarded, 0);
    }

    /// A receiver on another thread may push to a socket it found in the
    /// registry just before the socket left: after the final take such a
    /// push is refused (the router counts it), never queued uncounted.
    #[tokio::test]
    async fn nothing_is_queued_after_the_final_take() {
        let outbox = Arc::new(Outbox::new(8));
        let wakeups = &mut Wakeups::new();
        outbox.push("a".into(), wakeups);
        assert_eq!(outbox.take_unsent().left, 1);
        assert_eq!(outbox.push("late".into(), wakeups), Pushed::Closed);
        assert_eq!(outbox.take_unsent().left, 0);
    }

    #[tokio::test]
    async fn frames_still_queued_when_the_task_ends_are_left_unsent() {
        let outbox = Arc::new(Outbox::new(8));
        let wakeups = &mut Wakeups::new();
        outbox.push("a".into(), wakeups);
        outbox.push("b".into(), wakeups);
        assert_eq!(
            outbox.take_unsent(),
            Unsent {
                discarded: 0,
                close: None,
                left: 2
            }
        );
        assert!(outbox.is_empty());
    }

    #[tokio::test]
    async fn a_retired_wire_is_never_written_again() {
        let (outbox, wire) = on_wire(100);
        outbox.retire_wire();
        let mut wakeups = Wakeups::new();
        outbox.push("a".into(), &mut wakeups);
        wakeups.wake_all();
        assert_eq!(wire.taken(), "");
        assert_eq!(Arc::strong_count(&wire), 1, "the outbox let go of it");
    }

    fn message(text: &str, sent_at: f64) -> MessageFrame {
        MessageFrame::new(ByteString::from(text), Some(sent_at))
    }

    async fn queued(outbox: &Outbox) -> Vec<String> {
        let mut batch = VecDeque::new();
        match outbox.next(&mut batch).await {
            Next::Frames { .. } => batch.iter().map(ToString::to_string).collect(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_socket_gets_positions_only_if_it_asked() {
        let plain = Arc::new(Outbox::new(4));
        let positioned = Arc::new(Outbox::with_positions(4, true));
        let wakeups = &mut Wakeups::new();
        let frame = message(r#"{"message": 1}"#, 100.5);
        plain.push_message(&frame, wakeups);
        positioned.push_message(&frame, wakeups);
        positioned.push_message(&MessageFrame::new("{}".into(), None), wakeups);
        assert_eq!(queued(&plain).await, [r#"{"message": 1}"#]);
        let position = Position::of(100.5, br#"{"message": 1}"#);
        assert_eq!(
            queued(&positioned).await,
            [
                format!(r#"{{"position": "{position}", "message": 1}}"#),
                "{}".to_string()
            ]
        );
    }

    #[tokio::test]
    async fn live_copies_of_replayed_messages_are_dropped() {
        let outbox = Arc::new(Outbox::with_positions(8, true));
        let wakeups = &mut Wakeups::new();
        let frames: Vec<MessageFrame> = (0..5)
            .map(|n| message(&format!(r#"{{"message": {n}}}"#), 100.0 + f64::from(n)))
            .collect();
        // Queued live while the replay was being read.
        outbox.push_message(&frames[1], wakeups);
        outbox.push_message(&frames[2], wakeups);
        let through = frames[2].positioned().map(|(position, _)| *position);
        outbox.replayed_through(through.expect("positioned"));
        // Routed late: still a copy of a replayed one.
        outbox.push_message(&frames[2], wakeups);
        outbox.push_message(&frames[3], wakeups);
        // Past the replay, nothing is held back any more.
        outbox.push_message(&frames[4], wakeups);
        let sent: Vec<String> = queued(&outbox).await;
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert!(sent[0].ends_with(r#""message": 3}"#), "{sent:?}");
        assert!(sent[1].ends_with(r#""message": 4}"#), "{sent:?}");
        assert!(outbox.state.lock().replayed_through.is_none());
    }
}
