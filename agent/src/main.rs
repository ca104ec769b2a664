//! The `mcptap` binary.
use clap::Parser as _;

use mcptap::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    let result = match &cli.command {
        Some(Command::Replay { file, output }) => mcptap::run::replay(file, output),
        Some(Command::Floor) => mcptap::run::floor(),
        None => mcptap::run::live(&cli.live, &cli.output),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line, with the cause chain: what failed and what to do.
            eprintln!("mcptap: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
