//! Socket: the life of one accepted WebSocket after the handshake.
//!
//! One task per socket moves frames from its outbox to the client, answers and
//! sends pings, drops a peer that stops answering, closes when the token
//! expires (4002) unless the client refreshed it in-band, limits how fast the
//! client may talk (4007), and closes with the code the outbox or the
//! protocol calls for. A refreshed token also brings the socket's groups in
//! line with what it grants (`groups` decides which, as at the handshake):
//! the socket joins the new ones and leaves the dropped ones, locally and
//! in Redis, before the reply. When the task ends, the socket's
//! `Membership` guard removes it from the registry and from its groups, and
//! every frame the socket never sent is counted as a drop, by why it
//! closed. It must not decode Redis payloads or make up group rules.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use actix_http::ws::CloseReason;
use bytestring::ByteString;
use shared_proto::close::CloseCode;
use shared_proto::frame::{parse_client_frame, ClientFrame};
use tokio::time::{interval_at, timeout, Instant, MissedTickBehavior};
use tracing::Instrument;

use crate::auth::groups::{GroupChange, GroupPolicy};
use crate::auth::verify::TokenVerifier;
use crate::edge::drain::reason_with_hint;
use crate::edge::frames::{Inbound, InboundError};
use crate::edge::limits::{Admission, TokenBucket};
use crate::edge::transport::Transport;
use crate::layer::Layer;
use crate::ops::metrics::{DropReason, Metrics};
use crate::relay::outbox::{CloseNote, Next, Outbox, Unsent};
use crate::relay::registry::{ConnId, Registry};

pub struct SocketSettings {
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    /// Client frames per second and burst before the socket is closed (4007).
    pub inbound_rate: f64,
    pub inbound_burst: f64,
    /// Checks in-band refreshed tokens.
    pub verifier: Arc<TokenVerifier>,
    /// Seconds of clock skew tolerated on a token's `exp`.
    pub leeway: u64,
    /// Which groups a refreshed token's socket belongs to.
    pub groups: Arc<GroupPolicy>,
    /// How long a refresh waits for Redis to take the groups it adds.
    pub join_timeout: Duration,
}

/// The verified identity this socket speaks for, kept to enforce its expiry.
pub struct Holder {
    pub user_id: String,
    pub expires_at: u64,
}

/// Membership of one socket in the registry and its groups; dropping it
/// undoes both, whichever way the socket ends.
pub struct Membership {
    pub conn: ConnId,
    pub channel: String,
    /// The groups the socket is in now, its user's first; what the drop
    /// leaves.
    pub groups: Vec<Arc<str>>,
    pub registry: Arc<Registry>,
    pub layer: Arc<Layer>,
    pub metrics: Arc<Metrics>,
    /// This socket's share of the limits, given back when it ends.
    pub _admission: Admission,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.registry.unregister(self.conn, &self.groups);
        self.layer
            .leave(&self.groups, std::mem::take(&mut self.channel));
        self.metrics.sockets_open.dec();
    }
}

impl Membership {
    /// Moves the socket into `wanted` (its user's group first, as before):
    /// the registry and this guard change at once, so routing by group
    /// stops for the groups left and the guard's exit leaves exactly
    /// `wanted`; then Redis is told. Resolves once Redis holds the groups
    /// joined, and on the core layer the leaves too (its writer takes
    /// operations in order, and the join is queued after them). A join
    /// Redis did not take is logged, and stays in the registry for the
    /// layer's own repair (re-adds, subscription retries) to write.
    async fn regroup(&mut self, wanted: Vec<Arc<str>>, join_timeout: Duration) {
        let change = GroupChange::between(&self.groups, &wanted);
        if change.is_empty() {
            return;
        }
        self.registry.join_groups(self.conn, &change.joined);
        self.registry.leave_groups(self.conn, &change.left);
        self.groups = wanted;
        if !change.left.is_empty() {
            self.layer.leave(&change.left, self.channel.clone());
        }
        let joined = timeout(join_timeout, self.layer.join(&change.joined, &self.channel)).await;
        let names = |groups: &[Arc<str>]| groups.join(",");
        match joined {
            Ok(Ok(())) => tracing::info!(
                joined = %names(&change.joined),
                left = %names(&change.left),
                "groups changed by a token refresh"
            ),
            Ok(Err(error)) => tracing::warn!(
                %error,
                joined = %names(&change.joined),
                left = %names(&change.left),
                "group join on a token refresh failed; the layer retries it"
            ),
            Err(_) => tracing::warn!(
                joined = %names(&change.joined),
                left = %names(&change.left),
                "group join on a token refresh timed out; the layer retries it"
            ),
        }
    }
}

