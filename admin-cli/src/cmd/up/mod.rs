//! `weft up`: a whole cluster on one machine, for a first try and for
//! tests. Creates a CA and certificates, writes the configs, starts the
//! chunkservers (the first three metadata voters) and gateways as child
//! processes, creates LUN `demo` on target [`IQN`], and then shows a live
//! status line until Ctrl-C, when it stops everything in order.
//!
//! The contract for scripts (docs/cli.md): with `--dir DIR --port PORT`
//! the first gateway's portal is `127.0.0.1:PORT` (further gateways on the
//! next ports), and once ready `DIR/weft.toml` (client config, admin
//! certificate) and `DIR/ready.json` exist; `ready.json` is removed on a
//! clean stop.
//!
//! - [`layout`]: the data directory, `up.toml` (shape and ports chosen by
//!   the first run), the configs and certificates.
//! - [`children`]: starting and stopping the processes.

pub mod children;
pub mod layout;

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use fabric::identity::NodeCredentials;
use fabric::metadata::rpc::{ClusterInfo, ReadReply, ReadRequest, Summary};
use fabric::metadata::{Command, Lun, Outcome};
use fabric::placement::Policy;
use fabric::rpc::RpcConfig;
use fabric::{NodeId, TlsConfig};
use serde::Serialize;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::cmd::status;
use crate::config::{write_client_config, ClientConfig, Endpoint};
use crate::datapath::Fabric;
use crate::error::{CliError, CliResult};
use crate::render::now_ms;
use crate::units::{format_ms, format_size, parse_size};
use children::{describe, Child, Kind};
use layout::{
    ensure_certs, gateway_id, port_is_free, write_atomic, write_configs, Layout, UpState,
    GATEWAYS_MAX, NODES_MAX, SUPERVISOR_ID,
};

/// The target `weft up` creates.
pub const IQN: &str = "iqn.2026-11.org.weft:demo";
/// The LUN `weft up` creates and maps on [`IQN`].
pub const LUN_NAME: &str = "demo";

const PORT_DEFAULT: u16 = 3260;
const NODES_DEFAULT: u16 = 4;
const GATEWAYS_DEFAULT: u16 = 1;
const SIZE_DEFAULT: u64 = 1 << 30;

/// How long start-up may take: chunkservers registered, portals open.
const START_TIMEOUT_MS: u64 = 60_000;
/// How often start-up looks at the cluster and the children.
const START_POLL_MS: u64 = 100;
/// A gateway gets this long to stop after SIGTERM (sessions close).
const GATEWAY_STOP_GRACE_MS: u64 = 5_000;
/// A chunkserver gets this long to stop after SIGTERM (its own grace for
/// in-flight work is 2 s, then it closes its store).
const CHUNKSERVER_STOP_GRACE_MS: u64 = 10_000;
/// The status line is refreshed this often.
const STATUS_INTERVAL_MS: u64 = 2_000;
/// Without a terminal a status line is printed when it changes, and at
/// least this often.
const STATUS_PLAIN_REPEAT_MS: u64 = 60_000;
/// Longest a metadata read for the status line may take.
const STATUS_READ_TIMEOUT_MS: u64 = 2_000;
/// The supervisor's metadata calls (create LUN, target) keep trying this long.
const METADATA_TIMEOUT_MS: u64 = 15_000;

const AFTER_HELP: &str = "\
Examples:
  weft up
  weft up --dir /tmp/weft --port 3300 --nodes 6 --gateways 2 --size 10G

Starts a whole cluster on this machine: a CA and certificates, --nodes
chunkservers (the first 3 metadata voters) and --gateways gateways as child
processes, LUN demo (EC k+1, k = nodes - 1) on target
iqn.2026-11.org.weft:demo. Everything lives in --dir: running weft up again
with the same --dir reuses the certificates, ports and data. Ctrl-C stops
it all.

For scripts: the first portal is 127.0.0.1:PORT (further gateways on the
next ports); once ready, DIR/weft.toml (client config) and DIR/ready.json
({portals, iqn, lun, lun_name, processes}) exist. See docs/cli.md.";

