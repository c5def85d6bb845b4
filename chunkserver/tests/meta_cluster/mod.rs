//! A metadata cluster of real `weft-chunkserver` processes on loopback,
//! optionally with a TCP proxy on every replica-to-replica path so a test
//! can cut links for real (a partition), and an admin client.
#![allow(dead_code)]

use std::collections::HashSet;
use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fabric::identity::{Ca, NodeCredentials, NodeId, Role, Validity};
use fabric::metadata::client::MetaClient;
use fabric::metadata::rpc::{ClusterInfo, ReadReply, ReadRequest, Summary};
use fabric::rpc::{Client, RpcConfig};
use fabric::TlsConfig;
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

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

/// Proxies between replicas: `links[(i, j)]` carries i's calls to j.
/// Cutting a pair closes its connections and refuses new ones.
pub struct Proxies {
    cut: Arc<Mutex<HashSet<(usize, usize)>>>,
    changed: watch::Sender<u64>,
}

impl Proxies {
    fn new() -> Proxies {
        let (changed, _) = watch::channel(0);
        Proxies {
            cut: Arc::new(Mutex::new(HashSet::new())),
            changed,
        }
    }

    /// Starts the proxy for i → j at a fresh port and returns the port.
    fn spawn(&self, i: usize, j: usize, to: SocketAddr) -> SocketAddr {
        let std_l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_l.set_nonblocking(true).unwrap();
        let addr = std_l.local_addr().unwrap();
        let cut = self.cut.clone();
        let changed = self.changed.subscribe();
        tokio::spawn(async move {
            let l = TcpListener::from_std(std_l).unwrap();
            loop {
                let Ok((mut inbound, _)) = l.accept().await else {
                    continue;
                };
                if cut.lock().contains(&(i, j)) {
                    drop(inbound);
                    continue;
                }
                let cut = cut.clone();
                let mut changed2 = changed.clone();
                tokio::spawn(async move {
                    let Ok(mut out) = TcpStream::connect(to).await else {
                        return;
                    };
                    let cut_now = || cut.lock().contains(&(i, j));
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut out) => {}
                        _ = async {
                            loop {
                                if changed2.changed().await.is_err() { break; }
                                if cut_now() { break; }
                            }
                        } => {}
                    }
                });
            }
        });
        addr
    }

    /// Cuts every link to and from `node` (both directions).
    pub fn isolate(&self, node: usize, n: usize) {
        let mut c = self.cut.lock();
        for o in 0..n {
            if o != node {
                c.insert((node, o));
                c.insert((o, node));
            }
        }
        drop(c);
        self.changed.send_modify(|v| *v += 1);
    }

    pub fn heal(&self) {
        self.cut.lock().clear();
        self.changed.send_modify(|v| *v += 1);
    }
}

pub struct MNode {
    pub name: String,
    pub addr: SocketAddr,
    pub config: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl MNode {
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_weft-chunkserver"))
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info,fabric=warn,openraft=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let _ = c.wait();
        }
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for MNode {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
    pub nodes: Vec<MNode>,
    pub proxies: Option<Proxies>,
    tls: TlsConfig,
}

impl Cluster {
    /// `n` chunkservers, all metadata voters; with `proxied`, every
    /// replica reaches every other through a [`Proxies`] link. Must be
    /// called inside a tokio runtime (the proxies run on it).
    pub fn new(n: usize, proxied: bool) -> Cluster {
        Cluster::with_voters(n, proxied, n)
    }

