//! How the benchmark tools (the load generator, the soak) end: their JSON
//! result written to `--out` or printed, and the exit code. It must not
//! measure anything.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

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
