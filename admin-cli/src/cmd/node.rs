//! `weft node`: chunkservers as the catalogue knows them: admin state
//! (in / draining / out / removed), lease, place in the metadata group.

use clap::Subcommand;
use fabric::metadata::catalogue::AdminState;
use fabric::metadata::rpc::Summary;
use fabric::metadata::{CatalogueError, Command, Outcome};
use fabric::NodeId;
use serde::Serialize;

use super::confirm;
use crate::error::{CliError, CliResult};
use crate::render::{emit, now_ms, table, LeaseView, NodeView, OutputArg};
use crate::session::{unexpected_outcome, Session};
use crate::GlobalArgs;

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// List nodes: admin state, lease, metadata role.
    #[command(after_help = "Examples:\n  weft node list\n  weft node list -o json")]
    List {
        #[command(flatten)]
        out: OutputArg,
    },
    /// Show one node, with how many extents still have a chunk on it.
    #[command(after_help = "Example:\n  weft node show cs-2")]
    Show {
        /// The node's id (weft node list).
        node: String,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Take a node out of placement: it gets no new chunks, and its
    /// chunks are to move elsewhere. Do this before removing it.
    #[command(
        after_help = "Example:\n  weft node drain cs-2\n  weft node show cs-2   # extents still on it"
    )]
    Drain {
        /// The node's id (weft node list).
        node: String,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Put a draining (or out) node back in service.
    #[command(after_help = "Example:\n  weft node undrain cs-2")]
    Undrain {
        /// The node's id (weft node list).
        node: String,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Remove a node for good (refused while it holds chunks: drain it
    /// first). Its id is never used again.
    #[command(after_help = "Example:\n  weft node drain cs-2 && weft node remove cs-2 --yes")]
    Remove {
        /// The node's id (weft node list).
        node: String,
        /// Confirm: a removed node id can never come back.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        out: OutputArg,
    },
}

pub fn run(global: &GlobalArgs, cmd: NodeCommand) -> CliResult<()> {
    match cmd {
        NodeCommand::List { out } => list(global, out),
        NodeCommand::Show { node, out } => show(global, &node, out),
        NodeCommand::Drain { node, out } => set(global, &node, AdminState::Draining, out),
        NodeCommand::Undrain { node, out } => set(global, &node, AdminState::In, out),
        NodeCommand::Remove { node, yes, out } => {
            confirm(
                yes,
                &format!("removing node {node} is for good (its id is never reused)"),
            )?;
            set(global, &node, AdminState::Removed, out)
        }
    }
}

fn node_id(text: &str) -> CliResult<NodeId> {
    NodeId::new(text).map_err(|e| CliError::Usage(e.to_string()))
}

fn list(global: &GlobalArgs, out: OutputArg) -> CliResult<()> {
    let session = Session::open(global)?;
    let s = session.summary()?;
    let c = session.cluster()?;
    let now = now_ms();
    let views: Vec<NodeView> = s
        .nodes
        .iter()
        .map(|n| NodeView::new(n, &s, Some(&c), now))
        .collect();
    emit(out, &views, || {
        if views.is_empty() {
            return "no nodes registered yet (chunkservers register when they start)".into();
        }
        let rows: Vec<Vec<String>> = views
            .iter()
            .map(|v| {
                vec![
                    v.id.clone(),
                    v.admin.to_string(),
                    LeaseView::text(v.lease.as_ref()),
                    v.metadata.unwrap_or("-").to_string(),
                    v.added.clone(),
                ]
            })
            .collect();
        table(&["NODE", "ADMIN", "LEASE", "METADATA", "ADDED"], &rows)
    });
    Ok(())
}

#[derive(Serialize)]
struct ShowJson {
    #[serde(flatten)]
    node: NodeView,
    /// Allocated extents with a chunk on this node.
    extents_held: u64,
}

/// Extents with a chunk on `node`, over every LUN (paged reads).
fn extents_held(session: &Session, s: &Summary, node: &NodeId) -> CliResult<u64> {
    let mut held = 0;
    for (lun, allocated) in &s.extents {
        if *allocated == 0 {
            continue;
        }
        held += session
            .extents(*lun)?
            .iter()
            .filter(|e| e.nodes.contains(node))
            .count() as u64;
    }
    Ok(held)
}

fn show(global: &GlobalArgs, node: &str, out: OutputArg) -> CliResult<()> {
    let id = node_id(node)?;
    let session = Session::open(global)?;
    let s = session.summary()?;
    let entry = s
        .nodes
        .iter()
        .find(|n| n.id == id)
        .ok_or_else(|| CliError::Refused(CatalogueError::NoSuchNode(node.into()).into()))?;
    let c = session.cluster()?;
    let j = ShowJson {
        node: NodeView::new(entry, &s, Some(&c), now_ms()),
        extents_held: extents_held(&session, &s, &id)?,
    };
    emit(out, &j, || {
        let v = &j.node;
        let next = match (v.admin, j.extents_held) {
            ("draining", 0) => "  (drained: weft node remove can take it out for good)",
            ("draining", _) => "  (draining)",
            _ => "",
        };
        format!(
            "node {}\n  admin:     {}\n  lease:     {}\n  metadata:  {}\n  extents:   {} with a chunk here{next}\n  added:     {}\n",
            v.id,
            v.admin,
            LeaseView::text(v.lease.as_ref()),
            v.metadata.unwrap_or("not a replica"),
            j.extents_held,
            v.added
        )
    });
    Ok(())
}

fn set(global: &GlobalArgs, node: &str, admin: AdminState, out: OutputArg) -> CliResult<()> {
    let id = node_id(node)?;
    let session = Session::open(global)?;
    let outcome = session.admin(Command::SetNodeAdmin {
        node: id.clone(),
        admin,
    })?;
    let Outcome::Node(entry) = outcome else {
        return Err(unexpected_outcome("set node admin state", &outcome));
    };
    let s = session.summary()?;
    let c = session.cluster()?;
    let v = NodeView::new(&entry, &s, Some(&c), now_ms());
    emit(out, &v, || {
        match admin {
        AdminState::Draining => format!(
            "node {id} is draining: placement gives it no new chunks and its chunks are to move away\nprogress: weft node show {id}"
        ),
        AdminState::In => format!("node {id} is in service"),
        AdminState::Removed => {
            let mut t = format!("node {id} is removed; its id will not be used again");
            if v.metadata.is_some() {
                t.push_str(&format!(
                    "\nnote: {id} is still a metadata {}: remove it from the Raft group (admin API RemoveVoter, not in weft yet) before you stop it",
                    v.metadata.unwrap_or("voter")
                ));
            }
            t
        }
        AdminState::Out => format!("node {id} is out"),
    }
    });
    Ok(())
}
