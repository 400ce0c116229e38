//! The same one-line main as the shipped `gateway` binary, built as a bin of
//! this package so integration tests get `CARGO_BIN_EXE_gateway-under-test`.

fn main() -> std::process::ExitCode {
    gateway::cli::run()
}
