//! The wire contract between an unchanged Django Channels backend (with
//! `channels_redis`) and the notification gateway, plus the frames the gateway
//! speaks to browsers.
//!
//! This crate owns every byte-level decision: how a payload that
//! `channels_redis` stored in Redis is decoded ([`payload`]), how a channel-layer
//! event is modelled ([`message`]), how values are rendered exactly as Python's
//! `json.dumps` would ([`pyjson`]), which frames go to and come from browsers
//! ([`frame`]), which WebSocket close codes exist and what a client should do
//! after each ([`close`]), how Redis keys and channel names are formed
//! ([`names`]), where a notification stands for a reconnecting client
//! ([`position`]), and which Redis shard a name lives on ([`shard`]).
//!
//! It must not do I/O of any kind: no network, files, environment variables or
//! clock reads. Callers pass in bytes, time and randomness; this crate hands
//! back values, bytes and strings. Decoders must never panic, whatever bytes
//! they are given.

pub mod close;
pub mod encryption;
pub mod frame;
pub mod message;
pub mod names;
pub mod payload;
pub mod position;
pub mod pyjson;
pub mod shard;

pub use close::{CloseCode, CloseCodeInfo, ReconnectAdvice, CLOSE_CODES};
pub use encryption::{DecryptError, Encryption, EncryptionConfigError};
pub use frame::{
    parse_client_frame, render_notification, render_passthrough, ClientFrame, ClientFrameError,
};
pub use message::{
    value_kind, ChannelIter, Channels, ChannelsError, Message, MessageError, NotAChannelName,
    ASGI_CHANNEL_KEY, TYPE_KEY,
};
pub use names::{
    group_key, inflight_key, is_replay_channel, is_valid_channel_name, is_valid_group_name,
    local_part, non_local_part, pubsub_group_channel, queue_key, replay_channel, specific_channel,
    MAX_NAME_LENGTH,
};
pub use payload::route::{ChannelNames, FieldValue, RouteView};
pub use payload::{
    DecodeError, EncodeError, JsonErrorKind, MsgpackErrorKind, PayloadCodec, SerializerFormat,
    UnknownSerializerFormat,
};
pub use position::{positioned_frame, recovery_status_frame, Position, POSITION_LEN};
pub use pyjson::{render_float, render_message, render_str, render_value, RenderError};
pub use shard::{shard_index, shard_index_bytes};

/// Deepest container nesting (maps and arrays, the top-level map counting as
/// one) accepted anywhere in this crate.
///
/// It equals the limit of Python's msgpack C unpacker, so the gateway accepts
/// exactly the msgpack payloads a Python consumer could unpack. It also bounds
/// the recursion of every decoder, encoder and renderer here, which keeps
/// hostile input from exhausting the stack.
pub const MAX_NESTING: usize = 1024;