/// Why the socket ended, for the log line.
#[derive(Debug)]
enum Ending {
    ClientClosed,
    ConnectionLost,
    Closed(CloseCode, CloseNote),
}

/// Serves one socket until it ends, then undoes its membership. The
/// `preface` (a recovering socket's replayed messages and status) goes out
/// first, before the receiver may write to the connection.
pub(crate) async fn serve<T: Transport>(
    mut transport: T,
    outbox: Arc<Outbox>,
    membership: Membership,
    settings: Arc<SocketSettings>,
    holder: Holder,
    preface: Vec<ByteString>,
) {
    if !preface.is_empty()
        && !Box::pin(send_preface(
            &mut transport,
            &membership.metrics,
            &settings,
            preface,
        ))
        .await
    {
        tracing::info!(ending = ?Ending::ConnectionLost, "socket closed");
        let metrics = Arc::clone(&membership.metrics);
        drop(membership);
        count_unsent(&metrics, outbox.take_unsent());
        return;
    }
    if let Some(wire) = transport.wire() {
        outbox.attach_wire(wire);
    }
    let mut membership = membership;
    let metrics = Arc::clone(&membership.metrics);
    let ending = run(
        transport,
        &outbox,
        &mut membership,
        &metrics,
        &settings,
        holder,
    )
    .await;
    outbox.retire_wire();
    tracing::info!(?ending, "socket closed");
    // Out of the registry first: after that nothing can push to it.
    drop(membership);
    count_unsent(&metrics, outbox.take_unsent());
}

/// Writes a recovering socket's preface (paced by the connection, not
/// queued: a replay may be longer than the outbox); `false` if the
/// connection did not take it in time.
async fn send_preface<T: Transport>(
    transport: &mut T,
    metrics: &Metrics,
    settings: &SocketSettings,
    preface: Vec<ByteString>,
) -> bool {
    match timeout(settings.pong_timeout, transport.send_texts(&preface, 0)).await {
        Ok(Ok(())) => {
            metrics.frames_delivered.inc_by(preface.len() as u64);
            true
        }
        Ok(Err(_)) | Err(_) => {
            metrics.dropped_many(DropReason::SocketClosed, preface.len() as u64);
            false
        }
    }
}

/// Counts the frames a socket never sent: those its close discarded under
/// the close's reason, those still queued as `socket_closed`.
pub(crate) fn count_unsent(metrics: &Metrics, unsent: Unsent) {
    if unsent.discarded > 0 {
        let reason = match &unsent.close {
            Some((_, CloseNote::RetryAfter(_))) => DropReason::Draining,
            Some((_, CloseNote::Reason(_))) => DropReason::BackendDisconnect,
            Some((CloseCode::SlowConsumer, _)) => DropReason::SlowConsumer,
            _ => DropReason::SocketClosed,
        };
        metrics.dropped_many(reason, unsent.discarded as u64);
    }
    if unsent.left > 0 {
        metrics.dropped_many(DropReason::SocketClosed, unsent.left as u64);
    }
}

/// Serves one socket on a task of its own (drivers whose connection
/// lives elsewhere, like actix-ws's).
pub(crate) fn spawn<T: Transport + 'static>(
    transport: T,
    outbox: Arc<Outbox>,
    membership: Membership,
    settings: Arc<SocketSettings>,
    holder: Holder,
    preface: Vec<ByteString>,
    span: tracing::Span,
) {
    actix_web::rt::spawn(
        serve(transport, outbox, membership, settings, holder, preface).instrument(span),
    );
}

