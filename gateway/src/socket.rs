//! Socket: the life of one accepted WebSocket after the handshake.
//!
//! One task per socket moves frames from its outbox to the client, answers and
//! sends pings, drops a peer that stops answering, closes when the token
//! expires (4002) unless the client refreshed it in-band, limits how fast the
//! client may talk (4007), and closes with the code the outbox or the
//! protocol calls for. When the task ends, the socket's
//! `Membership` guard removes it from the registry and from its groups. It
//! must not decode Redis payloads or decide group membership.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use actix_http::ws::{CloseReason, Message, ProtocolError};
use shared_proto::close::CloseCode;
use shared_proto::frame::{parse_client_frame, ClientFrame};
use tokio::time::{interval_at, timeout, Instant, MissedTickBehavior};
use tracing::Instrument;

use crate::drain::reason_with_hint;
use crate::jwtverify::TokenVerifier;
use crate::layer::Layer;
use crate::limits::{Admission, TokenBucket};
use crate::metrics::Metrics;
use crate::outbox::{CloseNote, Next, Outbox};
use crate::registry::{ConnId, Registry};
use crate::transport::Transport;

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

/// Why the socket ended, for the log line.
#[derive(Debug)]
enum Ending {
    ClientClosed,
    ConnectionLost,
    Closed(CloseCode, CloseNote),
}

/// Serves one socket until it ends, then undoes its membership.
pub(crate) async fn serve<T: Transport>(
    transport: T,
    outbox: Arc<Outbox>,
    membership: Membership,
    settings: Arc<SocketSettings>,
    holder: Holder,
) {
    let ending = run(transport, &outbox, &membership.metrics, &settings, holder).await;
    tracing::info!(?ending, "socket closed");
    drop(membership);
}

/// Serves one socket on a task of its own (drivers whose connection
/// lives elsewhere, like actix-ws's).
pub(crate) fn spawn<T: Transport + 'static>(
    transport: T,
    outbox: Arc<Outbox>,
    membership: Membership,
    settings: Arc<SocketSettings>,
    holder: Holder,
    span: tracing::Span,
) {
    actix_web::rt::spawn(serve(transport, outbox, membership, settings, holder).instrument(span));
}