    /// `n` chunkservers of which the first `voters` form the first
    /// membership; each later node lists itself as a voter too, ready to
    /// be added.
    pub fn with_voters(n: usize, proxied: bool, first_voters: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("meta-test").unwrap();
        let names: Vec<String> = (1..=n).map(|i| format!("m-{i}")).collect();
        let addrs: Vec<SocketAddr> = (0..n).map(|_| free_port()).collect();
        let proxies = proxied.then(Proxies::new);
        let mut nodes = Vec::new();
        for i in 0..n {
            let creds = NodeCredentials {
                ca_cert_pem: ca.cert_pem().to_owned(),
                node: ca
                    .issue(
                        Role::Chunkserver,
                        &id(&names[i]),
                        Validity::days_from(SystemTime::now(), 1),
                    )
                    .unwrap(),
            };
            let certs = dir.path().join(format!("certs-{i}"));
            std::fs::create_dir(&certs).unwrap();
            creds.save(&certs).unwrap();
            let mut voters = String::new();
            let mut seeds = String::new();
            for j in 0..n {
                let addr = match (&proxies, i == j) {
                    (Some(p), false) => p.spawn(i, j, addrs[j]),
                    _ => addrs[j],
                };
                if j >= first_voters && j != i {
                    continue;
                }
                voters.push_str(&format!(
                    "  {{ node = \"{}\", addr = \"{addr}\" }},\n",
                    names[j]
                ));
                if i != j {
                    seeds.push_str(&format!(
                        "  {{ node = \"{}\", addr = \"{}\" }},\n",
                        names[j], addrs[j]
                    ));
                }
            }
            let config = dir.path().join(format!("node-{i}.toml"));
            let text = format!(
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
capacity = "4G"
[scrub]
enabled = false
[gossip]
capacity_interval_ms = 300
[metadata]
voters = [
{voters}]
"#,
                name = names[i],
                addr = addrs[i],
            );
            std::fs::write(&config, text).unwrap();
            nodes.push(MNode {
                name: names[i].clone(),
                addr: addrs[i],
                config,
                log: dir.path().join(format!("node-{i}.log")),
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
            proxies,
            tls,
        }
    }

    pub fn start_all(&mut self) {
        for n in &mut self.nodes {
            n.start();
        }
    }

    fn rpc_client(&self) -> Client {
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

    /// An admin client of the given nodes (all when `None`).
    pub fn admin(&self, only: Option<&[usize]>, timeout: Duration) -> MetaClient {
        let eps = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| only.is_none_or(|o| o.contains(i)))
            .map(|(_, n)| (id(&n.name), n.addr))
            .collect();
        MetaClient::new(self.rpc_client(), eps).with_timeout(timeout)
    }

    /// What node `i` itself says about the Raft group.
    pub async fn cluster_info(&self, i: usize) -> Option<ClusterInfo> {
        let c = self.admin(Some(&[i]), Duration::from_millis(1_500));
        match c.read(ReadRequest::Cluster).await {
            Ok(ReadReply::Cluster(ci)) => Some(ci),
            _ => None,
        }
    }

    /// Waits until a running node names a leader that is running, and
    /// returns its index.
    pub async fn wait_leader(&self, within: Duration) -> usize {
        let end = tokio::time::Instant::now() + within;
        loop {
            for (i, n) in self.nodes.iter().enumerate() {
                if !n.running() {
                    continue;
                }
                if let Some(ci) = self.cluster_info(i).await {
                    if let Some(l) = ci.leader {
                        if let Some(li) = self.nodes.iter().position(|m| m.name == l.as_str()) {
                            if self.nodes[li].running() {
                                return li;
                            }
                        }
                    }
                }
            }
            assert!(
                tokio::time::Instant::now() < end,
                "no leader within {within:?}; logs:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `n` nodes have registered with the metadata (their
    /// agents do so right after start).
    pub async fn wait_registered(&self, n: usize) {
        let admin = self.admin(None, Duration::from_secs(20));
        let end = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.summary(&admin).await.nodes.len() < n {
            assert!(
                tokio::time::Instant::now() < end,
                "nodes did not register\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn summary(&self, client: &MetaClient) -> Summary {
        match client.read(ReadRequest::Summary).await {
            Ok(ReadReply::Summary(s)) => *s,
            other => panic!("summary: {other:?}\n{}", self.logs()),
        }
    }

    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {} ---\n{}", n.name, n.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