async fn run<T: Transport>(
    mut transport: T,
    outbox: &Outbox,
    membership: &mut Membership,
    metrics: &Metrics,
    settings: &SocketSettings,
    mut holder: Holder,
) -> Ending {
    let mut inbound = InboundBudget::new(settings);
    let expiry = tokio::time::sleep_until(expiry_instant(holder.expires_at, settings.leeway));
    tokio::pin!(expiry);
    let mut pings = interval_at(
        Instant::now() + settings.ping_interval,
        settings.ping_interval,
    );
    pings.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    // A client that stops reading would otherwise park this task forever on
    // a full socket buffer; past the pong timeout it counts as gone.
    let send_timeout = settings.pong_timeout;
    // Frames taken from the outbox, reused from one wake-up to the next.
    let mut batch = VecDeque::new();

    let ending = loop {
        tokio::select! {
            next = outbox.next(&mut batch) => match next {
                Next::Frames { first_sent } => {
                    match timeout(send_timeout, transport.send_texts(batch.make_contiguous(), first_sent)).await {
                        Ok(Ok(())) => {
                            outbox.release_wire();
                            metrics.frames_delivered.inc_by(batch.len() as u64);
                        }
                        Ok(Err(_)) | Err(_) => {
                            // None of the batch is known to have arrived.
                            metrics.dropped_many(DropReason::SocketClosed, batch.len() as u64);
                            return Ending::ConnectionLost;
                        }
                    }
                }
                Next::Close(code, note) => break Ending::Closed(code, note),
            },
            () = &mut expiry => break Ending::Closed(CloseCode::TokenExpired, CloseNote::Standard),
            message = transport.recv() => {
                last_heard = Instant::now();
                // Every message a client sends costs a turn of this loop on
                // a socket thread: pongs (a browser sends one per ping) are
                // under the same budget.
                if message.as_ref().is_some_and(|message| !inbound.spend(message)) {
                    break Ending::Closed(CloseCode::RateLimited, CloseNote::Standard);
                }
                match message {
                    None => return Ending::ConnectionLost,
                    Some(Ok(Inbound::Ping(bytes))) => {
                        if !send_own_in_time(&mut transport, outbox, metrics, OwnFrame::Pong(&bytes), send_timeout).await {
                            return Ending::ConnectionLost;
                        }
                    }
                    Some(Ok(Inbound::Pong(_))) => {}
                    Some(Ok(Inbound::Text(text))) => {
                        metrics.client_frames.inc();
                        // Boxed: a refresh may fetch keys, and that future
                        // would otherwise be part of every idle socket's
                        // task (2,752 bytes instead of 1,392).
                        let reply = match Box::pin(handle_client_text(&text, settings, &mut holder, membership)).await {
                            ClientTextOutcome::Ignored => continue,
                            ClientTextOutcome::Reply(reply) => reply,
                            ClientTextOutcome::Refreshed(reply) => {
                                expiry
                                    .as_mut()
                                    .reset(expiry_instant(holder.expires_at, settings.leeway));
                                reply
                            }
                            ClientTextOutcome::End(ending) => break ending,
                        };
                        if !send_own_in_time(&mut transport, outbox, metrics, OwnFrame::Text(&reply), send_timeout).await {
                            return Ending::ConnectionLost;
                        }
                    }
                    Some(Ok(Inbound::Binary(_))) => {
                        metrics.client_frames.inc();
                        break Ending::Closed(CloseCode::UnsupportedData, CloseNote::Standard);
                    }
                    Some(Ok(Inbound::Close(frame))) => {
                        // Echo the close with the client's code, as RFC
                        // 6455 §5.5.1 asks, then stop.
                        let echo = frame.map(|frame| CloseReason {
                            code: actix_http::ws::CloseCode::Other(frame.code),
                            description: None,
                        });
                        send_close_in_time(&mut transport, outbox, metrics, echo, send_timeout).await;
                        return Ending::ClientClosed;
                    }
                    Some(Err(InboundError::Violation(violation))) => {
                        break Ending::Closed(violation.close_code(), CloseNote::Standard);
                    }
                    Some(Err(InboundError::Lost(_))) => return Ending::ConnectionLost,
                }
            }
            _ = pings.tick() => {
                if last_heard.elapsed() > settings.pong_timeout {
                    break Ending::Closed(CloseCode::PingTimeout, CloseNote::Standard);
                }
                if !send_own_in_time(&mut transport, outbox, metrics, OwnFrame::Ping, send_timeout).await {
                    return Ending::ConnectionLost;
                }
            }
        }
    };
    if let Ending::Closed(code, note) = &ending {
        let close = close_reason(*code, note);
        send_close_in_time(&mut transport, outbox, metrics, Some(close), send_timeout).await;
    }
    ending
}

