//! What the CLI tests need: the `weft` binary run as a user runs it, and
//! a metadata cluster of real `weft-chunkserver` processes on loopback
//! (certificates made with `weft cert`, the client config written by
//! `admin_cli::config::write_client_config`, as `weft up` will).
#![allow(dead_code)]

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use admin_cli::config::{write_client_config, ClientConfig, Endpoint};
use fabric::NodeId;

/// Lease of each chunkserver: short, so that a killed node's lease lapses
/// within the test (the chunkserver accepts 1000 ms at least).
pub const LEASE_MS: u64 = 2_000;

/// `weft-chunkserver`, built beside this test's package: the test
/// executable is `target/<profile>/deps/cli-…`.
pub fn chunkserver_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable is in target/<profile>/deps");
    let bin = profile_dir.join("weft-chunkserver");
    assert!(
        bin.exists(),
        "{} is missing: build it first: cargo build --release --workspace",
        bin.display()
    );
    bin
}

/// `weft` with `args`, `env` set and nothing inherited that could change
/// its mind (config, CHAP secrets, the real home directory).
pub fn weft_in(home: &Path, env: &[(&str, &str)], args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weft"));
    cmd.args(args)
        .env("HOME", home)
        .env_remove("WEFT_CONFIG")
        .env_remove("WEFT_CHAP_SECRET")
        .env_remove("WEFT_CHAP_MUTUAL_SECRET")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run weft");
    if let Some(input) = stdin {
        use std::io::Write;
        let mut s = child.stdin.take().unwrap();
        s.write_all(input.as_bytes()).unwrap();
    }
    child.wait_with_output().expect("wait for weft")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Checks a failure: exit `code`, exactly one line on stderr, in weft's
/// form, containing `want`; nothing on stdout.
pub fn assert_fails(o: &Output, code: i32, want: &str, what: &str) {
    let err = stderr(o);
    assert_eq!(
        o.status.code(),
        Some(code),
        "{what}: exit {:?}, want {code}\nstdout: {}\nstderr: {err}",
        o.status.code(),
        stdout(o)
    );
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: want one line on stderr, got {err:?}"
    );
    assert!(
        lines[0].starts_with("weft: error: "),
        "{what}: {:?} is not in weft's form",
        lines[0]
    );
    assert!(err.contains(want), "{what}: stderr {err:?} lacks {want:?}");
    assert!(o.stdout.is_empty(), "{what}: stdout {:?}", stdout(o));
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

pub struct Node {
    pub name: String,
    pub addr: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn start(&mut self, bin: &Path) {
        let log = File::create(&self.log).unwrap();
        let child = Command::new(bin)
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info,fabric=warn,openraft=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
    /// The client config (`weft.toml`, admin certificate beside it).
    pub config: PathBuf,
    /// The CA, for issuing more certificates.
    pub ca_dir: PathBuf,
}

impl Cluster {
    /// `n` chunkservers, all metadata voters, started.
    pub fn start(n: usize) -> Cluster {
        let bin = chunkserver_bin();
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path();
        let ca_dir = dir.path().join("ca");
        let ok = |args: &[&str]| {
            let o = weft_in(home, &[], args, None);
            assert!(o.status.success(), "weft {args:?}: {}", stderr(&o));
        };
        ok(&[
            "cert",
            "init",
            "--dir",
            ca_dir.to_str().unwrap(),
            "--cluster-name",
            "cli-test",
        ]);
        let names: Vec<String> = (1..=n).map(|i| format!("m-{i}")).collect();
        let addrs: Vec<SocketAddr> = (0..n).map(|_| free_port()).collect();
        let mut nodes = Vec::new();
        for i in 0..n {
            let certs = dir.path().join(format!("certs-{i}"));
            ok(&[
                "cert",
                "issue",
                "--role",
                "chunkserver",
                "--node-id",
                &names[i],
                "--ca-dir",
                ca_dir.to_str().unwrap(),
                "--out",
                certs.to_str().unwrap(),
            ]);
            let mut voters = String::new();
            let mut seeds = String::new();
            for j in 0..n {
                let line = format!(
                    "  {{ node = \"{}\", addr = \"{}\" }},\n",
                    names[j], addrs[j]
                );
                voters.push_str(&line);
                if i != j {
                    seeds.push_str(&line);
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
lease_ms = {LEASE_MS}
voters = [
{voters}]
"#,
                name = names[i],
                addr = addrs[i],
            );
            std::fs::write(&config, text).unwrap();
            nodes.push(Node {
                name: names[i].clone(),
                addr: addrs[i],
                config,
                log: dir.path().join(format!("node-{i}.log")),
                child: None,
            });
        }
        for node in &mut nodes {
            node.start(&bin);
        }
        let admin = dir.path().join("client/admin");
        ok(&[
            "cert",
            "issue",
            "--role",
            "admin",
            "--node-id",
            "ops",
            "--ca-dir",
            ca_dir.to_str().unwrap(),
            "--out",
            admin.to_str().unwrap(),
        ]);
        let config = dir.path().join("client/weft.toml");
        write_client_config(
            &config,
            &ClientConfig {
                cert_dir: PathBuf::from("admin"),
                endpoints: nodes
                    .iter()
                    .map(|n| Endpoint {
                        node: NodeId::new(n.name.clone()).unwrap(),
                        addr: n.addr.to_string(),
                    })
                    .collect(),
                timeout_ms: None,
            },
        )
        .unwrap();
        Cluster {
            dir,
            nodes,
            config,
            ca_dir,
        }
    }

    pub fn home(&self) -> &Path {
        self.dir.path()
    }

    /// `weft args` with `WEFT_CONFIG` pointing at this cluster.
    pub fn weft(&self, args: &[&str]) -> Output {
        self.weft_stdin(args, &[], None)
    }

    pub fn weft_stdin(&self, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Output {
        let config = self.config.to_str().unwrap();
        let mut all = vec![("WEFT_CONFIG", config)];
        all.extend_from_slice(env);
        weft_in(self.home(), &all, args, stdin)
    }

    /// Runs `weft args`, which must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.weft(args);
        assert!(
            o.status.success(),
            "weft {args:?} failed ({:?}): {}\n{}",
            o.status.code(),
            stderr(&o),
            self.logs()
        );
        stdout(&o)
    }

    /// Runs `weft args -o json`, which must succeed; returns the document.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.ok(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("weft {all:?}: {e}: {out}"))
    }

    /// Waits until `n` nodes have registered (the leader refuses a profile
    /// wider than the registered nodes).
    pub fn wait_registered(&self, n: usize, within: Duration) {
        let end = Instant::now() + within;
        loop {
            let o = self.weft(&["node", "list", "-o", "json", "--timeout", "2s"]);
            if o.status.success() {
                let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
                if v.as_array().map_or(0, Vec::len) >= n {
                    return;
                }
            }
            assert!(
                Instant::now() < end,
                "{n} nodes did not register within {within:?}: {}\n{}",
                stderr(&o),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
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
