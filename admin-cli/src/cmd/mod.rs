//! One module per `weft` noun.

pub mod cert;

/// Output format shared by commands that print data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// For people.
    Text,
    /// For scripts: one JSON document on stdout.
    Json,
}
