//! The `mcptap` binary.
use mcptap::cli::{CliError, Command};

fn main() -> std::process::ExitCode {
    let cli = match mcptap::cli::parse(std::env::args_os()) {
        Ok(c) => c,
        Err(CliError::Exit(e)) => e.exit(),
        Err(CliError::Usage(msg)) => {
            eprintln!("mcptap: error: {msg}");
            return std::process::ExitCode::from(2);
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    let result = match &cli.command {
        Some(Command::Replay { file }) => mcptap::run::replay(file, &cli.output),
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
