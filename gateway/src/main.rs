//! The `gateway` binary; everything lives in the library so tests run the same code.

fn main() -> std::process::ExitCode {
    gateway::cli::run()
}
