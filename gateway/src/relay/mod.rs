//! The relay inside one process: from a channels_redis payload to the
//! outboxes of the sockets it addresses.
//!
//! The router decodes a payload once and renders its frame once (`events`
//! says what each event type becomes), the registry maps channel names and
//! groups to sockets, and each socket's outbox queues the shared frame bytes.
//! It does no I/O and reads no wall clock (callers pass the time in; only
//! `Instant`s time its own waits): the layers feed it, the socket tasks
//! drain it.

pub mod events;
pub mod outbox;
pub mod registry;
pub mod router;
