//! How the benchmark tools (the load generator, the soak) run and end: on
//! a multi-threaded runtime, their JSON result written to `--out` or
//! printed, and the exit code. It must not measure anything.

use std::future::Future;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

/// Runs `work` on a multi-threaded runtime, waits at most `linger` for
/// tasks it left behind, then ends as [`finish`] says.
pub fn run(
    tool: &str,
    out: Option<&Path>,
    linger: Duration,
    work: impl Future<Output = anyhow::Result<serde_json::Value>>,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("{tool}: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(work);
    runtime.shutdown_timeout(linger);
    finish(tool, result, out)
}

/// Writes `result` (a line of JSON) to `out`, or prints it; any failure is
/// reported as `tool: …` on stderr and turns into a failing exit code.
pub fn finish(
    tool: &str,
    result: anyhow::Result<serde_json::Value>,
    out: Option<&Path>,
) -> ExitCode {
    let written = result.and_then(|result| {
        let text = result.to_string();
        match out {
            Some(path) => std::fs::write(path, format!("{text}\n"))
                .with_context(|| format!("writing {}", path.display())),
            None => {
                println!("{text}");
                Ok(())
            }
        }
    });
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{tool}: {err:#}");
            ExitCode::FAILURE
        }
    }
}
