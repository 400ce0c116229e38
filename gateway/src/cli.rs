//! Command line: `serve` (the default), `check-config` and `gen-token`.
//!
//! Parses flags, loads the configuration and hands over to `server`. Exit
//! codes: 0 on success, 2 for a configuration error (the message names the
//! key), 1 when the server fails. It must not hold any gateway logic.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;

#[derive(Parser, Debug)]
#[command(
    name = "gateway",
    version,
    about = "Real-time notification gateway for Django channels_redis backends"
)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, short, env = "GATEWAY_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Override one setting, e.g. `--set layer.prefix=myapp` (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE", global = true)]
    overrides: Vec<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway (default).
    Serve,
    /// Validate the configuration and print it with secrets redacted.
    CheckConfig,
    /// Mint an access token with the configured secret, for trying it out.
    GenToken {
        #[arg(long)]
        user_id: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        lifetime: u64,
    },
}

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref(), &cli.overrides) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("configuration error: {error}");
            return ExitCode::from(2);
        }
    };
    let command = cli.command.unwrap_or(Command::Serve);
    if matches!(command, Command::CheckConfig) {
        // Shown before it is judged, so a refusal can be read against it.
        print!("{}", config.to_redacted_toml());
    }
    let built = match crate::server::build(&config) {
        Ok(built) => built,
        Err(error) => {
            eprintln!("configuration error: {error}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::CheckConfig => {
            eprintln!("configuration is valid");
            ExitCode::SUCCESS
        }
        Command::GenToken { user_id, lifetime } => {
            match crate::auth::mint::mint_access_token(&config.auth, &user_id, lifetime) {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("cannot mint a token: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve => {
            crate::ops::telemetry::init(config.log.format);
            match crate::server::serve(config, built) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!("gateway failed: {error:#}");
                    eprintln!("gateway failed: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
