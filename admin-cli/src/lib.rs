//! `weft`: the operator's command line, `weft <noun> <verb>`.
//!
//! - [`config`]: the client config (where the cluster is, which admin
//!   certificate), and [`config::write_client_config`] for `weft up`.
//! - [`session`]: one command's metadata client, and failures mapped to
//!   [`error::CliError`].
//! - [`error`]: the exit codes (0 done, 1 refused, 2 usage, 3 unreachable).
//! - [`cmd`]: one module per noun (`cert`, `lun`, `target`, `node`,
//!   `status`, `top`), and `up` (a whole cluster on one machine); `lun
//!   import|export` live in `cmd::image`.
//! - [`datapath`]: the CLI on the fabric (gossip as an observer, the
//!   volume client) for image import/export, `weft top` and `weft up`'s
//!   status line.
//! - [`terminal`]: `weft top`'s screen and keys.
//! - [`progress`]: the progress bar of long copies.
//! - [`render`], [`units`]: output (`-o text|json`, tables) and human
//!   sizes and durations.
//!
//! The CLI knows the cluster through the metadata API
//! (`fabric::metadata`) and the gossiped soft state (capacity, I/O
//! counters); only `lun import|export` use the data path
//! (`fabric::volume`, with the admin certificate).

pub mod cmd;
pub mod config;
pub mod datapath;
pub mod error;
pub mod progress;
pub mod render;
pub mod session;
pub mod terminal;
pub mod units;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use error::{CliError, EXIT_OK, EXIT_USAGE};

const ABOUT: &str = "weft: manage a weft storage cluster";

const AFTER_HELP: &str = "\
Examples:
  weft up                              a whole cluster on this machine
  weft status
  weft top                             live IOPS, bandwidth, latency
  weft lun create db --size 20G
  weft target create iqn.2026-01.org.example:db
  weft target map iqn.2026-01.org.example:db db
  weft lun list -o json

The cluster is found through --config FILE, else $WEFT_CONFIG, else
~/.config/weft/weft.toml (see docs/cli.md).

Exit codes: 0 done; 1 the cluster refused (the message says why and what to
do); 2 the command line was wrong; 3 the cluster could not be reached (or no
usable config).";

/// weft: manage a weft storage cluster.
#[derive(Parser, Debug)]
#[command(name = "weft", version, about = ABOUT, long_about = None, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes, before or after its name.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Client config (default: $WEFT_CONFIG, else ~/.config/weft/weft.toml).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// How long to keep trying the cluster before giving up with exit 3,
    /// e.g. 5s, 500ms, 2m (default: timeout_ms in the config, else 10s).
    #[arg(long, global = true, value_name = "DURATION", value_parser = units::parse_duration)]
    pub timeout: Option<Duration>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Cluster health at a glance, like `ceph -s`.
    #[command(after_help = "Examples:\n  weft status\n  weft status -o json | jq .health")]
    Status(cmd::status::StatusArgs),
    /// Live IOPS, bandwidth and latency per node and per LUN, like `top`.
    #[command(
        after_help = "Examples:\n  weft top                    redrawn every second; q or Ctrl-C quits\n  weft top --once -o json     one sample for a script\n  weft top -n 10 -d 5s > log  ten samples, five seconds apart\n\nRates are over the nodes' last second (they publish their counters\nin gossip every second while they serve I/O); the first sample comes\nafter 2 s. Nodes are chunkservers (chunk I/O their disks serve) and\ngateways (iSCSI I/O); LUN rows add up the gateways serving them."
    )]
    Top(cmd::top::TopArgs),
    /// LUNs: create, list, show, resize, delete.
    #[command(subcommand)]
    Lun(cmd::lun::LunCommand),
    /// iSCSI targets: their LUN maps, ACLs and CHAP.
    #[command(subcommand)]
    Target(cmd::target::TargetCommand),
    /// Chunkservers: list, show, drain, undrain, remove.
    #[command(subcommand)]
    Node(cmd::node::NodeCommand),
    /// Cluster CA and node certificates (the fabric's mutual TLS).
    #[command(subcommand)]
    Cert(cmd::cert::CertCommand),
    /// A whole cluster on this machine: chunkservers, gateways, LUN demo.
    Up(cmd::up::UpArgs),
}

/// Runs `weft` with `args` (the program name first) and returns the exit
/// code. Errors are one line on stderr: `weft: error: …`.
pub fn run<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let result = match cli.command {
        Command::Status(a) => cmd::status::run(&cli.global, a),
        Command::Top(a) => cmd::top::run(&cli.global, a),
        Command::Lun(c) => cmd::lun::run(&cli.global, c),
        Command::Target(c) => cmd::target::run(&cli.global, c),
        Command::Node(c) => cmd::node::run(&cli.global, c),
        Command::Cert(c) => cmd::cert::run(c).map_err(CliError::Failed),
        Command::Up(a) => cmd::up::run(a),
    };
    match result {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("weft: error: {e}");
            e.exit_code()
        }
    }
}

/// Help and version go to stdout as clap prints them. A value our parsers
/// refuse is one line (`weft: error: invalid value '12Q' for '--size
/// <SIZE>': …`); other usage errors add clap's hints (possible values, the
/// usage line).
fn usage_error(e: clap::Error) -> i32 {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return e.exit_code();
        }
        _ => {}
    }
    let text = e.to_string();
    let mut lines = text.lines();
    let first = lines.next().unwrap_or("invalid command line");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    eprintln!("weft: error: {first}");
    if e.kind() != ErrorKind::ValueValidation {
        for l in lines.filter(|l| !l.trim().is_empty()) {
            eprintln!("{l}");
        }
    }
    EXIT_USAGE
}
