//! The process's memory allocator: jemalloc, with the settings the
//! benchmarks chose. A binary opts in with [`crate::jemalloc_allocator!`] at its
//! root; the library never installs a global allocator itself, so tools and
//! tests that link it keep their own.
//!
//! Why jemalloc rather than glibc's malloc (measured side by side in
//! `docs/benchmarks.md`): the same memory per idle socket or less; memory
//! freed after a burst of sockets goes back to the system within about a
//! second instead of staying with the process and growing on every connect
//! cycle; and fewer CPU cycles per handshake, where glibc spent them
//! consolidating freed chunks.

pub use tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once at start (`background_thread`: unused dirty
/// pages are purged by jemalloc's own threads, not by whichever request
/// allocates next; decay after a second; no lazy "muzzy" stage).
pub const MALLOC_CONF: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// Installs jemalloc with [`MALLOC_CONF`] as the global allocator of the
/// binary whose root module invokes it.
#[macro_export]
macro_rules! jemalloc_allocator {
    () => {
        #[global_allocator]
        static ALLOCATOR: $crate::ops::allocator::Jemalloc = $crate::ops::allocator::Jemalloc;

        /// Read by jemalloc at start, under its prefixed symbol name.
        #[allow(non_upper_case_globals)]
        #[export_name = "_rjem_malloc_conf"]
        pub static malloc_conf: &[u8] = $crate::ops::allocator::MALLOC_CONF;
    };
}
