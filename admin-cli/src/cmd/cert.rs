//! `weft cert`: the cluster CA and node certificates. A node's id and role
//! live in its certificate (SAN URI `weft://<role>/<node-id>`), and that is
//! all the fabric believes about a peer; see docs/fabric.md.

use super::Output;
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use fabric::identity::{
    describe_cert_pem, Ca, CertSummary, NodeCredentials, NodeId, Role, Validity, CA_CERT_FILE,
    CA_KEY_FILE, NODE_CERT_VALIDITY_DAYS_DEFAULT,
};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// Create the cluster CA (ca.crt, ca.key) in DIR.
    #[command(after_help = "Example:\n  weft cert init --dir /etc/weft/ca --cluster-name prod")]
    Init {
        /// Directory for ca.crt and ca.key (created; ca.key is mode 0600).
        #[arg(long, default_value = "weft-ca")]
        dir: PathBuf,
        /// Name of the cluster, written into the CA certificate.
        #[arg(long, default_value = "weft")]
        cluster_name: String,
        /// Replace an existing CA. Every node certificate it signed stops working.
        #[arg(long)]
        force: bool,
    },
    /// Issue a certificate for one node, signed by the cluster CA.
    ///
    /// Writes ca.crt, node.crt and node.key (0600) into OUT.
    #[command(after_help = "Examples:\n  \
        weft cert issue --role chunkserver --node-id cs-1 --ca-dir /etc/weft/ca\n  \
        weft cert issue --role admin --node-id ops --ca-dir /etc/weft/ca --out ~/.config/weft/admin")]
    Issue {
        /// What the node may do: chunkserver, gateway or admin.
        #[arg(long)]
        role: String,
        /// The node's id: 1-63 characters of a-z, 0-9 and '-'.
        #[arg(long)]
        node_id: String,
        /// Directory holding the CA (ca.crt, ca.key).
        #[arg(long, default_value = "weft-ca")]
        ca_dir: PathBuf,
        /// Where to write the node's files (default: CA_DIR/nodes/NODE_ID).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Validity in days.
        #[arg(long, default_value_t = NODE_CERT_VALIDITY_DAYS_DEFAULT)]
        days: u64,
    },
    /// Show what a certificate says: identity, issuer, validity.
    #[command(after_help = "Example:\n  weft cert show ~/.config/weft/admin -o json")]
    Show {
        /// A PEM certificate file (or a directory with node.crt or ca.crt).
        path: PathBuf,
        #[arg(long, short = 'o', value_enum, default_value = "text")]
        output: Output,
    },
}

pub fn run(cmd: CertCommand) -> Result<()> {
    match cmd {
        CertCommand::Init {
            dir,
            cluster_name,
            force,
        } => init(&dir, &cluster_name, force),
        CertCommand::Issue {
            role,
            node_id,
            ca_dir,
            out,
            days,
        } => issue(&role, &node_id, &ca_dir, out.as_deref(), days),
        CertCommand::Show { path, output } => show(&path, output),
    }
}

fn init(dir: &Path, cluster_name: &str, force: bool) -> Result<()> {
    if dir.join(CA_KEY_FILE).exists() && !force {
        bail!(
            "{} already holds a CA; use --force to replace it (every certificate it signed stops working)",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let ca = Ca::generate(cluster_name)?;
    ca.save(dir)?;
    println!("created cluster CA {:?} in {}", cluster_name, dir.display());
    println!(
        "  {}  (give to every node)",
        dir.join(CA_CERT_FILE).display()
    );
    println!(
        "  {}  (keep secret: it can make new nodes)",
        dir.join(CA_KEY_FILE).display()
    );
    Ok(())
}

fn issue(role: &str, node_id: &str, ca_dir: &Path, out: Option<&Path>, days: u64) -> Result<()> {
    let role: Role = role.parse()?;
    let node_id = NodeId::new(node_id)?;
    if days == 0 {
        bail!("--days must be at least 1");
    }
    let ca = Ca::load(ca_dir)
        .with_context(|| format!("cannot load the CA from {}", ca_dir.display()))?;
    let out = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| ca_dir.join("nodes").join(node_id.as_str()));
    issue_into(&ca, role, &node_id, &out, days)?;
    println!(
        "issued {role} certificate for {node_id}, valid {days} days, in {}",
        out.display()
    );
    Ok(())
}

/// Issues a certificate for `node_id` with `role`, signed by `ca`, and
/// writes ca.crt, node.crt and node.key (0600) into `out` (created).
/// `weft cert issue` and `weft up` both make certificates with it.
pub fn issue_into(ca: &Ca, role: Role, node_id: &NodeId, out: &Path, days: u64) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let node = ca.issue(role, node_id, Validity::days_from(SystemTime::now(), days))?;
    let creds = NodeCredentials {
        ca_cert_pem: ca.cert_pem().to_string(),
        node,
    };
    creds.save(out)?;
    Ok(())
}

#[derive(Serialize)]
struct ShowJson {
    path: String,
    subject: String,
    issuer: String,
    serial: String,
    is_ca: bool,
    role: Option<String>,
    node_id: Option<String>,
    not_before: String,
    not_after: String,
    expired: bool,
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

fn show(path: &Path, output: Output) -> Result<()> {
    let file = if path.is_dir() {
        ["node.crt", CA_CERT_FILE]
            .iter()
            .map(|f| path.join(f))
            .find(|p| p.exists())
            .with_context(|| format!("{} holds neither node.crt nor ca.crt", path.display()))?
    } else {
        path.to_path_buf()
    };
    let pem = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let s: CertSummary = describe_cert_pem(&pem)?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let j = ShowJson {
        path: file.display().to_string(),
        subject: s.subject,
        issuer: s.issuer,
        serial: s.serial,
        is_ca: s.is_ca,
        role: s.identity.as_ref().map(|i| i.role.to_string()),
        node_id: s.identity.as_ref().map(|i| i.node_id.to_string()),
        not_before: rfc3339(s.not_before_unix),
        not_after: rfc3339(s.not_after_unix),
        expired: now > s.not_after_unix,
    };
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&j)?),
        Output::Text => {
            println!("file:       {}", j.path);
            match (&j.role, &j.node_id) {
                (Some(r), Some(n)) => println!("identity:   {r} {n}"),
                _ if j.is_ca => println!("identity:   cluster CA"),
                _ => println!("identity:   none (not a weft node certificate)"),
            }
            println!("subject:    {}", j.subject);
            println!("issuer:     {}", j.issuer);
            println!("serial:     {}", j.serial);
            println!(
                "valid:      {} .. {}{}",
                j.not_before,
                j.not_after,
                if j.expired { "  EXPIRED" } else { "" }
            );
        }
    }
    Ok(())
}
