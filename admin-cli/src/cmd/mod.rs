//! One module per `weft` noun.

pub mod cert;
pub mod image;
pub mod lun;
pub mod node;
pub mod status;
pub mod target;
pub mod top;
pub mod up;

use crate::error::{CliError, CliResult};
pub use crate::render::Output;

/// Destructive commands need `--yes` (scripts say so explicitly; nobody
/// deletes data by pressing Enter): exit 2 without it.
pub(crate) fn confirm(yes: bool, what: &str) -> CliResult<()> {
    if yes {
        Ok(())
    } else {
        Err(CliError::Usage(format!("{what}: add --yes to confirm")))
    }
}