/// The close frame for `code` with the reason `note` gives.
pub(crate) fn close_reason(code: CloseCode, note: &CloseNote) -> CloseReason {
    let description = match note {
        CloseNote::Standard => code.reason().to_string(),
        CloseNote::RetryAfter(retry_after) => reason_with_hint(code, *retry_after),
        CloseNote::Reason(reason) => reason.to_string(),
    };
    CloseReason {
        code: actix_http::ws::CloseCode::Other(code.as_u16()),
        // The close frame's payload limit; actix would cut it too.
        description: Some(truncate_reason(description)),
    }
}

/// A socket's inbound budget (`limits.inbound_rate`): every message but a
/// close spends from it, pings and pongs too, before its token and after.
pub(crate) struct InboundBudget {
    /// None when no rate is set.
    bucket: Option<TokenBucket>,
}

impl InboundBudget {
    pub(crate) fn new(settings: &SocketSettings) -> InboundBudget {
        InboundBudget {
            bucket: (settings.inbound_rate > 0.0)
                .then(|| TokenBucket::new(settings.inbound_rate, settings.inbound_burst)),
        }
    }

    /// Spends for `message`; false when it goes over the budget.
    pub(crate) fn spend<E>(&mut self, message: &Result<Inbound, E>) -> bool {
        match (&mut self.bucket, message) {
            (Some(bucket), Ok(inbound)) if !matches!(inbound, Inbound::Close(_)) => {
                bucket.try_take(std::time::Instant::now())
            }
            _ => true,
        }
    }
}

/// A frame of the socket task's own, besides the outbox's.
enum OwnFrame<'a> {
    Ping,
    Pong(&'a [u8]),
    Text(&'a str),
}

/// Whether a frame of the task's own was written within `limit`. Boxed,
/// like every rare path of the socket loop: inline, this future (a timer and
/// two writes) would be part of every idle socket's task.
async fn send_own_in_time<T: Transport>(
    transport: &mut T,
    outbox: &Outbox,
    metrics: &Metrics,
    frame: OwnFrame<'_>,
    limit: Duration,
) -> bool {
    let sending = Box::pin(timeout(limit, send_own(transport, outbox, metrics, frame)));
    matches!(sending.await, Ok(Ok(())))
}

/// [`send_close`] within `limit`; boxed for the same reason.
async fn send_close_in_time<T: Transport>(
    transport: &mut T,
    outbox: &Outbox,
    metrics: &Metrics,
    reason: Option<CloseReason>,
    limit: Duration,
) {
    let _ = Box::pin(timeout(
        limit,
        send_close(transport, outbox, metrics, reason),
    ))
    .await;
}

/// Writes a frame of the task's own under a claim on the wire, so no
/// frame of the outbox can be written in the middle of it.
async fn send_own<T: Transport>(
    transport: &mut T,
    outbox: &Outbox,
    metrics: &Metrics,
    frame: OwnFrame<'_>,
) -> io::Result<()> {
    finish_pushed_frame(transport, outbox, metrics).await?;
    match frame {
        OwnFrame::Ping => transport.ping().await?,
        OwnFrame::Pong(payload) => transport.pong(payload).await?,
        OwnFrame::Text(text) => transport.send_text(text).await?,
    }
    outbox.release_wire();
    Ok(())
}

/// Writes the close frame; the claim on the wire is never given back, so
/// nothing follows the close.
async fn send_close<T: Transport>(
    transport: &mut T,
    outbox: &Outbox,
    metrics: &Metrics,
    reason: Option<CloseReason>,
) {
    if finish_pushed_frame(transport, outbox, metrics)
        .await
        .is_ok()
    {
        transport.close(reason).await;
    }
}

/// Claims the wire, first finishing a frame the receiver left partly
/// written.
async fn finish_pushed_frame<T: Transport>(
    transport: &mut T,
    outbox: &Outbox,
    metrics: &Metrics,
) -> io::Result<()> {
    if let Some((frame, sent)) = outbox.claim_wire() {
        let unfinished = Unfinished(Some(metrics));
        transport
            .send_texts(std::slice::from_ref(&frame), sent)
            .await?;
        unfinished.finished();
        metrics.frames_delivered.inc();
    }
    Ok(())
}

/// A half-written frame being finished: counted as dropped if its write
/// fails or is given up on (the timeout drops the future mid-write).
struct Unfinished<'a>(Option<&'a Metrics>);

