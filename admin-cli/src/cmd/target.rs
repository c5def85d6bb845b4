//! `weft target`: iSCSI targets, their LUN maps, ACLs and CHAP secrets.
//!
//! CHAP secrets should not be typed on the command line (shell history,
//! `ps`): `weft target chap set` also takes them from the environment
//! (`WEFT_CHAP_SECRET`, `WEFT_CHAP_MUTUAL_SECRET`) or from stdin
//! (`--secret-stdin`), and never prints them.

use std::io::BufRead;

use clap::{Args, Subcommand};
use fabric::metadata::catalogue::{ChapSecrets, TARGET_LUNS_MAX};
use fabric::metadata::rpc::Summary;
use fabric::metadata::{CatalogueError, Command, Outcome, Target};
use serde::Serialize;

use super::confirm;
use crate::error::{CliError, CliResult};
use crate::render::OutputArg;
use crate::render::{emit, table, TargetView};
use crate::session::{unexpected_outcome, Session};
use crate::GlobalArgs;

/// The initiator's CHAP secret, when `--secret` is not given.
pub const CHAP_SECRET_ENV: &str = "WEFT_CHAP_SECRET";
/// The target's (mutual) CHAP secret, when `--mutual-secret` is not given.
pub const CHAP_MUTUAL_SECRET_ENV: &str = "WEFT_CHAP_MUTUAL_SECRET";
/// Times `target map` picks the next free number again when another
/// operator took it first.
const MAP_ATTEMPTS_MAX: usize = 3;

