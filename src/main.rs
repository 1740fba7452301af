//! The `mqgate` binary: parse the command line and hand off.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = mqgate::cli::Cli::parse();
    match cli.run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
