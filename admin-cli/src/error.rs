//! Why a command failed, and the one place failures become exit codes.
//!
//! | exit | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | the cluster refused (a catalogue error: unknown LUN, shrink, mapped LUN, …), or a local operation failed (`weft cert`) |
//! | 2 | the command line was wrong: usage, a bad size, EC profile or IQN, a destructive command without `--yes` |
//! | 3 | the cluster could not be asked: no config, a broken config or certificate, no replica answered |

use std::path::Path;

use fabric::metadata::client::MetaClientError;
use fabric::metadata::rpc::MetaError;
use fabric::metadata::CatalogueError;

use crate::config::ConfigError;

pub const EXIT_OK: i32 = 0;
pub const EXIT_REFUSED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_UNREACHABLE: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The metadata answered no.
    #[error("{}", refused_message(.0))]
    Refused(MetaError),
    /// What the catalogue holds says no, as read by the CLI (e.g. unmapping
    /// by name a LUN the target does not map).
    #[error("{0}")]
    Rejected(String),
    /// The command line asks for something that cannot be right.
    #[error("{0}")]
    Usage(String),
    /// No config, or it cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The config is there but the cluster could not be asked.
    #[error("{0}")]
    Unreachable(String),
    /// A local operation failed (files, certificates).
    #[error("{0:#}")]
    Failed(#[from] anyhow::Error),
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Refused(_) | CliError::Rejected(_) | CliError::Failed(_) => EXIT_REFUSED,
            CliError::Usage(_) => EXIT_USAGE,
            CliError::Config(_) | CliError::Unreachable(_) => EXIT_UNREACHABLE,
        }
    }

    /// The error from a metadata call, with what to check when nothing
    /// answered (`config` names the file the endpoints came from).
    pub fn from_client(e: MetaClientError, config: &Path) -> CliError {
        match e {
            MetaClientError::Meta(m) => CliError::Refused(m),
            MetaClientError::Unreachable {
                waited_ms,
                tried,
                last,
            } => CliError::Unreachable(unreachable_message(waited_ms, &tried, &last, config)),
            MetaClientError::NoEndpoints => CliError::Unreachable(format!(
                "{} lists no [[cluster.endpoints]]",
                config.display()
            )),
        }
    }
}

/// Nothing answered: what was tried, the last failure, what to check.
fn unreachable_message(waited_ms: u64, tried: &str, last: &str, config: &Path) -> String {
    let tls_hint = if last.contains("TLS") {
        "; a TLS failure: each endpoint's node must be the node id in that chunkserver's certificate, and ca.crt in cert_dir must be the cluster's CA"
    } else {
        ""
    };
    format!(
        "cannot reach the cluster: no answer from the metadata within {} (tried {tried}; last error: {last}); check that those chunkservers are running, that most metadata voters are up, and that [[cluster.endpoints]] in {} gives their node ids and [fabric] listen addresses{tls_hint}",
        crate::units::format_ms(waited_ms),
        config.display()
    )
}

/// The metadata's message, with sizes in the units the operator typed
/// them in (the catalogue speaks bytes) and a hint where a certificate is
/// the problem.
fn refused_message(e: &MetaError) -> String {
    use crate::units::format_size as size;
    match e {
        MetaError::Forbidden(why) => format!(
            "forbidden: {why}: changes need an admin certificate in cert_dir (weft cert issue --role admin)"
        ),
        MetaError::Catalogue(CatalogueError::ShrinkRefused { name, from, to }) => format!(
            "LUN {name:?} is {}; shrinking it to {} would destroy data, so only growing is allowed",
            size(*from),
            size(*to)
        ),
        MetaError::Catalogue(CatalogueError::LunTooLarge { size: s, max, k, m }) => format!(
            "a {} LUN can never fit: the cluster holds at most {} of {k}+{m} data (raw capacity × k/(k+m)); add capacity or create a smaller LUN",
            size(*s),
            size(*max)
        ),
        MetaError::Catalogue(CatalogueError::LunSize {
            size: s,
            block_size,
            max,
        }) => format!(
            "LUN size {} ({s} bytes) is invalid: it must be a positive multiple of the block size ({block_size}) and at most {}",
            size(*s),
            size(*max)
        ),
        other => other.to_string(),
    }
}

pub type CliResult<T> = Result<T, CliError>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes in catalogue errors are shown as operators write them.
    #[test]
    fn sizes_in_refusals() {
        let table: &[(CatalogueError, &str)] = &[
            (
                CatalogueError::ShrinkRefused {
                    name: "db".into(),
                    from: 2 << 30,
                    to: 1 << 30,
                },
                "LUN \"db\" is 2 GiB; shrinking it to 1 GiB would destroy data",
            ),
            (
                CatalogueError::LunTooLarge {
                    size: 20 << 30,
                    max: 8 << 30,
                    k: 2,
                    m: 1,
                },
                "a 20 GiB LUN can never fit: the cluster holds at most 8 GiB of 2+1 data",
            ),
            (
                CatalogueError::LunSize {
                    size: 1000,
                    block_size: 512,
                    max: 1 << 50,
                },
                "LUN size 1000 B (1000 bytes) is invalid: it must be a positive multiple of the block size (512) and at most 1 PiB",
            ),
            (
                CatalogueError::NoSuchLun("x".into()),
                "no LUN named \"x\" (weft lun list shows them)",
            ),
        ];
        for (e, want) in table {
            let got = CliError::Refused(e.clone().into()).to_string();
            assert!(got.starts_with(want), "{got}");
            assert_eq!(
                CliError::Refused(e.clone().into()).exit_code(),
                EXIT_REFUSED
            );
        }
    }
}
