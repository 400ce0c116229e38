//! `bare-relay`: runs `tests::bare_relay` (the benchmark's floor) as a
//! process of its own, so the load generator measures it exactly as it
//! measures the gateway (process CPU, its own descriptor limit) and it can
//! hold as many sockets as a gateway process. It serves until SIGTERM or
//! SIGINT, then prints what it did as one JSON line on standard output.
//! It owns the process shell only: arguments, the descriptor limit,
//! signals and the one thread the relay runs on.

use anyhow::{Context, Result};
use clap::Parser;
use tests::bare_relay::{serve, RelayOptions};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser, Debug)]
#[command(about = "The benchmark's bare relay, as a process")]
struct Args {
    /// Loopback address to accept WebSocket clients on.
    #[arg(long)]
    listen: std::net::SocketAddr,
    /// The channel layer's Redis (`redis://HOST:PORT` or `HOST:PORT`).
    #[arg(long)]
    redis: String,
    /// HS256 secret of the clients' tokens.
    #[arg(long, env = "LOADGEN_SECRET")]
    secret: String,
    #[arg(long, default_value = "asgi")]
    prefix: String,
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bare-relay: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    rlimit::increase_nofile_limit(u64::MAX).context("raising RLIMIT_NOFILE")?;
    let redis = tests::resp::host_port(&args.redis).to_string();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("runtime")?;
    let local = tokio::task::LocalSet::new();
    let counts = local.block_on(&runtime, async move {
        let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let stop = async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        };
        let options = RelayOptions {
            listen: args.listen,
            redis,
            prefix: args.prefix,
            secret: args.secret,
        };
        serve(options, stop).await
    })?;
    println!(
        "{}",
        serde_json::to_string(&counts).context("printing the counts")?
    );
    Ok(())
}