impl Unfinished<'_> {
    fn finished(mut self) {
        self.0 = None;
    }
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if let Some(metrics) = self.0 {
            metrics.dropped(DropReason::SocketClosed);
        }
    }
}

/// At most 123 bytes (the close frame's limit), cut at a character boundary.
fn truncate_reason(mut reason: String) -> String {
    if reason.len() > 123 {
        let mut end = 123;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

/// When a token that expires at `expires_at` (UNIX seconds) stops counting.
fn expiry_instant(expires_at: u64, leeway: u64) -> Instant {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0);
    let remaining = expires_at.saturating_add(leeway).saturating_sub(now);
    // Far-future expiries are capped: a sleep that long is the same as none.
    Instant::now() + Duration::from_secs(remaining.min(10 * 365 * 24 * 3600))
}

enum ClientTextOutcome {
    Ignored,
    Reply(String),
    /// The token was refreshed (`holder` holds its expiry); the reply says so.
    Refreshed(String),
    End(Ending),
}

/// The Channels consumer ignored whatever clients sent; so does the gateway,
/// except an application-level ping browsers use to test liveness and an
/// in-band token refresh that keeps the socket past its token's expiry.
async fn handle_client_text(
    text: &str,
    settings: &SocketSettings,
    holder: &mut Holder,
    membership: &mut Membership,
) -> ClientTextOutcome {
    let forbidden =
        || ClientTextOutcome::End(Ending::Closed(CloseCode::Forbidden, CloseNote::Standard));
    match parse_client_frame(text) {
        Ok(ClientFrame::Ping) => ClientTextOutcome::Reply(r#"{"type": "pong"}"#.to_string()),
        Ok(ClientFrame::Refresh { token }) => {
            let identity = match settings.verifier.verify_fetching(&token).await {
                Ok(identity) => identity,
                Err(_) => {
                    return ClientTextOutcome::End(Ending::Closed(
                        CloseCode::Unauthorized,
                        CloseNote::Standard,
                    ))
                }
            };
            // The same user only: a refresh must not switch identities.
            if identity.user_id != holder.user_id {
                return forbidden();
            }
            // The handshake's rule: a token asking for a group no pattern
            // allows is refused whole, as it would be on a reconnect.
            let Ok(groups) = settings.groups.groups_for(&identity) else {
                return forbidden();
            };
            // Joined before the reply, as the handshake joins before the
            // 101: what is sent to a new group after the reply arrives.
            membership.regroup(groups, settings.join_timeout).await;
            holder.expires_at = identity.expires_at;
            ClientTextOutcome::Refreshed(format!(
                r#"{{"type": "refreshed", "expires_at": {}}}"#,
                identity.expires_at
            ))
        }
        Ok(_) | Err(_) => ClientTextOutcome::Ignored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::outbox::Wakeups;
    use bytestring::ByteString;

    /// Records what the socket task writes, in order.
    #[derive(Default)]
    struct Recorder {
        written: Vec<String>,
        /// Frame writes fail, as on a connection that went away.
        broken: bool,
    }

    impl Transport for Recorder {
        async fn send_texts(&mut self, frames: &[ByteString], first_sent: usize) -> io::Result<()> {
            if self.broken {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            let mut from = first_sent;
            for frame in frames {
                self.written.push(format!("{frame} from byte {from}"));
                from = 0;
            }
            Ok(())
        }
        async fn send_text(&mut self, text: &str) -> io::Result<()> {
            self.written.push(text.to_string());
            Ok(())
        }
        async fn ping(&mut self) -> io::Result<()> {
            self.written.push("ping".into());
            Ok(())
        }
        async fn pong(&mut self, _: &[u8]) -> io::Result<()> {
            self.written.push("pong".into());
            Ok(())
        }
        async fn close(&mut self, _: Option<CloseReason>) {
            self.written.push("close".into());
        }
        async fn recv(&mut self) -> Option<Result<Inbound, InboundError>> {
            std::future::pending().await
        }
    }

    /// An outbox whose first frame the receiver's write left two bytes
    /// into.
    fn half_written(frames: &[&str]) -> Arc<Outbox> {
        crate::relay::outbox::test_wire::given_to_wire(2, frames)
    }

    #[tokio::test]
    async fn the_tasks_own_frames_wait_for_a_frame_a_push_left_half_written() {
        let outbox = half_written(&["abcd", "ef"]);
        let metrics = Metrics::new();
        let mut transport = Recorder::default();
        send_own(&mut transport, &outbox, &metrics, OwnFrame::Ping)
            .await
            .expect("sent");
        send_own(&mut transport, &outbox, &metrics, OwnFrame::Text("reply"))
            .await
            .expect("sent");
        assert_eq!(transport.written, ["abcd from byte 2", "ping", "reply"]);
        assert_eq!(metrics.frames_delivered.get(), 1);
        assert_eq!(
            outbox.len(),
            1,
            "the next frame stays for the outbox's batch"
        );
    }

    #[tokio::test]
    async fn a_close_follows_the_half_written_frame() {
        let outbox = half_written(&["abcd", "ef"]);
        outbox.close(CloseCode::SlowConsumer);
        let metrics = Metrics::new();
        let mut transport = Recorder::default();
        send_close(&mut transport, &outbox, &metrics, None).await;
        assert_eq!(transport.written, ["abcd from byte 2", "close"]);
        assert_eq!(
            outbox.push("late".into(), &mut Wakeups::new()),
            crate::relay::outbox::Pushed::Closed
        );
    }

    fn drops(metrics: &Metrics, reason: &str) -> f64 {
        let needle = format!("gateway_drops_total{{reason=\"{reason}\"}} ");
        metrics
            .render()
            .lines()
            .find_map(|line| line.strip_prefix(needle.as_str()))
            .and_then(|value| value.parse().ok())
            .unwrap_or(0.0)
    }

    #[tokio::test]
    async fn a_half_written_frame_the_connection_loses_is_counted() {
        let outbox = half_written(&["abcd", "ef"]);
        let metrics = Metrics::new();
        let mut transport = Recorder {
            broken: true,
            ..Recorder::default()
        };
        send_close(&mut transport, &outbox, &metrics, None).await;
        assert_eq!(drops(&metrics, "socket_closed"), 1.0);
        assert_eq!(metrics.frames_delivered.get(), 0);
    }

    #[test]
    fn unsent_frames_are_counted_by_why_the_socket_closed() {
        let metrics = Metrics::new();
        let unsent = |discarded, close, left| Unsent {
            discarded,
            close,
            left,
        };
        count_unsent(
            &metrics,
            unsent(3, Some((CloseCode::SlowConsumer, CloseNote::Standard)), 0),
        );
        count_unsent(
            &metrics,
            unsent(
                5,
                Some((
                    CloseCode::GoingAway,
                    CloseNote::RetryAfter(Duration::from_secs(1)),
                )),
                1,
            ),
        );
        count_unsent(
            &metrics,
            unsent(
                7,
                Some((
                    CloseCode::DisconnectedByBackend,
                    CloseNote::Reason("bye".into()),
                )),
                0,
            ),
        );
        count_unsent(&metrics, unsent(0, None, 2));
        assert_eq!(drops(&metrics, "slow_consumer"), 3.0);
        assert_eq!(drops(&metrics, "draining"), 5.0);
        assert_eq!(drops(&metrics, "backend_disconnect"), 7.0);
        assert_eq!(drops(&metrics, "socket_closed"), 3.0);
    }

    /// Reads one unmasked server frame: its opcode and payload.
    async fn read_frame(client: &mut tokio::net::TcpStream) -> (u8, Vec<u8>) {
        use tokio::io::AsyncReadExt;
        let mut head = [0u8; 2];
        client.read_exact(&mut head).await.expect("frame head");
        let len = match head[1] & 0x7f {
            126 => u64::from(client.read_u16().await.expect("length")),
            127 => client.read_u64().await.expect("length"),
            short => u64::from(short),
        };
        let mut payload = vec![0u8; usize::try_from(len).expect("length fits")];
        client.read_exact(&mut payload).await.expect("payload");
        (head[0] & 0x0f, payload)
    }

    /// Frame `n` of the concurrent test: its number first, then a length
    /// that cycles from a few bytes to more than a socket buffer holds, so
    /// the receiver's writes stop mid-frame and the task must finish them.
    fn numbered(n: usize) -> ByteString {
        let filler = [3, 200, 5_000, 70_000][n % 4];
        ByteString::from(format!("{n:06}:{}", "x".repeat(filler)))
    }

    /// The receiver (another thread, writing whole runs through the wire)
    /// and the socket task (batches, and pings of its own under a claim)
    /// write one TCP connection at the same time, many times over: every
    /// frame arrives whole, once, in order, with the pings between frames.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_receiver_and_the_task_write_one_connection_concurrently_without_tearing() {
        use crate::edge::transport::{DirectTransport, SharedTcp};
        use tokio::io::AsyncWriteExt;
        const ROUNDS: usize = 12;
        const FRAMES: usize = 400;
        for round in 0..ROUNDS {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let mut client =
                tokio::net::TcpStream::connect(listener.local_addr().expect("address"))
                    .await
                    .expect("connect");
            let (server, _) = listener.accept().await.expect("accept");
            let mut transport =
                DirectTransport::new(SharedTcp::new(server), bytes::BytesMut::new(), 4096);
            let outbox = Arc::new(Outbox::new(FRAMES + 1));
            outbox.attach_wire(transport.wire().expect("plain TCP is shared"));

            let receiver = std::thread::spawn({
                let outbox = outbox.clone();
                move || {
                    let mut n = 0;
                    while n < FRAMES {
                        let mut wakeups = Wakeups::new();
                        for _ in 0..=(n + round) % 5 {
                            if n < FRAMES {
                                outbox.push(numbered(n), &mut wakeups);
                                n += 1;
                            }
                        }
                        wakeups.wake_all();
                        std::thread::yield_now();
                    }
                }
            });
            let task = tokio::spawn({
                let outbox = outbox.clone();
                async move {
                    let metrics = Metrics::new();
                    let mut batch = VecDeque::new();
                    let mut pings = 0usize;
                    loop {
                        tokio::select! {
                            next = outbox.next(&mut batch) => match next {
                                Next::Frames { first_sent } => {
                                    transport
                                        .send_texts(batch.make_contiguous(), first_sent)
                                        .await
                                        .expect("batch written");
                                    outbox.release_wire();
                                }
                                Next::Close(..) => break,
                            },
                            () = tokio::time::sleep(Duration::from_micros(300)) => {
                                send_own(&mut transport, &outbox, &metrics, OwnFrame::Ping)
                                    .await
                                    .expect("ping written");
                                pings += 1;
                            }
                        }
                    }
                    let _ = transport.close(None).await;
                    pings
                }
            });

            let mut next = 0;
            let mut pings_read = 0;
            while next < FRAMES {
                let (opcode, payload) = read_frame(&mut client).await;
                if opcode == 0x9 {
                    pings_read += 1;
                    continue;
                }
                assert_eq!(opcode, 0x1, "round {round}: a text frame");
                let expected = numbered(next);
                assert!(
                    payload[..] == expected.as_bytes()[..],
                    "round {round}: frame {next} arrived whole and in order (got {} bytes \
                     starting {:?})",
                    payload.len(),
                    String::from_utf8_lossy(&payload[..payload.len().min(12)])
                );
                next += 1;
                if next % 50 == 0 {
                    // A reader that pauses now and then: the buffers fill.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            receiver.join().expect("receiver thread");
            outbox.close(CloseCode::Normal);
            let pings = task.await.expect("task");
            // Whatever pings went out before the close arrive whole, then
            // the close frame.
            loop {
                let (opcode, payload) = read_frame(&mut client).await;
                match opcode {
                    0x9 => pings_read += 1,
                    0x8 => break,
                    other => panic!("round {round}: unexpected opcode {other} ({payload:?})"),
                }
            }
            assert_eq!(pings_read, pings, "round {round}: every ping arrived whole");
            let _ = client.shutdown().await;
        }
    }
}