#[derive(Subcommand, Debug)]
pub enum TargetCommand {
    /// Create a target (no LUNs, any initiator, no CHAP).
    #[command(after_help = "Example:\n  weft target create iqn.2026-01.org.example:db")]
    Create {
        /// iqn.YYYY-MM.reversed.domain[:name], eui.<16 hex> or naa.<16|32 hex>.
        #[arg(value_parser = parse_iqn)]
        iqn: String,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Delete a target; its LUNs are kept. Initiators logged in to it lose it.
    #[command(after_help = "Example:\n  weft target delete iqn.2026-01.org.example:db --yes")]
    Delete {
        /// The target's iSCSI name (weft target list).
        iqn: String,
        /// Confirm: initiators using the target lose their disks.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        out: OutputArg,
    },
    /// List targets with their LUNs, ACL and CHAP.
    #[command(after_help = "Examples:\n  weft target list\n  weft target list -o json")]
    List {
        #[command(flatten)]
        out: OutputArg,
    },
    /// Show one target.
    #[command(after_help = "Example:\n  weft target show iqn.2026-01.org.example:db")]
    Show {
        /// The target's iSCSI name (weft target list).
        iqn: String,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Map a LUN into a target (at the lowest free LUN number unless --lun).
    #[command(after_help = "Examples:\n  \
        weft target map iqn.2026-01.org.example:db db\n  \
        weft target map iqn.2026-01.org.example:db logs --lun 3")]
    Map {
        /// The target's iSCSI name (weft target list).
        iqn: String,
        /// The LUN's name (weft lun list).
        name: String,
        /// The LUN number initiators see (0–255; default: the lowest free one).
        #[arg(long, value_parser = clap::value_parser!(u16).range(0..i64::from(TARGET_LUNS_MAX)))]
        lun: Option<u16>,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Unmap a LUN number (or a LUN by name) from a target; the LUN is kept.
    #[command(after_help = "Examples:\n  \
        weft target unmap iqn.2026-01.org.example:db 0\n  \
        weft target unmap iqn.2026-01.org.example:db logs")]
    Unmap {
        /// The target's iSCSI name (weft target list).
        iqn: String,
        /// The LUN number, or the LUN's name.
        lun: String,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Which initiators may log in (an empty ACL admits any).
    #[command(subcommand)]
    Acl(AclCommand),
    /// CHAP authentication, one-way or mutual.
    #[command(subcommand)]
    Chap(ChapCommand),
}

#[derive(Subcommand, Debug)]
pub enum AclCommand {
    /// Allow an initiator (once the ACL lists one, only those listed may log in).
    #[command(after_help = "Example:\n  \
        weft target acl add iqn.2026-01.org.example:db iqn.1994-05.com.redhat:host1")]
    Add {
        /// The target's iSCSI name (weft target list).
        iqn: String,
        /// The initiator's iSCSI name (Linux: /etc/iscsi/initiatorname.iscsi).
        #[arg(value_parser = parse_iqn)]
        initiator: String,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Remove an initiator from the ACL.
    #[command(after_help = "Example:\n  \
        weft target acl remove iqn.2026-01.org.example:db iqn.1994-05.com.redhat:host1")]
    Remove {
        /// The target's iSCSI name (weft target list).
        iqn: String,
        initiator: String,
        #[command(flatten)]
        out: OutputArg,
    },
}

#[derive(Subcommand, Debug)]
pub enum ChapCommand {
    /// Require CHAP: one-way, or mutual with --mutual-user.
    ///
    /// Each secret (12–255 bytes) comes from its flag, else from the
    /// environment (WEFT_CHAP_SECRET, WEFT_CHAP_MUTUAL_SECRET), else, with
    /// --secret-stdin, from stdin: one line per secret still missing, the
    /// initiator's first. Secrets on the command line end up in shell
    /// history and in `ps`: prefer the other two.
    #[command(after_help = "Examples:\n  \
        printf '%s\\n' \"$SECRET\" | weft target chap set iqn.2026-01.org.example:db --user host1 --secret-stdin\n  \
        WEFT_CHAP_SECRET=... WEFT_CHAP_MUTUAL_SECRET=... \\\n    \
        weft target chap set iqn.2026-01.org.example:db --user host1 --mutual-user db-target")]
    Set(ChapSetArgs),
    /// Stop requiring CHAP.
    #[command(after_help = "Example:\n  weft target chap clear iqn.2026-01.org.example:db")]
    Clear {
        /// The target's iSCSI name (weft target list).
        iqn: String,
        #[command(flatten)]
        out: OutputArg,
    },
}

#[derive(Args, Debug)]
pub struct ChapSetArgs {
    /// The target's iSCSI name (weft target list).
    pub iqn: String,
    /// The user name the initiator logs in with.
    #[arg(long)]
    pub user: String,
    /// The initiator's secret (visible in shell history: prefer
    /// WEFT_CHAP_SECRET or --secret-stdin).
    #[arg(long)]
    pub secret: Option<String>,
    /// Mutual CHAP: the user name the target answers with.
    #[arg(long)]
    pub mutual_user: Option<String>,
    /// Mutual CHAP: the target's secret (must differ from the initiator's).
    #[arg(long, requires = "mutual_user")]
    pub mutual_secret: Option<String>,
    /// Read the secrets not given otherwise from stdin, one line each.
    #[arg(long)]
    pub secret_stdin: bool,
    #[command(flatten)]
    pub out: OutputArg,
}

/// An iSCSI name as RFC 7143 §4.2.7 has it (checked here so that a typo
/// is a usage error, exit 2, before anything is sent).
pub fn parse_iqn(text: &str) -> Result<String, String> {
    fabric::metadata::names::check_iqn(text)
        .map(|()| text.to_string())
        .map_err(|e| e.to_string())
}

pub fn run(global: &GlobalArgs, cmd: TargetCommand) -> CliResult<()> {
    match cmd {
        TargetCommand::Create { iqn, out } => create(global, iqn, out),
        TargetCommand::Delete { iqn, yes, out } => delete(global, iqn, yes, out),
        TargetCommand::List { out } => list(global, out),
        TargetCommand::Show { iqn, out } => show(global, &iqn, out),
        TargetCommand::Map {
            iqn,
            name,
            lun,
            out,
        } => map(global, iqn, name, lun, out),
        TargetCommand::Unmap { iqn, lun, out } => unmap(global, iqn, &lun, out),
        TargetCommand::Acl(AclCommand::Add {
            iqn,
            initiator,
            out,
        }) => acl(global, iqn, initiator, true, out),
        TargetCommand::Acl(AclCommand::Remove {
            iqn,
            initiator,
            out,
        }) => acl(global, iqn, initiator, false, out),
        TargetCommand::Chap(ChapCommand::Set(a)) => chap_set(global, a),
        TargetCommand::Chap(ChapCommand::Clear { iqn, out }) => {
            let session = Session::open(global)?;
            let t = changed_target(&session, Command::SetChap { iqn, chap: None })?;
            let v = view(&session, &t)?;
            emit(out, &v, || {
                format!("CHAP cleared on {}: initiators log in without it", v.iqn)
            });
            Ok(())
        }
    }
}

fn changed_target(session: &Session, cmd: Command) -> CliResult<Target> {
    let what = cmd.name();
    match session.admin(cmd)? {
        Outcome::Target(t) => Ok(t),
        other => Err(unexpected_outcome(what, &other)),
    }
}

/// The target with its LUNs' names (one more read).
fn view(session: &Session, t: &Target) -> CliResult<TargetView> {
    let s = session.summary()?;
    Ok(TargetView::new(t, &s.luns))
}

fn find<'a>(s: &'a Summary, iqn: &str) -> CliResult<&'a Target> {
    s.targets
        .iter()
        .find(|t| t.iqn == iqn)
        .ok_or_else(|| CliError::Refused(CatalogueError::NoSuchTarget(iqn.to_string()).into()))
}

fn create(global: &GlobalArgs, iqn: String, out: OutputArg) -> CliResult<()> {
    let session = Session::open(global)?;
    // The time is the CLI's: the leader does not stamp targets (yet).
    let t = changed_target(
        &session,
        Command::CreateTarget {
            iqn,
            now_ms: crate::render::now_ms(),
        },
    )?;
    let v = TargetView::new(&t, &[]);
    emit(out, &v, || {
        format!(
            "created target {0}\nnext: weft target map {0} <LUN-NAME>",
            v.iqn
        )
    });
    Ok(())
}

#[derive(Serialize)]
struct DeleteJson {
    deleted: String,
}

fn delete(global: &GlobalArgs, iqn: String, yes: bool, out: OutputArg) -> CliResult<()> {
    confirm(
        yes,
        &format!("deleting target {iqn} disconnects the initiators using it"),
    )?;
    let session = Session::open(global)?;
    match session.admin(Command::DeleteTarget { iqn: iqn.clone() })? {
        Outcome::Done => {}
        other => return Err(unexpected_outcome("delete target", &other)),
    }
    let j = DeleteJson { deleted: iqn };
    emit(out, &j, || {
        format!("deleted target {} (its LUNs are kept)", j.deleted)
    });
    Ok(())
}

fn luns_text(v: &TargetView) -> String {
    if v.luns.is_empty() {
        "-".into()
    } else {
        v.luns
            .iter()
            .map(|l| format!("{}:{}", l.lun, l.name))
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn acl_text(v: &TargetView) -> String {
    if v.acl.is_empty() {
        "any initiator".into()
    } else {
        v.acl.join(", ")
    }
}

fn list(global: &GlobalArgs, out: OutputArg) -> CliResult<()> {
    let s = Session::open(global)?.summary()?;
    let views: Vec<TargetView> = s
        .targets
        .iter()
        .map(|t| TargetView::new(t, &s.luns))
        .collect();
    emit(out, &views, || {
        if views.is_empty() {
            return "no targets (create one: weft target create IQN)".into();
        }
        let rows: Vec<Vec<String>> = views
            .iter()
            .map(|v| {
                vec![
                    v.iqn.clone(),
                    luns_text(v),
                    if v.acl.is_empty() {
                        "any".into()
                    } else {
                        format!("{} initiators", v.acl.len())
                    },
                    match &v.chap {
                        None => "none".into(),
                        Some(c) if c.mutual_user.is_some() => "mutual".into(),
                        Some(_) => "one-way".into(),
                    },
                ]
            })
            .collect();
        table(&["IQN", "LUNS", "ACL", "CHAP"], &rows)
    });
    Ok(())
}

fn show(global: &GlobalArgs, iqn: &str, out: OutputArg) -> CliResult<()> {
    let s = Session::open(global)?.summary()?;
    let v = TargetView::new(find(&s, iqn)?, &s.luns);
    emit(out, &v, || {
        let mut t = format!("target {}\n  LUNs:", v.iqn);
        if v.luns.is_empty() {
            t.push_str("     none (weft target map IQN LUN-NAME)\n");
        } else {
            t.push('\n');
            for l in &v.luns {
                t.push_str(&format!(
                    "    {:>3}  {}  {}\n",
                    l.lun,
                    l.name,
                    crate::units::format_size(l.size_bytes)
                ));
            }
        }
        t.push_str(&format!(
            "  ACL:      {}\n  CHAP:     {}\n  created:  {}\n",
            acl_text(&v),
            v.chap_text(),
            v.created
        ));
        t
    });
    Ok(())
}

#[derive(Serialize)]
struct MapJson {
    iqn: String,
    lun: u16,
    name: String,
}

fn lowest_free(t: &Target) -> Option<u16> {
    (0..TARGET_LUNS_MAX).find(|n| !t.luns.contains_key(n))
}

fn map(
    global: &GlobalArgs,
    iqn: String,
    name: String,
    lun: Option<u16>,
    out: OutputArg,
) -> CliResult<()> {
    let session = Session::open(global)?;
    let mut attempt = 0;
    let number = loop {
        attempt += 1;
        let number = match lun {
            Some(n) => n,
            None => {
                let s = session.summary()?;
                let t = find(&s, &iqn)?;
                // Mapped here already: nothing to do (as mapping it again
                // at its own number is for the catalogue).
                let here = s
                    .luns
                    .iter()
                    .find(|l| l.name == name)
                    .and_then(|l| t.luns.iter().find(|(_, id)| **id == l.id).map(|(n, _)| *n));
                if let Some(n) = here {
                    break n;
                }
                lowest_free(t).ok_or_else(|| {
                    CliError::Refused(
                        CatalogueError::TooMany(
                            "LUNs in one target".into(),
                            TARGET_LUNS_MAX.into(),
                        )
                        .into(),
                    )
                })?
            }
        };
        let result = session.admin(Command::MapLun {
            iqn: iqn.clone(),
            lun: number,
            name: name.clone(),
        });
        match result {
            Ok(Outcome::Target(_)) => break number,
            Ok(other) => return Err(unexpected_outcome("map LUN", &other)),
            // Someone mapped another LUN at the number we chose: choose again.
            Err(CliError::Refused(fabric::metadata::MetaError::Catalogue(
                CatalogueError::LunNumberTaken { .. },
            ))) if lun.is_none() && attempt < MAP_ATTEMPTS_MAX => continue,
            Err(e) => return Err(e),
        }
    };
    let j = MapJson {
        iqn,
        lun: number,
        name,
    };
    emit(out, &j, || {
        format!("mapped LUN {} to {} as LUN {}", j.name, j.iqn, j.lun)
    });
    Ok(())
}

fn unmap(global: &GlobalArgs, iqn: String, which: &str, out: OutputArg) -> CliResult<()> {
    let session = Session::open(global)?;
    let (number, name) = match which.parse::<u16>() {
        Ok(n) => (n, None),
        Err(_) => {
            let s = session.summary()?;
            let t = find(&s, &iqn)?;
            let l =
                s.luns.iter().find(|l| l.name == which).ok_or_else(|| {
                    CliError::Refused(CatalogueError::NoSuchLun(which.into()).into())
                })?;
            let n = t
                .luns
                .iter()
                .find(|(_, id)| **id == l.id)
                .map(|(n, _)| *n)
                .ok_or_else(|| {
                    CliError::Rejected(format!(
                        "LUN {which} is not mapped in {iqn} (weft target show {iqn})"
                    ))
                })?;
            (n, Some(which.to_string()))
        }
    };
    let t = changed_target(
        &session,
        Command::UnmapLun {
            iqn: iqn.clone(),
            lun: number,
        },
    )?;
    let j = MapJson {
        iqn: t.iqn,
        lun: number,
        name: name.unwrap_or_default(),
    };
    emit(out, &j, || format!("unmapped LUN {} from {}", j.lun, j.iqn));
    Ok(())
}

fn acl(
    global: &GlobalArgs,
    iqn: String,
    initiator: String,
    add: bool,
    out: OutputArg,
) -> CliResult<()> {
    let session = Session::open(global)?;
    let cmd = if add {
        Command::AclAdd {
            iqn,
            initiator: initiator.clone(),
        }
    } else {
        Command::AclRemove {
            iqn,
            initiator: initiator.clone(),
        }
    };
    let t = changed_target(&session, cmd)?;
    let v = view(&session, &t)?;
    emit(out, &v, || {
        let done = if add {
            format!("{initiator} may log in to {}", v.iqn)
        } else {
            format!("removed {initiator} from the ACL of {}", v.iqn)
        };
        if v.acl.is_empty() {
            format!("{done}\nthe ACL is empty now: any initiator may log in")
        } else {
            format!("{done}\nACL: {}", v.acl.join(", "))
        }
    });
    Ok(())
}

/// Each secret from its flag, else its variable, else (with
/// `--secret-stdin`) the next line of `stdin`.
fn secrets(
    a: &ChapSetArgs,
    env: impl Fn(&str) -> Option<String>,
    stdin: &mut dyn BufRead,
) -> CliResult<(String, Option<String>)> {
    let mut next_line = |what: &str| -> CliResult<String> {
        let mut line = String::new();
        stdin
            .read_line(&mut line)
            .map_err(|e| CliError::Usage(format!("cannot read the {what} from stdin: {e}")))?;
        let s = line.trim_end_matches(['\n', '\r']).to_string();
        if s.is_empty() {
            return Err(CliError::Usage(format!(
                "--secret-stdin: no {what} on stdin (one line per secret)"
            )));
        }
        Ok(s)
    };
    let mut get = |flag: &Option<String>, var: &str, what: &str, flag_name: &str| {
        if let Some(s) = flag {
            return Ok(s.clone());
        }
        if let Some(s) = env(var).filter(|s| !s.is_empty()) {
            return Ok(s);
        }
        if a.secret_stdin {
            return next_line(what);
        }
        Err(CliError::Usage(format!(
            "no {what}: give it with --secret-stdin, the {var} environment variable, or {flag_name}"
        )))
    };
    let secret = get(&a.secret, CHAP_SECRET_ENV, "CHAP secret", "--secret")?;
    let mutual = match &a.mutual_user {
        Some(_) => Some(get(
            &a.mutual_secret,
            CHAP_MUTUAL_SECRET_ENV,
            "mutual CHAP secret",
            "--mutual-secret",
        )?),
        None => None,
    };
    Ok((secret, mutual))
}

fn chap_set(global: &GlobalArgs, a: ChapSetArgs) -> CliResult<()> {
    let stdin = std::io::stdin();
    let (secret, mutual_secret) = secrets(&a, |v| std::env::var(v).ok(), &mut stdin.lock())?;
    let chap = ChapSecrets {
        user: a.user.clone(),
        secret,
        mutual: a.mutual_user.clone().zip(mutual_secret),
    };
    let session = Session::open(global)?;
    let t = changed_target(
        &session,
        Command::SetChap {
            iqn: a.iqn.clone(),
            chap: Some(chap),
        },
    )?;
    let v = view(&session, &t)?;
    emit(a.out, &v, || {
        format!("CHAP on {}: {}", v.iqn, v.chap_text())
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(
        secret: Option<&str>,
        mutual_user: bool,
        mutual: Option<&str>,
        stdin: bool,
    ) -> ChapSetArgs {
        ChapSetArgs {
            iqn: "iqn.2026-01.org.example:t".into(),
            user: "u".into(),
            secret: secret.map(String::from),
            mutual_user: mutual_user.then(|| "m".to_string()),
            mutual_secret: mutual.map(String::from),
            secret_stdin: stdin,
            out: OutputArg {
                output: crate::render::Output::Text,
            },
        }
    }

    /// One row per way of giving secrets: flags, environment, stdin.
    #[test]
    fn secret_sources() {
        type Row<'a> = (
            ChapSetArgs,
            &'a [(&'a str, &'a str)],
            &'a str,
            Result<(&'a str, Option<&'a str>), &'a str>,
        );
        let table: Vec<Row> = vec![
            (
                args(Some("flag-secret"), false, None, false),
                &[],
                "",
                Ok(("flag-secret", None)),
            ),
            (
                args(None, false, None, false),
                &[(CHAP_SECRET_ENV, "env-secret")],
                "",
                Ok(("env-secret", None)),
            ),
            (
                args(None, true, None, true),
                &[],
                "one\ntwo\n",
                Ok(("one", Some("two"))),
            ),
            (
                args(None, true, None, true),
                &[(CHAP_SECRET_ENV, "env-secret")],
                "from-stdin\r\n",
                Ok(("env-secret", Some("from-stdin"))),
            ),
            (
                args(Some("a"), true, Some("b"), false),
                &[],
                "",
                Ok(("a", Some("b"))),
            ),
            (
                args(None, false, None, false),
                &[],
                "",
                Err("--secret-stdin"),
            ),
            (
                args(None, true, None, true),
                &[],
                "only-one\n",
                Err("no mutual CHAP secret on stdin"),
            ),
            (
                args(Some("a"), true, None, false),
                &[],
                "",
                Err("WEFT_CHAP_MUTUAL_SECRET"),
            ),
        ];
        for (a, env, input, want) in table {
            let env_fn = |v: &str| {
                env.iter()
                    .find(|(k, _)| *k == v)
                    .map(|(_, s)| s.to_string())
            };
            let got = secrets(&a, env_fn, &mut input.as_bytes());
            match (got, want) {
                (Ok((s, m)), Ok((ws, wm))) => {
                    assert_eq!((s.as_str(), m.as_deref()), (ws, wm), "{a:?}")
                }
                (Err(e), Err(w)) => assert!(e.to_string().contains(w), "{a:?}: {e}"),
                (g, w) => panic!("{a:?}: got {g:?}, want {w:?}"),
            }
        }
    }
}
