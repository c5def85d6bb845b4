//! `weft`: the operator's command line, `weft <noun> <verb>`.
//!
//! Exit codes: 0 success, 1 the command failed (the message says why),
//! 2 the command line was wrong (clap's usage error).

mod cmd;

use clap::{Parser, Subcommand};

/// weft: manage a weft storage cluster.
#[derive(Parser, Debug)]
#[command(name = "weft", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Cluster CA and node certificates (the fabric's mutual TLS).
    #[command(subcommand)]
    Cert(cmd::cert::CertCommand),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Cert(c) => cmd::cert::run(c),
    };
    if let Err(e) = result {
        eprintln!("weft: {e:#}");
        std::process::exit(1);
    }
}