#[derive(Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct UpArgs {
    /// Data directory: certificates, configs, data and logs.
    #[arg(long, default_value = "weft-data", value_name = "DIR")]
    pub dir: PathBuf,
    /// iSCSI port of the first gateway; further gateways take the next
    /// ports [default: 3260, or the last run's]
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// Chunkservers, the first 3 of them metadata voters; fixed by the
    /// first run [default: 4]
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=i64::from(NODES_MAX)))]
    pub nodes: Option<u16>,
    /// Gateways, each with its own portal [default: 1, or the last run's]
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=i64::from(GATEWAYS_MAX)))]
    pub gateways: Option<u16>,
    /// Size of LUN demo when the first run creates it, e.g. 1G, 512M
    /// [default: 1G]
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
}

/// `DIR/ready.json`: the contract for scripts.
#[derive(Serialize, Debug)]
struct Ready {
    portals: Vec<String>,
    iqn: String,
    lun: u16,
    lun_name: String,
    processes: Vec<ReadyProcess>,
}

#[derive(Serialize, Debug)]
struct ReadyProcess {
    role: &'static str,
    node_id: String,
    pid: u32,
    data_dir: String,
}

pub fn run(a: UpArgs) -> CliResult<()> {
    if let Some(size) = a.size {
        if size == 0 || !size.is_multiple_of(512) {
            return Err(CliError::Usage(format!(
                "--size {size} is not a positive multiple of the block size (512 bytes)"
            )));
        }
    }
    let port = a.port.unwrap_or(PORT_DEFAULT);
    let gateways = a.gateways.unwrap_or(GATEWAYS_DEFAULT);
    if u32::from(port) + u32::from(gateways) - 1 > 65_535 {
        return Err(CliError::Usage(format!(
            "--port {port} leaves no room for {gateways} portals below 65536"
        )));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| failed(format!("cannot start a runtime: {e}")))?;
    rt.block_on(up(a))
}

fn failed(msg: String) -> CliError {
    CliError::Failed(anyhow::anyhow!(msg))
}

