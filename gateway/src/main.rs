//! The `gateway` binary; everything lives in the library so tests run the same code.

gateway::jemalloc_allocator!();

fn main() -> std::process::ExitCode {
    gateway::cli::run()
}
