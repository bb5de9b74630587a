//! `hk`: the command line of hk. It is the only place where errors become text for a person
//! (anyhow at this edge, thiserror in the libraries below) and where exit codes are chosen.

mod host;
mod info;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "hk",
    version,
    about = "Run containers, each in its own microVM"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show where hk finds its kernel and whether this host can run VMs
    Info(info::Args),
}

/// Docker and Podman exit with 125 when the failure is the runner's own rather than the
/// container's; hk keeps that convention so scripts written for them keep working.
const EXIT_RUNNER_ERROR: u8 = 125;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(args) => info::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("hk: {err:#}");
            ExitCode::from(EXIT_RUNNER_ERROR)
        }
    }
}
