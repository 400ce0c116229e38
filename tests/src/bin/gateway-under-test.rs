//! The same main as the shipped `gateway` binary (allocator included), built
//! as a bin of this package so integration tests get
//! `CARGO_BIN_EXE_gateway-under-test`.

gateway::jemalloc_allocator!();

fn main() -> std::process::ExitCode {
    gateway::cli::run()
}