async fn run<T: Transport>(
    mut transport: T,
    outbox: &Outbox,
    metrics: &Metrics,
    settings: &SocketSettings,
    mut holder: Holder,
) -> Ending {
    let mut inbound = TokenBucket::new(settings.inbound_rate, settings.inbound_burst);
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
                Next::Frames => {
                    match timeout(send_timeout, transport.send_texts(batch.make_contiguous())).await {
                        Ok(Ok(())) => metrics.frames_delivered.inc_by(batch.len() as u64),
                        Ok(Err(_)) | Err(_) => return Ending::ConnectionLost,
                    }
                }
                Next::Close(code, note) => break Ending::Closed(code, note),
            },
            () = &mut expiry => break Ending::Closed(CloseCode::TokenExpired, CloseNote::Standard),
            message = transport.recv() => {
                last_heard = Instant::now();
                let is_data = matches!(
                    message,
                    Some(Ok(Message::Text(_) | Message::Binary(_) | Message::Continuation(_) | Message::Ping(_)))
                );
                if is_data && settings.inbound_rate > 0.0 && !inbound.try_take(std::time::Instant::now()) {
                    break Ending::Closed(CloseCode::RateLimited, CloseNote::Standard);
                }
                match message {
                    None => return Ending::ConnectionLost,
                    Some(Ok(Message::Ping(bytes))) => {
                        if timeout(send_timeout, transport.pong(&bytes)).await.map_or(true, |sent| sent.is_err()) {
                            return Ending::ConnectionLost;
                        }
                    }
                    Some(Ok(Message::Pong(_))) | Some(Ok(Message::Nop)) => {}
                    Some(Ok(Message::Text(text))) => {
                        metrics.client_frames.inc();
                        // Boxed: a refresh may fetch keys, and that future
                        // would otherwise be part of every idle socket's
                        // task (2,752 bytes instead of 1,392).
                        match Box::pin(handle_client_text(&mut transport, &text, settings, &mut holder)).await {
                            ClientTextOutcome::Continue => {}
                            ClientTextOutcome::Refreshed => expiry
                                .as_mut()
                                .reset(expiry_instant(holder.expires_at, settings.leeway)),
                            ClientTextOutcome::End(ending) => break ending,
                        }
                    }
                    Some(Ok(Message::Binary(_))) | Some(Ok(Message::Continuation(_))) => {
                        metrics.client_frames.inc();
                        break Ending::Closed(CloseCode::UnsupportedData, CloseNote::Standard);
                    }
                    Some(Ok(Message::Close(_))) => {
                        // Echo the close as RFC 6455 asks, then stop.
                        let _ = timeout(send_timeout, transport.close(None)).await;
                        return Ending::ClientClosed;
                    }
                    Some(Err(ProtocolError::Overflow)) => {
                        break Ending::Closed(CloseCode::MessageTooBig, CloseNote::Standard);
                    }
                    Some(Err(ProtocolError::Io(_))) => return Ending::ConnectionLost,
                    Some(Err(_)) => break Ending::Closed(CloseCode::PolicyViolation, CloseNote::Standard),
                }
            }
            _ = pings.tick() => {
                if last_heard.elapsed() > settings.pong_timeout {
                    break Ending::Closed(CloseCode::PingTimeout, CloseNote::Standard);
                }
                if timeout(send_timeout, transport.ping()).await.map_or(true, |sent| sent.is_err()) {
                    return Ending::ConnectionLost;
                }
            }
        }
    };
    if let Ending::Closed(code, note) = &ending {
        let description = match note {
            CloseNote::Standard => code.reason().to_string(),
            CloseNote::RetryAfter(retry_after) => reason_with_hint(*code, *retry_after),
            CloseNote::Reason(reason) => reason.to_string(),
        };
        let close = CloseReason {
            code: actix_http::ws::CloseCode::Other(code.as_u16()),
            // The close frame's payload limit; actix would cut it too.
            description: Some(truncate_reason(description)),
        };
        let _ = timeout(send_timeout, transport.close(Some(close))).await;
    }
    ending
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
    Continue,
    Refreshed,
    End(Ending),
}

/// The Channels consumer ignored whatever clients sent; so does the gateway,
/// except an application-level ping browsers use to test liveness and an
/// in-band token refresh that keeps the socket past its token's expiry.
async fn handle_client_text<T: Transport>(
    transport: &mut T,
    text: &str,
    settings: &SocketSettings,
    holder: &mut Holder,
) -> ClientTextOutcome {
    let reply = match parse_client_frame(text) {
        Ok(ClientFrame::Ping) => r#"{"type": "pong"}"#.to_string(),
        Ok(ClientFrame::Refresh { token }) => match settings.verifier.verify_fetching(&token).await
        {
            // The same user only: a refresh must not switch identities.
            Ok(identity) if identity.user_id == holder.user_id => {
                holder.expires_at = identity.expires_at;
                let reply = format!(
                    r#"{{"type": "refreshed", "expires_at": {}}}"#,
                    identity.expires_at
                );
                if transport.send_text(&reply).await.is_err() {
                    return ClientTextOutcome::End(Ending::ConnectionLost);
                }
                return ClientTextOutcome::Refreshed;
            }
            Ok(_) => {
                return ClientTextOutcome::End(Ending::Closed(
                    CloseCode::Forbidden,
                    CloseNote::Standard,
                ))
            }
            Err(_) => {
                return ClientTextOutcome::End(Ending::Closed(
                    CloseCode::Unauthorized,
                    CloseNote::Standard,
                ))
            }
        },
        Ok(_) | Err(_) => return ClientTextOutcome::Continue,
    };
    if transport.send_text(&reply).await.is_err() {
        return ClientTextOutcome::End(Ending::ConnectionLost);
    }
    ClientTextOutcome::Continue
}