/// SIGINT, SIGTERM and SIGHUP: each stops the cluster cleanly.
struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Signals {
    fn new() -> CliResult<Signals> {
        let s = |k| signal(k).map_err(|e| failed(format!("cannot handle signals: {e}")));
        Ok(Signals {
            int: s(SignalKind::interrupt())?,
            term: s(SignalKind::terminate())?,
            hup: s(SignalKind::hangup())?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "interrupted",
            _ = self.term.recv() => "SIGTERM",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

async fn up(a: UpArgs) -> CliResult<()> {
    // First, so that a Ctrl-C at any point stops what was started.
    let mut signals = Signals::new()?;
    let layout = open_dir(&a.dir)?;
    let _lock = lock(&layout)?;
    let (state, reused) = load_or_create_state(&layout, &a)?;
    let bins = Binaries::find()?;
    let certs = ensure_certs(&layout, &state).map_err(CliError::Failed)?;
    write_configs(&layout, &state).map_err(CliError::Failed)?;
    let _ = std::fs::remove_file(layout.ready());
    let mut cluster = Cluster {
        layout,
        state,
        children: Vec::new(),
        terminal: std::io::stdout().is_terminal(),
        status_shown: false,
    };
    let stopping = tokio::select! {
        r = cluster.start_and_watch(&bins, &a, reused, certs) => r.map(|_| "stopped"),
        why = signals.recv() => Ok(why),
    };
    let why = match &stopping {
        Ok(why) => why,
        Err(_) => "start-up failed",
    };
    cluster.stop(why).await;
    stopping.map(|_| ())
}

fn open_dir(dir: &Path) -> CliResult<Layout> {
    if dir.exists() {
        if !dir.is_dir() {
            return Err(CliError::Usage(format!(
                "--dir {} is not a directory",
                dir.display()
            )));
        }
        let empty = std::fs::read_dir(dir)
            .map_err(|e| failed(format!("cannot read {}: {e}", dir.display())))?
            .next()
            .is_none();
        if !empty && !dir.join("up.toml").exists() {
            return Err(CliError::Usage(format!(
                "{} is not empty and was not made by weft up (it has no up.toml): give a new or empty --dir",
                dir.display()
            )));
        }
    } else {
        std::fs::create_dir_all(dir)
            .map_err(|e| failed(format!("cannot create {}: {e}", dir.display())))?;
    }
    let dir = dir
        .canonicalize()
        .map_err(|e| failed(format!("cannot resolve {}: {e}", dir.display())))?;
    Ok(Layout { dir })
}

/// One `weft up` per directory: the lock is held for as long as it runs
/// (and released by the kernel if it dies).
fn lock(layout: &Layout) -> CliResult<std::fs::File> {
    let path = layout.lock();
    let f = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| failed(format!("cannot open {}: {e}", path.display())))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(CliError::Rejected(format!(
            "another weft up is running with --dir {}: stop it first (Ctrl-C in its terminal), or give another --dir",
            layout.dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(failed(format!("cannot lock {}: {e}", path.display())))
        }
    }
}

/// `up.toml` as the first run wrote it (with this run's `--port` and
/// `--gateways`), or a new one.
fn load_or_create_state(layout: &Layout, a: &UpArgs) -> CliResult<(UpState, bool)> {
    let path = layout.state();
    if !path.exists() {
        let nodes = usize::from(a.nodes.unwrap_or(NODES_DEFAULT));
        let state = UpState::new(
            a.port.unwrap_or(PORT_DEFAULT),
            nodes,
            a.gateways.unwrap_or(GATEWAYS_DEFAULT),
            a.size.unwrap_or(SIZE_DEFAULT),
        )
        .map_err(CliError::Failed)?;
        state.save(&path).map_err(CliError::Failed)?;
        return Ok((state, false));
    }
    let mut state = UpState::load(&path).map_err(CliError::Failed)?;
    if let Some(n) = a.nodes {
        if usize::from(n) != state.nodes.len() {
            return Err(CliError::Usage(format!(
                "{} holds a cluster of {} chunkservers, made by its first run: --nodes {n} cannot change that; drop --nodes, or give another --dir",
                layout.dir.display(),
                state.nodes.len()
            )));
        }
    }
    state.port = a.port.unwrap_or(state.port);
    state.gateways = a.gateways.unwrap_or(state.gateways);
    let portals = state.portals();
    if let Some(n) = state
        .nodes
        .iter()
        .find(|n| portals.iter().any(|p| p.port() == n.fabric.port()))
    {
        return Err(CliError::Usage(format!(
            "port {} is {}'s fabric port in this cluster: pick another --port",
            n.fabric.port(),
            n.id
        )));
    }
    state.save(&path).map_err(CliError::Failed)?;
    Ok((state, true))
}

/// `name` on PATH, if it is there and executable.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

struct Binaries {
    chunkserver: PathBuf,
    gateway: PathBuf,
}

impl Binaries {
    /// Beside the running `weft` (a build or an install puts them
    /// together), else on PATH.
    fn find() -> CliResult<Binaries> {
        let exe = std::env::current_exe().ok();
        let find = |name: &str| -> CliResult<PathBuf> {
            if let Some(dir) = exe.as_ref().and_then(|e| e.parent()) {
                let p = dir.join(name);
                if p.is_file() {
                    return Ok(p);
                }
            }
            find_on_path(name).ok_or_else(|| {
                failed(format!(
                    "weft up needs {name}, which is neither beside weft ({}) nor on PATH: build it (cargo build --release --workspace) or install it next to weft",
                    exe.as_ref()
                        .and_then(|e| e.parent())
                        .map(|d| d.display().to_string())
                        .unwrap_or_else(|| "?".into())
                ))
            })
        };
        Ok(Binaries {
            chunkserver: find("weft-chunkserver")?,
            gateway: find("weft-gateway")?,
        })
    }
}

/// A path as a shell word (quoted when it needs to be).
fn shell_word(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:=,@".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

struct Cluster {
    layout: Layout,
    state: UpState,
    /// Chunkservers first, then gateways, in start order.
    children: Vec<Child>,
    terminal: bool,
    /// A status line is on the terminal (to be cleared before other output).
    status_shown: bool,
}

impl Cluster {
    /// Prints a line of progress (clearing a status line first).
    fn say(&mut self, line: &str) {
        let mut out = std::io::stdout().lock();
        if self.status_shown {
            let _ = write!(out, "\r\x1b[K");
            self.status_shown = false;
        }
        let _ = writeln!(out, "{line}");
    }

    fn config_path(&self) -> PathBuf {
        self.layout.client_config()
    }

    /// A child that exited during start-up fails it, with the last line
    /// of its log.
    fn check_children(&mut self) -> CliResult<()> {
        for c in &mut self.children {
            if let Some(status) = c.poll() {
                return Err(failed(format!(
                    "{} {} exited during start-up ({}): {}; see {}",
                    c.kind.as_str(),
                    c.id,
                    describe(status),
                    c.last_log_line(),
                    c.log.display()
                )));
            }
        }
        Ok(())
    }

    async fn start_and_watch(
        &mut self,
        bins: &Binaries,
        a: &UpArgs,
        reused: bool,
        certs: layout::CertsMade,
    ) -> CliResult<()> {
        let t0 = Instant::now();
        let n = self.state.nodes.len();
        let g = usize::from(self.state.gateways);
        self.say(&format!(
            "weft up: {} a cluster of {n} chunkserver{} and {g} gateway{} in {}",
            if reused { "restarting" } else { "starting" },
            plural(n),
            plural(g),
            self.layout.dir.display()
        ));
        if certs.ca || !certs.issued.is_empty() {
            self.say(&format!(
                "  certificates  {}{} in {}",
                if certs.ca { "cluster CA, " } else { "" },
                certs.issued.join(", "),
                self.layout.short(&self.layout.dir.join("certs"))
            ));
        }
        self.check_ports()?;

        // Chunkservers.
        let slots = self.state.nodes.clone();
        for slot in &slots {
            let cfg = self.layout.chunkserver_config(&slot.id);
            let child = Child::spawn(
                Kind::Chunkserver,
                &slot.id,
                &bins.chunkserver,
                &["--config".as_ref(), cfg.as_os_str()],
                &self.layout.log(&slot.id),
                &self.layout.data(&slot.id),
            )
            .map_err(CliError::Failed)?;
            self.children.push(child);
        }
        self.say(&format!(
            "  chunkservers  {} started (fabric {}…{}), logs in {}/",
            slots
                .iter()
                .map(|s| s.id.as_str())
                .collect::<Vec<_>>()
                .join(" "),
            slots[0].fabric,
            slots[n - 1].fabric.port(),
            self.layout.short(&self.layout.logs())
        ));

        // The supervisor's own fabric node: metadata and gossip.
        let fabric = self.connect().await?;
        let leader = self.wait_healthy(&fabric).await?;
        self.say(&format!(
            "  metadata      leader {leader}, voters {}; {n} chunkservers registered ({:.1} s)",
            self.state
                .voters()
                .iter()
                .map(|v| v.id.as_str())
                .collect::<Vec<_>>()
                .join(" "),
            t0.elapsed().as_secs_f64()
        ));
        let (lun, lun_no) = self.ensure_lun(&fabric, a.size).await?;

        // Gateways: they read the targets when they start, so after the LUN.
        for gi in 0..g {
            let id = gateway_id(gi);
            let cfg = self.layout.gateway_config(&id);
            let child = Child::spawn(
                Kind::Gateway,
                &id,
                &bins.gateway,
                &["--cluster".as_ref(), cfg.as_os_str()],
                &self.layout.log(&id),
                &self.layout.node_dir(&id),
            )
            .map_err(CliError::Failed)?;
            self.children.push(child);
            let portal = self.state.portals()[gi];
            self.wait_portal(portal).await?;
            self.say(&format!(
                "  gateway       {id} serving {portal} (TPGT {})",
                gi + 1
            ));
        }

        self.write_client_config()?;
        self.write_ready(lun_no)?;
        self.banner(&lun, lun_no, t0.elapsed());
        self.watch(&fabric).await
    }

    /// Every port this run listens on must be free: a port in use would
    /// make a chunkserver fail, or (worse) make another program's
    /// listener look like our portal.
    fn check_ports(&self) -> CliResult<()> {
        for n in &self.state.nodes {
            if !port_is_free(n.fabric.port()) {
                return Err(failed(format!(
                    "{}, the fabric address of {} (fixed by the first run in {}), is in use: stop what listens there (another weft up with this --dir?) and try again",
                    n.fabric,
                    n.id,
                    self.layout.state().display()
                )));
            }
        }
        for (g, p) in self.state.portals().iter().enumerate() {
            if !port_is_free(p.port()) {
                return Err(failed(format!(
                    "{p}, the iSCSI portal of {}, is in use: stop what listens there or give another --port",
                    gateway_id(g)
                )));
            }
        }
        Ok(())
    }

    async fn connect(&self) -> CliResult<Fabric> {
        let dir = self.layout.certs(SUPERVISOR_ID);
        let creds = NodeCredentials::load(&dir)
            .map_err(|e| failed(format!("cannot load {}: {e}", dir.display())))?;
        let tls = TlsConfig::new(&creds)
            .map_err(|e| failed(format!("the certificate in {}: {e}", dir.display())))?;
        let endpoints = self
            .state
            .voters()
            .iter()
            .map(|v| Ok((NodeId::new(&v.id)?, v.fabric)))
            .collect::<anyhow::Result<Vec<_>>>()
            .map_err(CliError::Failed)?;
        let rpc = RpcConfig {
            connect_timeout_ms: 1_000,
            backoff_max_ms: 500,
            ..RpcConfig::default()
        };
        Fabric::start(
            &tls,
            NodeId::new(SUPERVISOR_ID).map_err(|e| failed(e.to_string()))?,
            endpoints,
            rpc,
            Duration::from_millis(METADATA_TIMEOUT_MS),
        )
        .await
        .map_err(CliError::Failed)
    }

    /// Until every chunkserver is registered with a valid lease and
    /// gossip knows its address and capacity (placement needs both).
    /// Returns the metadata leader.
    async fn wait_healthy(&mut self, fabric: &Fabric) -> CliResult<String> {
        let until = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
        let ids: Vec<NodeId> = self
            .state
            .nodes
            .iter()
            .filter_map(|s| NodeId::new(&s.id).ok())
            .collect();
        let (mut leased, mut known) = (0, 0);
        loop {
            self.check_children()?;
            if let Some((s, c)) = read_status(fabric).await {
                let now = now_ms();
                leased = ids
                    .iter()
                    .filter(|id| {
                        s.leases
                            .iter()
                            .any(|l| l.node == **id && l.expires_ms > now)
                    })
                    .count();
                let view = fabric.gossip.view();
                known = ids
                    .iter()
                    .filter(|id| {
                        view.get(id)
                            .is_some_and(|n| n.addrs().is_some() && n.capacity().is_some())
                    })
                    .count();
                if leased == ids.len() && known == ids.len() {
                    if let Some(l) = c.leader {
                        return Ok(l.to_string());
                    }
                }
            }
            if Instant::now() >= until {
                return Err(failed(format!(
                    "the cluster did not come up within {}: {leased} of {} chunkservers hold a lease, gossip knows {known}; see the logs in {}",
                    format_ms(START_TIMEOUT_MS),
                    ids.len(),
                    self.layout.logs().display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(START_POLL_MS)).await;
        }
    }

    /// LUN `demo` mapped on [`IQN`]: made where missing, kept where there.
    /// Returns the LUN and its number on the target.
    async fn ensure_lun(&mut self, fabric: &Fabric, size: Option<u64>) -> CliResult<(Lun, u16)> {
        let config = self.config_path();
        let meta_err = |e| CliError::from_client(e, &config);
        let summary = match fabric
            .meta
            .read(ReadRequest::Summary)
            .await
            .map_err(meta_err)?
        {
            ReadReply::Summary(s) => *s,
            _ => {
                return Err(failed(
                    "the metadata answered a Summary read with something else".into(),
                ))
            }
        };
        let config = &config;
        let admin = |cmd: Command| async move {
            fabric
                .meta
                .admin(cmd)
                .await
                .map(|r| r.outcome)
                .map_err(|e| CliError::from_client(e, config))
        };
        let lun = match summary.luns.iter().find(|l| l.name == LUN_NAME) {
            Some(l) => {
                let note = match size {
                    Some(s) if s != l.size_bytes => format!(
                        " (--size {} ignored: it is made once; weft lun resize grows it)",
                        format_size(s)
                    ),
                    _ => String::new(),
                };
                self.say(&format!(
                    "  LUN           {LUN_NAME}: {}, EC {}+{}, kept from the last run{note}",
                    format_size(l.size_bytes),
                    l.policy.ec.k,
                    l.policy.ec.m
                ));
                l.clone()
            }
            None => {
                let ec = layout::profile(self.state.nodes.len());
                let outcome = admin(Command::CreateLun {
                    name: LUN_NAME.into(),
                    size_bytes: size.unwrap_or(SIZE_DEFAULT),
                    block_size: 512,
                    policy: Policy::new(ec),
                    naa: [0; 16],
                    serial: String::new(),
                    now_ms: 0,
                })
                .await?;
                let Outcome::Lun(l) = outcome else {
                    return Err(failed(format!(
                        "creating LUN {LUN_NAME} answered {outcome:?}"
                    )));
                };
                self.say(&format!(
                    "  LUN           {LUN_NAME} created: {}, EC {}+{}",
                    format_size(l.size_bytes),
                    ec.k,
                    ec.m
                ));
                l
            }
        };
        let target = summary.targets.iter().find(|t| t.iqn == IQN);
        if target.is_none() {
            admin(Command::CreateTarget {
                iqn: IQN.into(),
                now_ms: 0,
            })
            .await?;
        }
        let mapped = target.and_then(|t| t.luns.iter().find(|(_, id)| **id == lun.id));
        let lun_no = match mapped {
            Some((n, _)) => *n,
            None => {
                let taken: Vec<u16> = target
                    .map(|t| t.luns.keys().copied().collect())
                    .unwrap_or_default();
                let n = (0u16..).find(|n| !taken.contains(n)).unwrap_or(0);
                admin(Command::MapLun {
                    iqn: IQN.into(),
                    lun: n,
                    name: LUN_NAME.into(),
                })
                .await?;
                n
            }
        };
        self.say(&format!(
            "  target        {IQN}: {LUN_NAME} is LUN {lun_no}{}",
            if target.is_some() { "" } else { " (created)" }
        ));
        Ok((lun, lun_no))
    }

    /// Until the portal accepts connections (the last gateway started).
    async fn wait_portal(&mut self, portal: SocketAddr) -> CliResult<()> {
        let until = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
        loop {
            self.check_children()?;
            if tokio::net::TcpStream::connect(portal).await.is_ok() {
                return Ok(());
            }
            if Instant::now() >= until {
                return Err(failed(format!(
                    "the gateway's portal {portal} did not open within {}; see {}",
                    format_ms(START_TIMEOUT_MS),
                    self.layout.logs().display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(START_POLL_MS)).await;
        }
    }

    fn write_client_config(&self) -> CliResult<()> {
        let endpoints = self
            .state
            .nodes
            .iter()
            .map(|n| {
                Ok(Endpoint {
                    node: NodeId::new(&n.id)?,
                    addr: n.fabric.to_string(),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .map_err(CliError::Failed)?;
        let cfg = ClientConfig {
            cert_dir: PathBuf::from("certs").join(layout::ADMIN_ID),
            endpoints,
            timeout_ms: None,
        };
        let path = self.config_path();
        write_client_config(&path, &cfg)
            .map_err(|e| failed(format!("cannot write {}: {e}", path.display())))
    }

    fn write_ready(&self, lun_no: u16) -> CliResult<()> {
        let ready = Ready {
            portals: self.state.portals().iter().map(|p| p.to_string()).collect(),
            iqn: IQN.into(),
            lun: lun_no,
            lun_name: LUN_NAME.into(),
            processes: self
                .children
                .iter()
                .map(|c| ReadyProcess {
                    role: c.kind.as_str(),
                    node_id: c.id.clone(),
                    pid: c.pid,
                    data_dir: c.data_dir.display().to_string(),
                })
                .collect(),
        };
        let mut text =
            serde_json::to_string_pretty(&ready).map_err(|e| failed(format!("ready.json: {e}")))?;
        text.push('\n');
        write_atomic(&self.layout.ready(), text.as_bytes()).map_err(CliError::Failed)
    }

    fn banner(&mut self, lun: &Lun, lun_no: u16, took: Duration) {
        let portals = self.state.portals();
        let p0 = portals[0];
        let dir = shell_word(&self.layout.dir.display().to_string());
        let config = shell_word(&self.config_path().display().to_string());
        let mut t = String::new();
        t.push_str(&format!(
            "\nweft up: ready in {:.1} s\n\n",
            took.as_secs_f64()
        ));
        for (i, p) in portals.iter().enumerate() {
            t.push_str(&format!(
                "  portal   {p}{}\n",
                if portals.len() > 1 {
                    format!("  (gw-{}, TPGT {})", i + 1, i + 1)
                } else {
                    String::new()
                }
            ));
        }
        t.push_str(&format!("  target   {IQN}\n"));
        t.push_str(&format!(
            "  LUN {lun_no}    {LUN_NAME}: {}, EC {}+{} over {} chunkservers\n\n",
            format_size(lun.size_bytes),
            lun.policy.ec.k,
            lun.policy.ec.m,
            self.state.nodes.len()
        ));
        t.push_str("Linux (open-iscsi):\n");
        for p in &portals {
            t.push_str(&format!(
                "  sudo iscsiadm -m discovery -t sendtargets -p {p}\n"
            ));
        }
        t.push_str(&format!(
            "  sudo iscsiadm -m node -T {IQN} {} --login\n",
            if portals.len() > 1 {
                String::new()
            } else {
                format!("-p {p0}")
            }
        ));
        if portals.len() > 1 {
            t.push_str("  sudo multipath -ll    (one device, a path per portal)\n");
        }
        t.push_str("QEMU:\n");
        t.push_str(&format!(
            "  qemu-system-x86_64 -m 2G -drive file=iscsi://{p0}/{IQN}/{lun_no},format=raw,if=virtio\n"
        ));
        t.push_str("weft:\n");
        t.push_str(&format!("  export WEFT_CONFIG={config}\n"));
        t.push_str("  weft status\n\n");
        t.push_str(&format!(
            "Ctrl-C stops the cluster; weft up --dir {dir} starts it again with the same data.\n"
        ));
        self.say(t.trim_end_matches('\n'));
    }

    /// The live status line, until a signal (the caller's select) ends it.
    async fn watch(&mut self, fabric: &Fabric) -> CliResult<()> {
        let started = Instant::now();
        let mut last_plain: Option<(String, Instant)> = None;
        loop {
            let mut died = Vec::new();
            for c in &mut self.children {
                if let Some(status) = c.poll() {
                    died.push(format!(
                        "weft up: {} {} exited unexpectedly ({}): {}; see {}",
                        c.kind.as_str(),
                        c.id,
                        describe(status),
                        c.last_log_line(),
                        c.log.display()
                    ));
                }
            }
            for d in died {
                self.say(&d);
            }
            let line = self.status_line(fabric).await;
            let uptime = format!("up {}", uptime(started.elapsed()));
            if self.terminal {
                // One line that fits, or the redraw would scroll.
                let mut text = format!("{uptime}  {line}");
                if let Some(cols) = terminal_columns() {
                    if let Some((cut, _)) = text.char_indices().nth(cols.saturating_sub(1)) {
                        text.truncate(cut);
                    }
                }
                let mut out = std::io::stdout().lock();
                let _ = write!(out, "\r\x1b[K{text}");
                let _ = out.flush();
                self.status_shown = true;
            } else {
                let due = match &last_plain {
                    None => true,
                    Some((l, at)) => {
                        *l != line || at.elapsed() >= Duration::from_millis(STATUS_PLAIN_REPEAT_MS)
                    }
                };
                if due {
                    println!("{uptime}  {line}");
                    last_plain = Some((line, Instant::now()));
                }
            }
            tokio::time::sleep(Duration::from_millis(STATUS_INTERVAL_MS)).await;
        }
    }

    async fn status_line(&self, fabric: &Fabric) -> String {
        let running = |k: Kind| {
            self.children
                .iter()
                .filter(|c| c.kind == k && c.running())
                .count()
        };
        let (cs, gw) = (running(Kind::Chunkserver), running(Kind::Gateway));
        let (n, g) = (self.state.nodes.len(), usize::from(self.state.gateways));
        let down: Vec<&str> = self
            .children
            .iter()
            .filter(|c| !c.running())
            .map(|c| c.id.as_str())
            .collect();
        let down = if down.is_empty() {
            String::new()
        } else {
            format!(" · DOWN: {}", down.join(" "))
        };
        let Some((s, c)) = read_status(fabric).await else {
            return format!("metadata not answering · nodes {cs}/{n} · gw {gw}/{g}{down}");
        };
        let view = fabric.gossip.view();
        let st = status::status(&s, &c, Some(&view), now_ms());
        let health = st.health.trim_start_matches("HEALTH_");
        let leader = c
            .leader
            .map(|l| l.to_string())
            .unwrap_or_else(|| "none".into());
        let lun = match s.luns.iter().find(|l| l.name == LUN_NAME) {
            Some(l) => {
                let count =
                    |v: &[(u64, u64)]| v.iter().find(|(id, _)| *id == l.id).map_or(0, |(_, k)| *k);
                let degraded = count(&s.degraded);
                format!(
                    " · {LUN_NAME} {}/{} ext{}",
                    count(&s.extents),
                    l.extents(),
                    if degraded > 0 {
                        format!(", {degraded} degraded")
                    } else {
                        String::new()
                    }
                )
            }
            None => String::new(),
        };
        let (used, total) = self
            .state
            .nodes
            .iter()
            .filter_map(|slot| NodeId::new(&slot.id).ok())
            .filter_map(|id| view.get(&id).and_then(|n| n.capacity()))
            .fold((0u64, 0u64), |(u, t), c| {
                (u + c.bytes_used, t + c.bytes_total)
            });
        let leased = if st.nodes.lease_valid == cs {
            String::new()
        } else {
            format!(" ({} leased)", st.nodes.lease_valid)
        };
        format!(
            "{health} · nodes {cs}/{n}{leased} · gw {gw}/{g} · leader {leader}{lun} · {}/{} used{down}",
            format_size(used),
            format_size(total)
        )
    }

    /// Gateways first (initiators lose their sessions before the data
    /// goes), then chunkservers; then `ready.json` goes.
    async fn stop(&mut self, why: &str) {
        let _ = std::fs::remove_file(self.layout.ready());
        if self.children.is_empty() {
            return;
        }
        self.say(&format!(
            "weft up: {why}: stopping the gateways and chunkservers …"
        ));
        let t0 = Instant::now();
        let (mut gws, mut css): (Vec<&mut Child>, Vec<&mut Child>) = self
            .children
            .iter_mut()
            .partition(|c| c.kind == Kind::Gateway);
        let mut killed =
            children::stop(&mut gws, Duration::from_millis(GATEWAY_STOP_GRACE_MS)).await;
        killed += children::stop(&mut css, Duration::from_millis(CHUNKSERVER_STOP_GRACE_MS)).await;
        let dir = shell_word(&self.layout.dir.display().to_string());
        self.say(&format!(
            "weft up: stopped in {:.1} s{}; the data stays in {dir} (weft up --dir {dir} starts it again)",
            t0.elapsed().as_secs_f64(),
            if killed > 0 {
                format!(" ({killed} process(es) did not stop in time and were killed)")
            } else {
                String::new()
            }
        ));
    }
}

/// `42s`, `3m05s`, `2h10m`.
fn uptime(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// Columns of the terminal on stdout, if it is one.
fn terminal_columns() -> Option<usize> {
    // SAFETY: TIOCGWINSZ fills a winsize; on failure it is left zeroed.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_col > 0).then_some(usize::from(ws.ws_col))
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The catalogue and the Raft group, if the metadata answers soon.
async fn read_status(fabric: &Fabric) -> Option<(Summary, ClusterInfo)> {
    let t = Duration::from_millis(STATUS_READ_TIMEOUT_MS);
    let s = match tokio::time::timeout(t, fabric.meta.read(ReadRequest::Summary)).await {
        Ok(Ok(ReadReply::Summary(s))) => *s,
        _ => return None,
    };
    let c = match tokio::time::timeout(t, fabric.meta.read(ReadRequest::Cluster)).await {
        Ok(Ok(ReadReply::Cluster(c))) => c,
        _ => return None,
    };
    Some((s, c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptimes() {
        for (secs, want) in [(0, "0s"), (59, "59s"), (185, "3m05s"), (7800, "2h10m")] {
            assert_eq!(uptime(Duration::from_secs(secs)), want);
        }
    }

    #[test]
    fn shell_words() {
        assert_eq!(shell_word("/tmp/weft-data"), "/tmp/weft-data");
        assert_eq!(shell_word("/tmp/my data"), "'/tmp/my data'");
        assert_eq!(shell_word("/tmp/it's"), r"'/tmp/it'\''s'");
    }
}
