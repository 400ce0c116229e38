//! Operations: what operators see of the process, and its plumbing.
//!
//! Metrics (a leaf: every label enum lives there), health verdicts, the
//! canary that proves the Redis path end to end, the shutdown signal, log
//! output, the memory allocator, the thread the receiver runs on and the
//! socket threads' priority.
//! Nothing here knows about sockets, tokens or Redis keys.

pub mod allocator;
pub(crate) mod canary;
pub mod clock;
pub mod health;
pub mod metrics;
pub(crate) mod runtime_thread;
pub(crate) mod shutdown;
pub(crate) mod telemetry;
pub(crate) mod thread_priority;
