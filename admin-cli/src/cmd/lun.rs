//! `weft lun`: create, list, show, resize, delete; import and export
//! (in `cmd::image`).

use clap::{Args, Subcommand, ValueEnum};
use fabric::metadata::catalogue::AdminState;
use fabric::metadata::rpc::Summary;
use fabric::metadata::{CatalogueError, Command, Lun, Outcome};
use fabric::placement::{EcProfile, Policy, Spread};
use serde::Serialize;

use super::confirm;
use crate::error::{CliError, CliResult};
use crate::render::{emit, table, LunView, OutputArg};
use crate::session::{unexpected_outcome, Session};
use crate::units::{format_size, parse_size};
use crate::GlobalArgs;

/// Widest default profile: `k` data chunks at most, then `+1`.
pub const DEFAULT_K_MAX: u8 = 8;

#[derive(Subcommand, Debug)]
pub enum LunCommand {
    /// Create a LUN.
    ///
    /// Without --ec the profile is k+1, k = in-service nodes − 1 (1 to 8):
    /// one parity chunk per stripe, as wide as the cluster allows.
    #[command(after_help = "Examples:\n  \
        weft lun create db --size 20G\n  \
        weft lun create logs --size 1T --ec 4+2 --spread rack\n  \
        weft lun create vm1 --size 40G --block-size 4096 --site dc1 --site dc2")]
    Create(CreateArgs),
    /// List LUNs with their size, profile, extents and maps.
    #[command(
        after_help = "Examples:\n  weft lun list\n  weft lun list -o json | jq -r '.[].name'"
    )]
    List {
        #[command(flatten)]
        out: OutputArg,
    },
    /// Show one LUN: size, profile, NAA and serial, extents, maps.
    #[command(after_help = "Examples:\n  weft lun show db\n  weft lun show db --extents -o json")]
    Show {
        /// The LUN's name.
        name: String,
        /// Also list every allocated extent: its epoch, nodes and chunk states.
        #[arg(long)]
        extents: bool,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Grow a LUN (never shrink: that would cut the file system on it).
    ///
    /// Initiators see the new size after a rescan
    /// (Linux: iscsiadm -m session --rescan).
    #[command(after_help = "Example:\n  weft lun resize db --size 40G")]
    Resize {
        /// The LUN's name.
        name: String,
        /// The new size: 40G, 512M, 1T or bytes (binary units).
        #[arg(long, value_parser = parse_size)]
        size: u64,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Delete a LUN and all its data. Refused while a target maps it.
    #[command(after_help = "Example:\n  weft lun delete db --yes")]
    Delete {
        /// The LUN's name.
        name: String,
        /// Confirm: the data is gone for good.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Write a disk image into a LUN (raw; qcow2 and others through qemu-img).
    ///
    /// The LUN must exist and be at least as large as the image; bytes
    /// past the image keep what they held. Zeroes are unmapped, not
    /// written. A progress bar shows on a terminal (stderr).
    #[command(after_help = "Examples:\n  \
        weft lun import debian.qcow2 vm1\n  \
        weft lun import disk.raw db -o json\n  \
        xz -dc disk.raw.xz | weft lun import - db")]
    Import(super::image::ImportArgs),
    /// Read a LUN into a disk image (raw; qcow2 and others through qemu-img).
    ///
    /// Into a file, zeroes become holes. A progress bar shows on a
    /// terminal (stderr).
    #[command(after_help = "Examples:\n  \
        weft lun export db db.raw\n  \
        weft lun export vm1 vm1.qcow2\n  \
        weft lun export db - | zstd > db.raw.zst")]
    Export(super::image::ExportArgs),
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// 1–64 of a-z A-Z 0-9 . _ -, starting with a letter or digit.
    pub name: String,
    /// Size: 20G, 512M, 1T or bytes (binary units: G = 2^30).
    #[arg(long, value_parser = parse_size)]
    pub size: u64,
    /// Erasure-coding profile k+m: k data and m parity chunks per stripe
    /// (default: k+1 from the nodes in service).
    #[arg(long, value_name = "K+M", value_parser = parse_ec)]
    pub ec: Option<EcProfile>,
    /// The failure domain no two chunks of a stripe share.
    #[arg(long, value_enum, default_value = "host")]
    pub spread: SpreadArg,
    /// Only place chunks in this site (repeat for several).
    #[arg(long = "site", value_name = "SITE")]
    pub sites: Vec<String>,
    /// Only place chunks in this region (repeat for several).
    #[arg(long = "region", value_name = "REGION")]
    pub regions: Vec<String>,
    /// Logical block size the initiator sees.
    #[arg(long, default_value = "512", value_parser = parse_block_size)]
    pub block_size: u32,
    #[command(flatten)]
    pub out: OutputArg,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum SpreadArg {
    /// One chunk per machine.
    Host,
    /// One chunk per rack.
    Rack,
    /// One chunk per site.
    Site,
}

impl From<SpreadArg> for Spread {
    fn from(s: SpreadArg) -> Spread {
        match s {
            SpreadArg::Host => Spread::Host,
            SpreadArg::Rack => Spread::Rack,
            SpreadArg::Site => Spread::Site,
        }
    }
}

/// `4+1` → a checked profile.
pub fn parse_ec(text: &str) -> Result<EcProfile, String> {
    let (k, m) = text
        .split_once('+')
        .ok_or_else(|| format!("{text:?} is not an EC profile: write k+m, e.g. 4+1"))?;
    let num = |s: &str| {
        s.trim()
            .parse::<u8>()
            .map_err(|_| format!("{text:?} is not an EC profile: write k+m, e.g. 4+1"))
    };
    EcProfile::new(num(k)?, num(m)?).map_err(|e| e.to_string())
}

fn parse_block_size(text: &str) -> Result<u32, String> {
    match parse_size(text)? {
        512 => Ok(512),
        4096 => Ok(4096),
        n => Err(format!("block size {n} is not supported: use 512 or 4096")),
    }
}

/// `k+1` with `k` = in-service nodes − 1, between 1 and [`DEFAULT_K_MAX`].
pub fn default_profile(in_service: usize) -> EcProfile {
    let k = in_service
        .saturating_sub(1)
        .clamp(1, usize::from(DEFAULT_K_MAX)) as u8;
    EcProfile { k, m: 1 }
}

pub fn run(global: &GlobalArgs, cmd: LunCommand) -> CliResult<()> {
    match cmd {
        LunCommand::Create(a) => create(global, a),
        LunCommand::List { out } => list(global, out),
        LunCommand::Show { name, extents, out } => show(global, &name, extents, out),
        LunCommand::Resize { name, size, out } => resize(global, &name, size, out),
        LunCommand::Delete { name, yes, out } => delete(global, &name, yes, out),
        LunCommand::Import(a) => super::image::import(global, a),
        LunCommand::Export(a) => super::image::export(global, a),
    }
}

fn create(global: &GlobalArgs, a: CreateArgs) -> CliResult<()> {
    fabric::metadata::names::check_lun_name(&a.name).map_err(|e| CliError::Usage(e.to_string()))?;
    if a.size == 0 || !a.size.is_multiple_of(u64::from(a.block_size)) {
        return Err(CliError::Usage(format!(
            "--size {} is not a positive multiple of the block size ({} bytes)",
            a.size, a.block_size
        )));
    }
    // The default profile needs the nodes; the pins are checked first, so
    // that bad input is refused before anything is sent.
    let mut policy = Policy {
        ec: a.ec.unwrap_or(EcProfile { k: 1, m: 1 }),
        spread: a.spread.into(),
        sites: a.sites,
        regions: a.regions,
    };
    policy.check().map_err(|e| CliError::Usage(e.to_string()))?;
    let session = Session::open(global)?;
    if a.ec.is_none() {
        let s = session.summary()?;
        let in_service = s.nodes.iter().filter(|n| n.admin == AdminState::In).count();
        policy.ec = default_profile(in_service);
    }
    let outcome = session.admin(Command::CreateLun {
        name: a.name,
        size_bytes: a.size,
        block_size: a.block_size,
        policy,
        // Filled in by the leader.
        naa: [0; 16],
        serial: String::new(),
        now_ms: 0,
    })?;
    let Outcome::Lun(lun) = outcome else {
        return Err(unexpected_outcome("create LUN", &outcome));
    };
    let v = LunView::new(&lun, None);
    emit(a.out, &v, || {
        format!(
            "created LUN {}: {}, {} over {}s, block size {}\n  NAA {}  serial {}\nnext: weft target map <IQN> {}",
            v.name,
            v.size,
            v.ec,
            v.spread,
            v.block_size,
            v.naa,
            v.serial,
            v.name
        )
    });
    Ok(())
}

fn maps_text(v: &LunView) -> String {
    if v.mapped.is_empty() {
        "-".into()
    } else {
        v.mapped
            .iter()
            .map(|m| format!("{} LUN {}", m.target, m.lun))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn list(global: &GlobalArgs, out: OutputArg) -> CliResult<()> {
    let s = Session::open(global)?.summary()?;
    let views: Vec<LunView> = s.luns.iter().map(|l| LunView::new(l, Some(&s))).collect();
    emit(out, &views, || {
        if views.is_empty() {
            return "no LUNs (create one: weft lun create NAME --size 20G)".into();
        }
        let rows: Vec<Vec<String>> = views
            .iter()
            .map(|v| {
                vec![
                    v.name.clone(),
                    v.size.clone(),
                    v.ec.clone(),
                    v.spread.to_string(),
                    v.block_size.to_string(),
                    format!("{}/{}", v.extents_allocated, v.extents_total),
                    v.extents_degraded.to_string(),
                    maps_text(v),
                ]
            })
            .collect();
        table(
            &[
                "NAME", "SIZE", "EC", "SPREAD", "BLOCK", "EXTENTS", "DEGRADED", "MAPPED",
            ],
            &rows,
        )
    });
    Ok(())
}

/// An extent as `lun show --extents` prints it.
#[derive(Serialize)]
struct ExtentView {
    index: u64,
    epoch: u64,
    nodes: Vec<String>,
    primary: Option<String>,
    /// `ok`, `missing since epoch N` or `rebuilding onto NODE`, per chunk.
    chunks: Vec<String>,
}

#[derive(Serialize)]
struct ShowJson {
    #[serde(flatten)]
    lun: LunView,
    #[serde(skip_serializing_if = "Option::is_none")]
    extents: Option<Vec<ExtentView>>,
}

fn find<'a>(s: &'a Summary, name: &str) -> CliResult<&'a Lun> {
    s.luns
        .iter()
        .find(|l| l.name == name)
        .ok_or_else(|| CliError::Refused(CatalogueError::NoSuchLun(name.to_string()).into()))
}

fn show(global: &GlobalArgs, name: &str, with_extents: bool, out: OutputArg) -> CliResult<()> {
    let session = Session::open(global)?;
    let s = session.summary()?;
    let lun = find(&s, name)?;
    let extents = if with_extents {
        let all = session.extents(lun.id)?;
        Some(
            all.iter()
                .map(|e| ExtentView {
                    index: e.index,
                    epoch: e.epoch,
                    nodes: e.nodes.iter().map(|n| n.to_string()).collect(),
                    primary: e.primary_node().map(|n| n.to_string()),
                    chunks: e
                        .chunks
                        .iter()
                        .map(|c| match c {
                            fabric::metadata::ChunkState::Ok => "ok".to_string(),
                            fabric::metadata::ChunkState::Missing { since_epoch } => {
                                format!("missing since epoch {since_epoch}")
                            }
                            fabric::metadata::ChunkState::Rebuilding { to } => {
                                format!("rebuilding onto {to}")
                            }
                        })
                        .collect(),
                })
                .collect::<Vec<_>>(),
        )
    } else {
        None
    };
    let j = ShowJson {
        lun: LunView::new(lun, Some(&s)),
        extents,
    };
    emit(out, &j, || {
        let v = &j.lun;
        let pins = match (v.sites.is_empty(), v.regions.is_empty()) {
            (true, true) => "no (any site, any region)".to_string(),
            _ => format!(
                "sites {}; regions {}",
                if v.sites.is_empty() {
                    "any".into()
                } else {
                    v.sites.join(", ")
                },
                if v.regions.is_empty() {
                    "any".into()
                } else {
                    v.regions.join(", ")
                }
            ),
        };
        let mut t = format!(
            "LUN {name} (id {id})\n  \
             size:        {size} ({bytes} bytes), block size {bs}\n  \
             profile:     EC {ec}, one chunk per {spread}\n  \
             pinned:      {pins}\n  \
             NAA:         {naa}  (Linux: /dev/disk/by-id/wwn-0x{naa})\n  \
             serial:      {serial}\n  \
             extents:     {alloc} of {total} allocated ({ext} each), {deg} degraded\n  \
             mapped:      {maps}\n  \
             created:     {created}\n",
            name = v.name,
            id = v.id,
            size = v.size,
            bytes = v.size_bytes,
            bs = v.block_size,
            ec = v.ec,
            spread = v.spread,
            naa = v.naa,
            serial = v.serial,
            alloc = v.extents_allocated,
            total = v.extents_total,
            ext = format_size(v.extent_bytes),
            deg = v.extents_degraded,
            maps = maps_text(v),
            created = v.created,
        );
        if let Some(ex) = &j.extents {
            t.push('\n');
            let rows: Vec<Vec<String>> = ex
                .iter()
                .map(|e| {
                    let states: Vec<&str> = e.chunks.iter().map(String::as_str).collect();
                    let state = if states.iter().all(|s| *s == "ok") {
                        "ok".to_string()
                    } else {
                        e.nodes
                            .iter()
                            .zip(&e.chunks)
                            .filter(|(_, c)| *c != "ok")
                            .map(|(n, c)| format!("{n}: {c}"))
                            .collect::<Vec<_>>()
                            .join("; ")
                    };
                    vec![
                        e.index.to_string(),
                        e.epoch.to_string(),
                        e.primary.clone().unwrap_or_default(),
                        e.nodes.join(","),
                        state,
                    ]
                })
                .collect();
            if rows.is_empty() {
                t.push_str("no extents allocated yet (extents are allocated on first write)\n");
            } else {
                t.push_str(&table(
                    &["EXTENT", "EPOCH", "PRIMARY", "NODES", "STATE"],
                    &rows,
                ));
            }
        }
        t
    });
    Ok(())
}

#[derive(Serialize)]
struct ResizeJson {
    name: String,
    old_size_bytes: u64,
    size_bytes: u64,
    size: String,
}

fn resize(global: &GlobalArgs, name: &str, size: u64, out: OutputArg) -> CliResult<()> {
    let session = Session::open(global)?;
    let before = session.lun(name)?;
    let outcome = session.admin(Command::ResizeLun {
        name: name.to_string(),
        size_bytes: size,
    })?;
    let Outcome::Lun(after) = outcome else {
        return Err(unexpected_outcome("resize LUN", &outcome));
    };
    let j = ResizeJson {
        name: after.name.clone(),
        old_size_bytes: before.size_bytes,
        size_bytes: after.size_bytes,
        size: format_size(after.size_bytes),
    };
    emit(out, &j, || {
        if j.old_size_bytes == j.size_bytes {
            format!("LUN {} is {} already", j.name, j.size)
        } else {
            format!(
                "resized LUN {}: {} -> {}; initiators see it after a rescan (iscsiadm -m session --rescan)",
                j.name,
                format_size(j.old_size_bytes),
                j.size
            )
        }
    });
    Ok(())
}

#[derive(Serialize)]
struct DeleteJson {
    deleted: String,
    extents_freed: usize,
}

fn delete(global: &GlobalArgs, name: &str, yes: bool, out: OutputArg) -> CliResult<()> {
    confirm(yes, &format!("deleting LUN {name:?} destroys its data"))?;
    let session = Session::open(global)?;
    let outcome = session.admin(Command::DeleteLun {
        name: name.to_string(),
    })?;
    let Outcome::Deleted { freed } = outcome else {
        return Err(unexpected_outcome("delete LUN", &outcome));
    };
    let j = DeleteJson {
        deleted: name.to_string(),
        extents_freed: freed.len(),
    };
    emit(out, &j, || {
        format!("deleted LUN {name} ({} extents freed)", j.extents_freed)
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles() {
        type Row = (&'static str, Result<(u8, u8), &'static str>);
        let table: &[Row] = &[
            ("4+1", Ok((4, 1))),
            ("1+0", Ok((1, 0))),
            ("16+4", Ok((16, 4))),
            ("0+1", Err("k must be at least 1")),
            ("4+5", Err("m must be at most 4")),
            ("4", Err("write k+m")),
            ("a+b", Err("write k+m")),
            ("300+1", Err("write k+m")),
        ];
        for (text, want) in table {
            let got = parse_ec(text).map(|p| (p.k, p.m));
            match (got, want) {
                (Ok(g), Ok(w)) => assert_eq!(g, *w, "{text}"),
                (Err(g), Err(w)) => assert!(g.contains(w), "{text}: {g}"),
                (g, w) => panic!("{text}: got {g:?}, want {w:?}"),
            }
        }
    }

    /// DESIGN.md: k+1, k chosen from the nodes, at most 8.
    #[test]
    fn default_profiles() {
        for (nodes, k) in [(0, 1), (1, 1), (2, 1), (3, 2), (5, 4), (9, 8), (40, 8)] {
            assert_eq!(default_profile(nodes), EcProfile { k, m: 1 }, "{nodes}");
        }
    }
}
