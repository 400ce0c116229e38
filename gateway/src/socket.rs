//! Socket: the life of one accepted WebSocket after the handshake.
//!
//! One task per socket moves frames from its outbox to the client, answers and
//! sends pings, drops a peer that stops answering, and closes with the code
//! the outbox or the protocol calls for. When the task ends, the socket's
//! `Membership` guard removes it from the registry and from its groups. It
//! must not decode Redis payloads or decide group membership.

use std::sync::Arc;
use std::time::Duration;

use actix_ws::{CloseReason, Message, MessageStream, ProtocolError, Session};
use shared_proto::close::CloseCode;
use shared_proto::frame::{parse_client_frame, ClientFrame};
use tokio::time::{interval_at, timeout, Instant, MissedTickBehavior};
use tracing::Instrument;

use crate::drain::reason_with_hint;
use crate::layer::Layer;
use crate::metrics::Metrics;
use crate::outbox::{Next, Outbox};
use crate::registry::{ConnId, Registry};

pub struct SocketSettings {
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
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
    Closed(CloseCode, Option<Duration>),
}

pub fn spawn(
    session: Session,
    messages: MessageStream,
    outbox: Arc<Outbox>,
    membership: Membership,
    settings: Arc<SocketSettings>,
    span: tracing::Span,
) {
    actix_web::rt::spawn(
        async move {
            let ending = run(session, messages, &outbox, &membership.metrics, &settings).await;
            tracing::info!(?ending, "socket closed");
            drop(membership);
        }
        .instrument(span),
    );
}

async fn run(
    mut session: Session,
    mut messages: MessageStream,
    outbox: &Outbox,
    metrics: &Metrics,
    settings: &SocketSettings,
) -> Ending {
    let mut pings = interval_at(
        Instant::now() + settings.ping_interval,
        settings.ping_interval,
    );
    pings.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    // A client that stops reading would otherwise park this task forever on
    // a full socket buffer; past the pong timeout it counts as gone.
    let send_timeout = settings.pong_timeout;

    let ending = loop {
        tokio::select! {
            next = outbox.next() => match next {
                Next::Frames(frames) => {
                    for frame in frames {
                        match timeout(send_timeout, session.text(frame)).await {
                            Ok(Ok(())) => metrics.frames_delivered.inc(),
                            Ok(Err(_)) | Err(_) => return Ending::ConnectionLost,
                        }
                    }
                }
                Next::Close(code, retry_after) => break Ending::Closed(code, retry_after),
            },
            message = messages.recv() => {
                last_heard = Instant::now();
                match message {
                    None => return Ending::ConnectionLost,
                    Some(Ok(Message::Ping(bytes))) => {
                        if session.pong(&bytes).await.is_err() {
                            return Ending::ConnectionLost;
                        }
                    }
                    Some(Ok(Message::Pong(_))) | Some(Ok(Message::Nop)) => {}
                    Some(Ok(Message::Text(text))) => {
                        metrics.client_frames.inc();
                        if let Some(ending) = handle_client_text(&mut session, &text).await {
                            break ending;
                        }
                    }
                    Some(Ok(Message::Binary(_))) | Some(Ok(Message::Continuation(_))) => {
                        metrics.client_frames.inc();
                        break Ending::Closed(CloseCode::UnsupportedData, None);
                    }
                    Some(Ok(Message::Close(_))) => {
                        // Echo the close as RFC 6455 asks, then stop.
                        let _ = timeout(send_timeout, session.close(None)).await;
                        return Ending::ClientClosed;
                    }
                    Some(Err(ProtocolError::Overflow)) => {
                        break Ending::Closed(CloseCode::MessageTooBig, None);
                    }
                    Some(Err(ProtocolError::Io(_))) => return Ending::ConnectionLost,
                    Some(Err(_)) => break Ending::Closed(CloseCode::PolicyViolation, None),
                }
            }
            _ = pings.tick() => {
                if last_heard.elapsed() > settings.pong_timeout {
                    break Ending::Closed(CloseCode::PingTimeout, None);
                }
                if session.ping(b"").await.is_err() {
                    return Ending::ConnectionLost;
                }
            }
        }
    };
    if let Ending::Closed(code, retry_after) = ending {
        let description = match retry_after {
            Some(retry_after) => reason_with_hint(code, retry_after),
            None => code.reason().to_string(),
        };
        let close = CloseReason {
            code: actix_ws::CloseCode::Other(code.as_u16()),
            description: Some(description),
        };
        let _ = timeout(send_timeout, session.close(Some(close))).await;
    }
    ending
}

/// The Channels consumer ignored whatever clients sent; so does the gateway,
/// except an application-level ping that browsers can use to test liveness.
async fn handle_client_text(session: &mut Session, text: &str) -> Option<Ending> {
    match parse_client_frame(text) {
        Ok(ClientFrame::Ping) => {
            if session.text(r#"{"type": "pong"}"#).await.is_err() {
                return Some(Ending::ConnectionLost);
            }
            None
        }
        Ok(_) | Err(_) => None,
    }
}
