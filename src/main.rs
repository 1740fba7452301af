//! The `mqgate` binary: parse the command line and hand off.

use clap::Parser;

/// jemalloc, not glibc's malloc (issue #14). A cold reconnect storm fills the cache with small,
/// long-lived device records among short-lived request buffers; glibc's bins fragment under that
/// mix and a quarter of the server's CPU went to `malloc` (`unlink_chunk` alone 11 %). Measured
/// in `bench/RESULTS.md` (session 9): the same storm's server CPU per login 25-27 -> 21 µs, the
/// cached authz path unchanged, RSS per device 3 % higher (240-250 bytes). SQLite's C code keeps
/// the system allocator.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
