//! A whole weft cluster as real processes on loopback: chunkservers (the
//! first three of them metadata voters), `weft-gateway --cluster`, and an
//! admin client. `weft-chunkserver` is another package's binary: it is
//! taken from the same target directory (build the workspace first).
#![allow(dead_code)]

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use fabric::identity::{Ca, NodeCredentials, NodeId, Role, Validity};
use fabric::metadata::client::MetaClient;
use fabric::metadata::rpc::{ReadReply, ReadRequest, Summary};
use fabric::metadata::{Command as MetaCommand, Extent, Outcome};
use fabric::placement::{EcProfile, Policy};
use fabric::rpc::{Client, RpcConfig};
use fabric::TlsConfig;

pub const IQN: &str = "iqn.2026-11.org.weft:test";

pub fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

/// A loopback port no listener holds now and that no other test of this
/// process was given: tests run in parallel, and the kernel hands a
/// released port out again (two clusters' nodes on one port).
pub fn free_port() -> SocketAddr {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&addr.port()) {
            given.push(addr.port());
            return addr;
        }
    }
}

fn chunkserver_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let bin = dir.join("weft-chunkserver");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build --release --workspace)",
        bin.display()
    );
    bin
}

pub struct Proc {
    pub name: String,
    pub config: PathBuf,
    pub log: PathBuf,
    pub addr: SocketAddr,
    pub data: PathBuf,
    bin: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Proc {
    pub fn start(&mut self) {
        assert!(self.child.is_none());
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut c = Command::new(&self.bin);
        c.args(&self.args)
            .env("RUST_LOG", "info,fabric=warn,openraft=warn")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        self.child = Some(c.spawn().unwrap());
    }

    pub fn set_env(&mut self, k: &str, v: Option<&str>) {
        self.env.retain(|(x, _)| x != k);
        if let Some(v) = v {
            self.env.push((k.into(), v.into()));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    /// Whether the process has exited (and reaps it).
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(_))) => {
                self.child = None;
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(25)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
    pub nodes: Vec<Proc>,
    pub gateways: Vec<Proc>,
    tls: TlsConfig,
}

impl Cluster {
    /// `n` chunkservers, the first three metadata voters, and `gateways`
    /// gateway configs (not started).
    pub fn new(n: usize, gateways: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("cluster-test").unwrap();
        let issue = |role, name: &str, sub: &str| {
            let creds = NodeCredentials {
                ca_cert_pem: ca.cert_pem().to_owned(),
                node: ca
                    .issue(role, &id(name), Validity::days_from(SystemTime::now(), 1))
                    .unwrap(),
            };
            let d = dir.path().join(sub);
            std::fs::create_dir_all(&d).unwrap();
            creds.save(&d).unwrap();
        };
        let names: Vec<String> = (1..=n).map(|i| format!("cs-{i}")).collect();
        let addrs: Vec<SocketAddr> = (0..n).map(|_| free_port()).collect();
        let voters: String = (0..n.min(3))
            .map(|j| {
                format!(
                    "  {{ node = \"{}\", addr = \"{}\" }},\n",
                    names[j], addrs[j]
                )
            })
            .collect();
        let mut nodes = Vec::new();
        for i in 0..n {
            issue(Role::Chunkserver, &names[i], &format!("certs-{i}"));
            let seeds: String = (0..n)
                .filter(|j| *j != i)
                .map(|j| {
                    format!(
                        "  {{ node = \"{}\", addr = \"{}\" }},\n",
                        names[j], addrs[j]
                    )
                })
                .collect();
            std::fs::write(dir.path().join(format!("boot-id-{i}")), "boot-1\n").unwrap();
            let config = dir.path().join(format!("node-{i}.toml"));
            std::fs::write(
                &config,
                format!(
                    r#"
[node]
id = "{name}"
[fabric]
listen = "{addr}"
cert_dir = "certs-{i}"
seeds = [
{seeds}]
[store]
data_dir = "data-{i}"
boot_id_path = "boot-id-{i}"
capacity = "4G"
chunk_bytes_max = "16M"
[scrub]
enabled = false
[gossip]
capacity_interval_ms = 300
[metadata]
voters = [
{voters}]
lease_ms = 3000
"#,
                    name = names[i],
                    addr = addrs[i],
                ),
            )
            .unwrap();
            nodes.push(Proc {
                name: names[i].clone(),
                args: vec!["--config".into(), config.display().to_string()],
                config,
                log: dir.path().join(format!("node-{i}.log")),
                addr: addrs[i],
                data: dir.path().join(format!("data-{i}")),
                bin: chunkserver_bin(),
                env: Vec::new(),
                child: None,
            });
        }
        let metadata: String = (0..n.min(3))
            .map(|j| {
                format!(
                    "  {{ node = \"{}\", addr = \"{}\" }},\n",
                    names[j], addrs[j]
                )
            })
            .collect();
        let mut gws = Vec::new();
        for g in 0..gateways {
            let name = format!("gw-{}", g + 1);
            issue(Role::Gateway, &name, &format!("gw-certs-{g}"));
            let portal = free_port();
            let config = dir.path().join(format!("gateway-{g}.toml"));
            std::fs::write(
                &config,
                format!(
                    r#"
[gateway]
portals = ["{portal}"]
tpgt = {tpgt}
[cluster]
node_id = "{name}"
cert_dir = "gw-certs-{g}"
metadata = [
{metadata}]
"#,
                    tpgt = g + 1
                ),
            )
            .unwrap();
            gws.push(Proc {
                name,
                args: vec!["--cluster".into(), config.display().to_string()],
                config,
                log: dir.path().join(format!("gateway-{g}.log")),
                addr: portal,
                data: PathBuf::new(),
                bin: PathBuf::from(env!("CARGO_BIN_EXE_weft-gateway")),
                env: Vec::new(),
                child: None,
            });
        }
        let admin = NodeCredentials {
            ca_cert_pem: ca.cert_pem().to_owned(),
            node: ca
                .issue(
                    Role::Admin,
                    &id("admin"),
                    Validity::days_from(SystemTime::now(), 1),
                )
                .unwrap(),
        };
        let tls = TlsConfig::new(&admin).unwrap();
        Cluster {
            dir,
            ca,
            nodes,
            gateways: gws,
            tls,
        }
    }

    pub fn rpc(&self) -> Client {
        Client::new(
            &self.tls,
            RpcConfig {
                backoff_initial_ms: 10,
                backoff_max_ms: 200,
                connect_timeout_ms: 1_000,
                ..RpcConfig::default()
            },
        )
    }

    pub fn admin(&self) -> MetaClient {
        let eps = self
            .nodes
            .iter()
            .take(3)
            .map(|n| (id(&n.name), n.addr))
            .collect();
        MetaClient::new(self.rpc(), eps).with_timeout(Duration::from_secs(30))
    }

    pub async fn summary(&self) -> Summary {
        match self.admin().read(ReadRequest::Summary).await {
            Ok(ReadReply::Summary(s)) => *s,
            other => panic!("summary: {other:?}\n{}", self.logs()),
        }
    }

    /// Appends `toml` (whole tables) to every chunkserver's config: takes
    /// effect at the next start.
    pub fn append_node_config(&self, toml: &str) {
        use std::io::Write;
        for n in &self.nodes {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&n.config)
                .unwrap();
            f.write_all(toml.as_bytes()).unwrap();
        }
    }

    /// Starts every chunkserver and waits until all registered.
    pub async fn start_nodes(&mut self) {
        for n in &mut self.nodes {
            n.start();
        }
        let end = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(ReadReply::Summary(s)) = self.admin().read(ReadRequest::Summary).await {
                if s.nodes.len() >= self.nodes.len() {
                    break;
                }
            }
            assert!(
                tokio::time::Instant::now() < end,
                "nodes did not register\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Let gossip spread capacity and addresses.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    /// Creates LUN `name` (`k`+1) mapped as LUN 0 of [`IQN`].
    pub async fn create_lun(&self, name: &str, size: u64, k: u8) {
        self.create_lun_ec(name, size, k, 1).await;
    }

    /// Creates LUN `name` (`k`+`m`) mapped as LUN 0 of [`IQN`].
    pub async fn create_lun_ec(&self, name: &str, size: u64, k: u8, m: u8) {
        let a = self.admin();
        let r = a
            .admin(MetaCommand::CreateLun {
                name: name.into(),
                size_bytes: size,
                block_size: 512,
                policy: Policy::new(EcProfile { k, m }),
                naa: [0; 16],
                serial: String::new(),
                now_ms: 0,
            })
            .await
            .unwrap();
        assert!(matches!(r.outcome, Outcome::Lun(_)));
        let _ = a
            .admin(MetaCommand::CreateTarget {
                iqn: IQN.into(),
                now_ms: 0,
            })
            .await;
        a.admin(MetaCommand::MapLun {
            iqn: IQN.into(),
            lun: 0,
            name: name.into(),
        })
        .await
        .unwrap();
    }

    /// Starts gateway `g` and waits until its portal accepts connections.
    pub async fn start_gateway(&mut self, g: usize) {
        self.gateways[g].start();
        let end = tokio::time::Instant::now() + Duration::from_secs(60);
        while tokio::net::TcpStream::connect(self.gateways[g].addr)
            .await
            .is_err()
        {
            assert!(
                !self.gateways[g].exited(),
                "gateway exited\n{}",
                self.gateways[g].log_tail()
            );
            assert!(
                tokio::time::Instant::now() < end,
                "gateway not ready\n{}",
                self.gateways[g].log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn url(&self, g: usize) -> String {
        format!("iscsi://{}/{IQN}/0", self.gateways[g].addr)
    }

    pub async fn extent(&self, lun: u64, index: u64) -> Option<Extent> {
        match self.admin().read(ReadRequest::Extent { lun, index }).await {
            Ok(ReadReply::Extent(e)) => e,
            other => panic!("{other:?}"),
        }
    }

    pub fn node_index(&self, name: &NodeId) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name.as_str())
            .unwrap()
    }

    /// Plays a reboot of node `i`'s kernel: the boot id its store reads
    /// changes (the store takes an unclean shutdown under another boot id
    /// for a loss of its page cache).
    pub fn new_boot(&self, i: usize) {
        let path = self.dir.path().join(format!("boot-id-{i}"));
        let old = std::fs::read_to_string(&path).unwrap();
        let n: u64 = old
            .trim()
            .strip_prefix("boot-")
            .and_then(|n| n.parse().ok())
            .unwrap();
        std::fs::write(&path, format!("boot-{}\n", n + 1)).unwrap();
    }

    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .chain(&self.gateways)
            .map(|n| format!("--- {} ---\n{}", n.name, n.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
