//! `weft` as an operator runs it: the real binary against a real 3-node
//! metadata cluster of `weft-chunkserver` processes on loopback, every
//! command in text and `-o json`, with the error paths and exit codes
//! (0 done, 1 refused, 2 usage, 3 unreachable).
//!
//! Needs `weft-chunkserver` built beside this test:
//! `cargo build --release --workspace && cargo test --release -p admin-cli`.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command as Process, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use admin_cli::config::{write_client_config, ClientConfig, Endpoint};
use fabric::identity::NodeCredentials;
use fabric::metadata::client::MetaClient;
use fabric::metadata::rpc::{ReadReply, ReadRequest};
use fabric::metadata::{ChunkState, Command, Extent, Outcome};
use fabric::rpc::{Client, RpcConfig};
use fabric::{NodeId, TlsConfig};
use serde_json::Value;
use support::{assert_fails, free_port, stderr, stdout, weft_in, Cluster};

const IQN: &str = "iqn.2026-01.org.weft.test:db";
const IQN2: &str = "iqn.2026-01.org.weft.test:scratch";
const INITIATOR: &str = "iqn.1994-05.com.redhat:host1";

fn names(v: &Value, key: &str) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x[key].as_str().unwrap_or_default().to_string())
        .collect()
}

fn codes(status: &Value) -> Vec<String> {
    names(&status["checks"], "code")
}

#[test]
fn operator_commands_against_a_real_cluster() {
    let started = Instant::now();
    let mut c = Cluster::start(3);
    c.wait_registered(3, Duration::from_secs(40));
    eprintln!("cluster registered after {:?}", started.elapsed());
    status_of_a_new_cluster(&c);
    luns(&c);
    targets(&c);
    extents_and_health(&c);
    top_and_capacity(&c);
    no_cli_left_in_gossip(&c);
    non_admin_certificate(&c);
    nodes(&mut c);
    eprintln!("all done after {:?}", started.elapsed());
}

fn status_of_a_new_cluster(c: &Cluster) {
    // Registration comes before the first lease renewal: wait for leases.
    let end = Instant::now() + Duration::from_secs(10);
    let s = loop {
        let s = c.json(&["status"]);
        if s["nodes"]["lease_valid"] == 3 || Instant::now() > end {
            break s;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(s["health"], "HEALTH_OK", "{s:#}");
    assert_eq!(s["metadata"]["voters"].as_array().unwrap().len(), 3);
    assert!(s["metadata"]["leader"].as_str().unwrap().starts_with("m-"));
    assert!(s["metadata"]["term"].as_u64().unwrap() >= 1);
    assert_eq!(s["nodes"]["total"], 3);
    assert_eq!(s["nodes"]["in"], 3);
    assert_eq!(s["luns"]["count"], 0);
    assert_eq!(s["extents"]["allocated"], 0);
    // Capacity comes by gossip: 3 nodes of 4 GiB, nothing used.
    let cap = &s["capacity"];
    assert_eq!(cap["nodes_reporting"], 3, "{s:#}");
    assert_eq!(cap["nodes"], 3);
    assert_eq!(cap["total_bytes"], 12u64 << 30);
    assert_eq!(cap["total"], "12 GiB");
    assert_eq!(cap["used_bytes"], 0);
    assert_eq!(cap["free_bytes"], 12u64 << 30);
    let text = c.ok(&["status"]);
    for want in [
        "health: HEALTH_OK",
        "metadata: 3 voters (",
        "3 nodes: 3 in, 0 draining, 0 out; 3 with a valid lease",
        "0 LUNs, 0 B provisioned",
        "usage:    0 B used of 12 GiB (0.0 %), 12 GiB free for new chunks",
    ] {
        assert!(text.contains(want), "status lacks {want:?}:\n{text}");
    }
}

fn luns(c: &Cluster) {
    // No --ec: k+1 with k = 3 nodes in service − 1.
    let db = c.json(&["lun", "create", "db", "--size", "1G"]);
    assert_eq!(db["name"], "db");
    assert_eq!(db["ec"], "2+1");
    assert_eq!((db["k"].as_u64(), db["m"].as_u64()), (Some(2), Some(1)));
    assert_eq!(db["size_bytes"], 1u64 << 30);
    assert_eq!(db["size"], "1 GiB");
    assert_eq!(db["block_size"], 512);
    assert_eq!(db["spread"], "host");
    let naa = db["naa"].as_str().unwrap();
    assert_eq!(naa.len(), 32, "{naa}");
    assert!(naa.starts_with('6'), "NAA IEEE Registered Extended: {naa}");
    assert!(!db["serial"].as_str().unwrap().is_empty());

    let text = c.ok(&[
        "lun",
        "create",
        "logs",
        "--size",
        "512M",
        "--ec",
        "1+1",
        "--block-size",
        "4096",
        "--spread",
        "rack",
        "--site",
        "dc1",
        "--region",
        "eu",
    ]);
    assert!(
        text.contains("created LUN logs: 512 MiB, 1+1 over racks, block size 4096"),
        "{text}"
    );

    // Refused by the cluster: exit 1, its message.
    let refused = [
        (
            vec!["lun", "create", "wide", "--size", "1G", "--ec", "3+1"],
            "a 3+1 LUN needs 4 chunkservers in service; the cluster has 3",
        ),
        (
            vec!["lun", "create", "db", "--size", "1G"],
            "a LUN named \"db\" exists already",
        ),
        (vec!["lun", "show", "nope"], "no LUN named \"nope\""),
        (
            vec!["lun", "resize", "nope", "--size", "2G"],
            "no LUN named \"nope\"",
        ),
    ];
    for (args, want) in &refused {
        assert_fails(&c.weft(args), 1, want, &format!("{args:?}"));
    }
    // Bad input: exit 2, before anything is sent.
    let bad = [
        (
            vec!["lun", "create", "x", "--size", "12Q"],
            "unknown size unit \"Q\"",
        ),
        (vec!["lun", "create", "x", "--size", "20GB"], "ambiguous"),
        (
            vec!["lun", "create", "x", "--size", "1000"],
            "not a positive multiple of the block size (512 bytes)",
        ),
        (
            vec!["lun", "create", "x", "--size", "1G", "--ec", "4+5"],
            "m must be at most 4",
        ),
        (
            vec!["lun", "create", "x", "--size", "1G", "--ec", "four"],
            "write k+m",
        ),
        (
            vec!["lun", "create", "x", "--size", "1G", "--block-size", "1024"],
            "use 512 or 4096",
        ),
        (
            vec!["lun", "create", "bad name", "--size", "1G"],
            "invalid LUN name",
        ),
        (vec!["lun", "resize", "db", "--size=-1G"], "is not a size"),
    ];
    for (args, want) in &bad {
        assert_fails(&c.weft(args), 2, want, &format!("{args:?}"));
    }

    let list = c.json(&["lun", "list"]);
    assert_eq!(names(&list, "name"), ["db", "logs"]);
    assert_eq!(list[1]["sites"], serde_json::json!(["dc1"]));
    assert_eq!(list[1]["regions"], serde_json::json!(["eu"]));
    let text = c.ok(&["lun", "list"]);
    let header = text.lines().next().unwrap();
    assert!(
        header.starts_with("NAME") && header.contains("EXTENTS"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("db ") && l.contains("1 GiB") && l.contains("2+1")),
        "{text}"
    );

    let show = c.json(&["lun", "show", "db"]);
    // 1 GiB over extents of 2 × 16 MiB.
    assert_eq!(show["extents_total"], 32);
    assert_eq!(show["extents_allocated"], 0);
    assert_eq!(show["extents_degraded"], 0);
    assert_eq!(show["mapped"], serde_json::json!([]));
    assert_eq!(show["naa"], db["naa"]);
    assert!(show.get("extents").is_none());
    let text = c.ok(&["lun", "show", "db"]);
    for want in [
        "LUN db (id ".to_string(),
        format!("/dev/disk/by-id/wwn-0x{naa}"),
        format!("serial:      {}", db["serial"].as_str().unwrap()),
        "0 of 32 allocated (32 MiB each), 0 degraded".into(),
        "mapped:      -".into(),
    ] {
        assert!(text.contains(&want), "lun show lacks {want:?}:\n{text}");
    }

    let r = c.json(&["lun", "resize", "db", "--size", "2G"]);
    assert_eq!(
        (r["old_size_bytes"].as_u64(), r["size_bytes"].as_u64()),
        (Some(1 << 30), Some(2 << 30))
    );
    let text = c.ok(&["lun", "resize", "logs", "--size", "1G"]);
    assert!(
        text.contains("resized LUN logs: 512 MiB -> 1 GiB"),
        "{text}"
    );
    let text = c.ok(&["lun", "resize", "db", "--size", "2G"]);
    assert!(text.contains("LUN db is 2 GiB already"), "{text}");
    assert_fails(
        &c.weft(&["lun", "resize", "db", "--size", "1G"]),
        1,
        "only growing is allowed",
        "shrink",
    );
    assert_eq!(c.json(&["lun", "show", "db"])["size_bytes"], 2u64 << 30);
}

fn targets(c: &Cluster) {
    let t = c.json(&["target", "create", IQN]);
    assert_eq!(t["iqn"], IQN);
    assert_eq!(t["luns"], serde_json::json!([]));
    assert_eq!(t["acl"], serde_json::json!([]));
    assert!(t["chap"].is_null());
    assert_fails(
        &c.weft(&["target", "create", "not-an-iqn"]),
        2,
        "invalid iSCSI name \"not-an-iqn\"",
        "bad IQN",
    );
    assert_fails(
        &c.weft(&["target", "create", "iqn.2026-1.org.x:y"]),
        2,
        "invalid iSCSI name",
        "bad IQN date",
    );
    assert_fails(
        &c.weft(&["target", "create", IQN]),
        1,
        "exists already",
        "duplicate target",
    );

    // Lowest free LUN number by default; mapping again is a no-op.
    assert_eq!(c.json(&["target", "map", IQN, "db"])["lun"], 0);
    let text = c.ok(&["target", "map", IQN, "logs"]);
    assert!(
        text.contains(&format!("mapped LUN logs to {IQN} as LUN 1")),
        "{text}"
    );
    assert_eq!(c.json(&["target", "map", IQN, "db"])["lun"], 0);
    assert_fails(
        &c.weft(&["target", "map", IQN, "nope"]),
        1,
        "no LUN named \"nope\"",
        "map unknown LUN",
    );
    assert_fails(
        &c.weft(&["target", "map", "iqn.2026-01.org.weft.test:none", "db"]),
        1,
        "no target iqn.2026-01.org.weft.test:none",
        "map into unknown target",
    );
    assert_fails(
        &c.weft(&["target", "map", IQN, "db", "--lun", "300"]),
        2,
        "300",
        "LUN number out of range",
    );

    let show = c.json(&["target", "show", IQN]);
    assert_eq!(names(&show["luns"], "name"), ["db", "logs"]);
    assert_eq!(show["luns"][1]["lun"], 1);
    assert_eq!(
        c.json(&["lun", "show", "db"])["mapped"],
        serde_json::json!([{"target": IQN, "lun": 0}])
    );
    assert_fails(
        &c.weft(&["lun", "delete", "db", "--yes"]),
        1,
        &format!(
            "LUN \"db\" is mapped as LUN 0 of {IQN}: unmap it first (weft target unmap {IQN} 0)"
        ),
        "delete a mapped LUN",
    );
    assert_fails(
        &c.weft(&["lun", "delete", "db"]),
        2,
        "add --yes to confirm",
        "delete without --yes",
    );

    // ACL.
    let t = c.json(&["target", "acl", "add", IQN, INITIATOR]);
    assert_eq!(t["acl"], serde_json::json!([INITIATOR]));
    assert_fails(
        &c.weft(&["target", "acl", "add", IQN, "host1"]),
        2,
        "invalid iSCSI name",
        "bad initiator",
    );
    assert_fails(
        &c.weft(&[
            "target",
            "acl",
            "remove",
            IQN,
            "iqn.1994-05.com.redhat:other",
        ]),
        1,
        "is not in the ACL",
        "remove a stranger",
    );
    let text = c.ok(&["target", "acl", "remove", IQN, INITIATOR]);
    assert!(
        text.contains("the ACL is empty now: any initiator may log in"),
        "{text}"
    );
    c.ok(&["target", "acl", "add", IQN, INITIATOR]);

    // CHAP: secrets from stdin and from the environment, never printed.
    let o = c.weft_stdin(
        &[
            "target",
            "chap",
            "set",
            IQN,
            "--user",
            "host1",
            "--secret-stdin",
            "-o",
            "json",
        ],
        &[],
        Some("initiator-secret-1\n"),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let t: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        t["chap"],
        serde_json::json!({"user": "host1", "mutual_user": null})
    );
    assert!(!stdout(&o).contains("initiator-secret-1"));
    let o = c.weft_stdin(
        &[
            "target",
            "chap",
            "set",
            IQN,
            "--user",
            "host1",
            "--mutual-user",
            "tgt",
        ],
        &[
            ("WEFT_CHAP_SECRET", "initiator-secret-2"),
            ("WEFT_CHAP_MUTUAL_SECRET", "target-secret-22"),
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("mutual (user host1, target user tgt)"),
        "{}",
        stdout(&o)
    );
    assert!(!stdout(&o).contains("secret-2"));
    assert_fails(
        &c.weft(&[
            "target", "chap", "set", IQN, "--user", "host1", "--secret", "short",
        ]),
        1,
        "invalid CHAP settings",
        "short secret",
    );
    assert_fails(
        &c.weft(&["target", "chap", "set", IQN, "--user", "host1"]),
        2,
        "give it with --secret-stdin",
        "no secret",
    );
    assert_fails(
        &c.weft_stdin(
            &[
                "target",
                "chap",
                "set",
                IQN,
                "--user",
                "u",
                "--mutual-user",
                "m",
                "--secret-stdin",
            ],
            &[],
            Some("same-secret-123\nsame-secret-123\n"),
        ),
        1,
        "must differ",
        "mutual secret equal to the initiator's",
    );
    let text = c.ok(&["target", "show", IQN]);
    for want in [
        format!("target {IQN}"),
        "  0  db  2 GiB".into(),
        "  1  logs  1 GiB".into(),
        format!("ACL:      {INITIATOR}"),
        "CHAP:     mutual (user host1, target user tgt)".into(),
    ] {
        assert!(text.contains(&want), "target show lacks {want:?}:\n{text}");
    }
    assert!(!text.contains("secret-2"), "{text}");
    let list = c.json(&["target", "list"]);
    assert_eq!(names(&list, "iqn"), [IQN]);
    assert_eq!(list[0]["chap"]["mutual_user"], "tgt");
    let text = c.ok(&["target", "list"]);
    assert!(
        text.lines()
            .any(|l| l.starts_with(IQN) && l.contains("0:db,1:logs") && l.contains("mutual")),
        "{text}"
    );
    assert!(c.json(&["target", "chap", "clear", IQN])["chap"].is_null());

    // Unmap by number or by name.
    let text = c.ok(&["target", "unmap", IQN, "logs"]);
    assert!(
        text.contains(&format!("unmapped LUN 1 from {IQN}")),
        "{text}"
    );
    assert_fails(
        &c.weft(&["target", "unmap", IQN, "5"]),
        1,
        "maps nothing at LUN number 5",
        "unmap a free number",
    );
    assert_fails(
        &c.weft(&["target", "unmap", IQN, "logs"]),
        1,
        "is not mapped in",
        "unmap an unmapped LUN",
    );

    // Delete needs --yes; a second delete finds nothing.
    c.ok(&["target", "create", IQN2]);
    assert_fails(
        &c.weft(&["target", "delete", IQN2]),
        2,
        "add --yes",
        "target delete without --yes",
    );
    assert_eq!(
        c.json(&["target", "delete", IQN2, "--yes"])["deleted"],
        IQN2
    );
    assert_fails(
        &c.weft(&["target", "delete", IQN2, "--yes"]),
        1,
        "no target",
        "delete twice",
    );
}

/// TLS as a chunkserver `id`, with a certificate `weft cert issue` makes.
fn chunkserver_tls(c: &Cluster, id: &str) -> TlsConfig {
    let dir = c.home().join(id);
    let o = weft_in(
        c.home(),
        &[],
        &[
            "cert",
            "issue",
            "--role",
            "chunkserver",
            "--node-id",
            id,
            "--ca-dir",
            c.ca_dir.to_str().unwrap(),
            "--out",
            dir.to_str().unwrap(),
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    TlsConfig::new(&NodeCredentials::load(&dir).unwrap()).unwrap()
}

/// A chunkserver's metadata client (extents are placed and changed by
/// gateways and chunkservers, not by operators).
fn node_client(c: &Cluster, rt: &tokio::runtime::Runtime) -> MetaClient {
    let tls = chunkserver_tls(c, "fixer");
    let eps = c
        .nodes
        .iter()
        .map(|n| (NodeId::new(n.name.clone()).unwrap(), n.addr))
        .collect();
    let _guard = rt.enter();
    MetaClient::new(Client::new(&tls, RpcConfig::default()), eps)
        .with_timeout(Duration::from_secs(10))
}

/// Allocates extents 0..3 of `lun` and marks a chunk of extent 1 as being
/// rebuilt (degraded).
fn allocate_and_degrade(c: &Cluster, lun: &str) -> Vec<Extent> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = node_client(c, &rt);
    rt.block_on(async {
        let id = match client
            .read(ReadRequest::Lun { name: lun.into() })
            .await
            .unwrap()
        {
            ReadReply::Lun(l) => l.id,
            other => panic!("{other:?}"),
        };
        let mut extents = Vec::new();
        for index in 0..3 {
            // The leader places from its gossiped view: wait for it.
            let end = Instant::now() + Duration::from_secs(15);
            let e = loop {
                match client
                    .node(Command::AllocateExtent {
                        lun: id,
                        index,
                        nodes: vec![],
                    })
                    .await
                {
                    Ok(r) => match r.outcome {
                        Outcome::Extent(e) => break e,
                        other => panic!("{other:?}"),
                    },
                    Err(e) if Instant::now() < end => {
                        eprintln!("allocate: {e}; retrying");
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    Err(e) => panic!("allocate extent {index}: {e}\n{}", c.logs()),
                }
            };
            extents.push(e);
        }
        let e = &extents[1];
        let mut chunks = e.chunks.clone();
        chunks[0] = ChunkState::Rebuilding {
            to: e.nodes[0].clone(),
        };
        client
            .node(Command::UpdateExtent {
                lun: id,
                index: 1,
                expected_epoch: e.epoch,
                nodes: e.nodes.clone(),
                primary: e.primary,
                chunks,
                now_ms: 0,
            })
            .await
            .unwrap();
        extents
    })
}

fn extents_and_health(c: &Cluster) {
    let extents = allocate_and_degrade(c, "db");
    let show = c.json(&["lun", "show", "db"]);
    assert_eq!(show["extents_allocated"], 3);
    assert_eq!(show["extents_degraded"], 1);
    let show = c.json(&["lun", "show", "db", "--extents"]);
    let ex = show["extents"].as_array().unwrap();
    assert_eq!(ex.len(), 3);
    assert_eq!(ex[1]["index"], 1);
    assert_eq!(ex[1]["epoch"], extents[1].epoch + 1);
    assert_eq!(ex[1]["nodes"].as_array().unwrap().len(), 3);
    assert!(
        ex[1]["chunks"][0]
            .as_str()
            .unwrap()
            .starts_with("rebuilding onto m-"),
        "{show:#}"
    );
    assert_eq!(ex[0]["chunks"], serde_json::json!(["ok", "ok", "ok"]));
    let text = c.ok(&["lun", "show", "db", "--extents"]);
    assert!(
        text.contains("EXTENT") && text.contains("rebuilding onto"),
        "{text}"
    );
    assert!(
        text.contains("3 of 64 allocated (32 MiB each), 1 degraded"),
        "{text}"
    );
    let text = c.ok(&["lun", "list"]);
    assert!(
        text.lines()
            .any(|l| l.starts_with("db ") && l.contains("3/64")),
        "{text}"
    );

    let s = c.json(&["status"]);
    assert_eq!(s["health"], "HEALTH_WARN", "{s:#}");
    assert!(codes(&s).contains(&"EXTENTS_DEGRADED".to_string()), "{s:#}");
    assert_eq!(s["extents"]["allocated"], 3);
    assert_eq!(s["extents"]["degraded"], 1);
    assert_eq!(
        s["extents"]["degraded_by_lun"],
        serde_json::json!([{"name": "db", "extents": 1}])
    );
    assert_eq!(s["luns"]["count"], 2);
    assert_eq!(s["luns"]["provisioned_bytes"], 3u64 << 30);
    assert_eq!(s["targets"], 1);
    let text = c.ok(&["status"]);
    assert!(text.contains("health: HEALTH_WARN"), "{text}");
    assert!(
        text.contains("1 extent(s) degraded") && text.contains("LUN db 1"),
        "{text}"
    );
    assert!(
        text.contains("2 LUNs, 3 GiB provisioned; 1 targets"),
        "{text}"
    );

    let holder = extents[0].nodes[0].to_string();
    assert_eq!(c.json(&["node", "show", &holder])["extents_held"], 3);
    assert_fails(
        &c.weft(&["node", "remove", &holder, "--yes"]),
        1,
        &format!("node {holder} still holds chunks of 3 extents: drain it first"),
        "remove a node holding chunks",
    );

    // Unmapped and deleted, its extents are freed.
    c.ok(&["target", "unmap", IQN, "0"]);
    let d = c.json(&["lun", "delete", "db", "--yes"]);
    assert_eq!(d, serde_json::json!({"deleted": "db", "extents_freed": 3}));
    let s = c.json(&["status"]);
    assert_eq!(s["extents"]["allocated"], 0);
    assert!(
        !codes(&s).contains(&"EXTENTS_DEGRADED".to_string()),
        "{s:#}"
    );
    let text = c.ok(&["lun", "delete", "logs", "--yes"]);
    assert!(
        text.contains("deleted LUN logs (0 extents freed)"),
        "{text}"
    );
    assert_eq!(
        c.ok(&["lun", "list"]).trim(),
        "no LUNs (create one: weft lun create NAME --size 20G)"
    );
}

/// The numbers of every chunkserver's node row in a `weft top -o json`
/// sample: (node, write ops/s, write bytes/s, write ops total).
fn node_writes(sample: &Value) -> Vec<(String, f64, u64, u64)> {
    sample["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("no nodes: {sample}"))
        .iter()
        .map(|n| {
            let io = &n["io"];
            (
                n["node"].as_str().unwrap_or_default().to_string(),
                io["write_ops_per_s"].as_f64().unwrap_or(-1.0),
                io["write_bytes_per_s"].as_u64().unwrap_or(0),
                io["write_ops_total"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// `weft top` while a LUN is written (an import fed slowly through stdin,
/// so that it lasts as long as the checks), then after; capacity in
/// `weft status` once chunks exist.
fn top_and_capacity(c: &Cluster) {
    c.ok(&["lun", "create", "perf", "--size", "1G"]);
    let mut import = Process::new(env!("CARGO_BIN_EXE_weft"))
        .args(["lun", "import", "-", "perf"])
        .env("HOME", c.home())
        .env("WEFT_CONFIG", &c.config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = import.stdin.take().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // About 20 MiB/s of non-zero bytes (zeroes would be unmapped, not
    // written), 512 MiB at most.
    let feeder = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let piece = vec![0x5au8; 1 << 20];
            for _ in 0..512 {
                if stop.load(Ordering::Relaxed) || input.write_all(&piece).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    let started = Instant::now();
    let busy = c.json(&["top", "--once"]);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(8),
        "the first sample comes after 2 s: {took:?}"
    );
    let writes = node_writes(&busy);
    assert_eq!(
        writes.iter().map(|w| w.0.as_str()).collect::<Vec<_>>(),
        ["m-1", "m-2", "m-3"],
        "{busy:#}"
    );
    for (node, ops, bytes, total) in &writes {
        // 2+1 over 3 nodes: every node holds a chunk of every extent.
        assert!(
            *ops > 0.0 && *bytes > 0 && *total > 0,
            "{node} shows no writes while the import runs: {busy:#}"
        );
    }
    for n in busy["nodes"].as_array().unwrap() {
        assert_eq!(
            (n["role"].as_str(), n["state"].as_str()),
            (Some("chunkserver"), Some("alive")),
            "{n}"
        );
        assert_eq!(n["admin"], "in");
        assert!(n["io"]["write_latency_us_avg"].as_u64().unwrap() > 0, "{n}");
        assert!(n["io"]["write_latency_us_p99"].as_u64().unwrap() > 0, "{n}");
    }
    // No gateway serves perf here: its row has no counters.
    assert_eq!(
        busy["luns"],
        serde_json::json!([{"name": "perf", "id": busy["luns"][0]["id"], "gateways": [], "io": null}])
    );
    assert!(busy["time_ms"].as_u64().unwrap() > 0);
    assert_eq!(busy["interval_ms"], 1000);

    // Text, two samples a second apart, not on a terminal: no escapes.
    let text = c.ok(&["top", "-n", "2"]);
    assert!(!text.contains('\x1b'), "{text:?}");
    assert_eq!(text.matches("weft top  ").count(), 2, "{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("NODE ")).count(),
        2,
        "{text}"
    );
    let last = text.rsplit("weft top  ").next().unwrap();
    for node in ["m-1", "m-2", "m-3"] {
        let line = last
            .lines()
            .find(|l| l.starts_with(node))
            .unwrap_or_else(|| panic!("no {node} in {text}"));
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(&cells[1..3], ["chunkserver", "alive"], "{line}");
        assert_ne!(cells[4], "0", "WRITE/s of {node}: {text}");
        assert!(line.contains("/s"), "{line}");
    }
    assert!(
        last.lines()
            .any(|l| l.starts_with("perf ") && l.contains(" - ")),
        "{text}"
    );

    stop.store(true, Ordering::Relaxed);
    feeder.join().unwrap();
    let o = import.wait_with_output().unwrap();
    assert!(o.status.success(), "import: {}", stderr(&o));

    // Stopped: the rates fall to zero (each node publishes one last
    // record), the totals stay.
    let end = Instant::now() + Duration::from_secs(15);
    let idle = loop {
        let s = c.json(&["top", "--once"]);
        if node_writes(&s).iter().all(|w| w.1 == 0.0) {
            break s;
        }
        assert!(Instant::now() < end, "writes did not stop: {s:#}");
    };
    for ((node, _, bytes, total), before) in node_writes(&idle).iter().zip(&writes) {
        assert_eq!(*bytes, 0, "{node}");
        assert!(
            *total >= before.3,
            "{node}: total went from {} to {total}",
            before.3
        );
    }
    assert!(
        idle["nodes"][0]["io"]["write_latency_us_avg"].is_null(),
        "{idle:#}"
    );

    // Chunks exist now: capacity used, in JSON and text.
    let s = c.json(&["status"]);
    let cap = &s["capacity"];
    let used = cap["used_bytes"].as_u64().unwrap();
    assert!(used > 0 && cap["chunks"].as_u64().unwrap() > 0, "{s:#}");
    // Published every 300 ms here; the reserve is 0 and every node is in.
    assert_eq!(
        cap["free_bytes"].as_u64().unwrap() + used,
        12u64 << 30,
        "{s:#}"
    );
    let text = c.ok(&["status"]);
    assert!(
        text.contains(&format!(
            "usage:    {} used of 12 GiB",
            cap["used"].as_str().unwrap()
        )),
        "{text}"
    );
    c.ok(&["lun", "delete", "perf", "--yes"]);
}

/// Every `weft` command so far gossiped; none of them is left in the
/// cluster's view (the CLI gossips as an observer). A member would stay
/// there, dead, for an hour.
fn no_cli_left_in_gossip(c: &Cluster) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tls = chunkserver_tls(c, "watcher");
    let seeds = c
        .nodes
        .iter()
        .map(|n| fabric::gossip::Seed {
            node: NodeId::new(n.name.clone()).unwrap(),
            addr: n.addr,
        })
        .collect();
    let view = rt.block_on(async {
        let gossip = fabric::gossip::Gossip::new(
            fabric::gossip::DriverConfig::observer(NodeId::new("watcher").unwrap(), seeds),
            fabric::identity::Role::Chunkserver,
            "test",
        )
        .unwrap();
        gossip.start_observing(Client::new(&tls, RpcConfig::default()));
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let v = gossip.view();
            let full = v.nodes.len() >= 4 && v.nodes.values().all(|n| n.role().is_some());
            if full || Instant::now() > end {
                // A little longer: whatever the peers hold has arrived.
                tokio::time::sleep(Duration::from_millis(500)).await;
                return gossip.view();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let members: Vec<(String, Option<fabric::identity::Role>)> = view
        .nodes
        .iter()
        .map(|(id, n)| (id.to_string(), n.role()))
        .collect();
    let chunkserver = Some(fabric::identity::Role::Chunkserver);
    assert_eq!(
        members,
        [
            ("m-1".to_string(), chunkserver),
            ("m-2".to_string(), chunkserver),
            ("m-3".to_string(), chunkserver),
            ("watcher".to_string(), chunkserver),
        ],
        "the CLI (ops) must not be a member"
    );
}

/// A gateway certificate may read but not change: exit 1, told why.
fn non_admin_certificate(c: &Cluster) {
    let dir = c.home().join("gw-client");
    let o = weft_in(
        c.home(),
        &[],
        &[
            "cert",
            "issue",
            "--role",
            "gateway",
            "--node-id",
            "gw-1",
            "--ca-dir",
            c.ca_dir.to_str().unwrap(),
            "--out",
            dir.join("cert").to_str().unwrap(),
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let mut config = ClientConfig::load(&c.config).unwrap();
    config.cert_dir = "cert".into();
    let path = dir.join("weft.toml");
    write_client_config(&path, &config).unwrap();
    let p = path.to_str().unwrap();
    let o = weft_in(
        c.home(),
        &[],
        &["--config", p, "lun", "list", "-o", "json"],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = weft_in(
        c.home(),
        &[],
        &[
            "lun", "create", "x", "--size", "1G", "--ec", "1+1", "--config", p,
        ],
        None,
    );
    assert_fails(&o, 1, "forbidden", "gateway certificate creating a LUN");
    assert!(stderr(&o).contains("admin certificate"), "{}", stderr(&o));

    // An admin certificate of another cluster's CA: no TLS, exit 3, told why.
    let other = c.home().join("other-ca");
    for args in [
        vec!["cert", "init", "--dir", other.to_str().unwrap()],
        vec![
            "cert",
            "issue",
            "--role",
            "admin",
            "--node-id",
            "ops",
            "--ca-dir",
            other.to_str().unwrap(),
            "--out",
            dir.join("other").to_str().unwrap(),
        ],
    ] {
        let o = weft_in(c.home(), &[], &args, None);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    config.cert_dir = "other".into();
    write_client_config(&path, &config).unwrap();
    assert_fails(
        &weft_in(
            c.home(),
            &[],
            &["status", "--config", p, "--timeout", "1s"],
            None,
        ),
        3,
        "ca.crt in cert_dir must be the cluster's CA",
        "certificate of another CA",
    );
}

fn nodes(c: &mut Cluster) {
    let list = c.json(&["node", "list"]);
    assert_eq!(names(&list, "id"), ["m-1", "m-2", "m-3"]);
    let roles: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["metadata"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles.iter().filter(|r| **r == "leader").count(),
        1,
        "{list:#}"
    );
    assert_eq!(
        roles.iter().filter(|r| **r == "voter").count(),
        2,
        "{list:#}"
    );
    for n in list.as_array().unwrap() {
        assert_eq!(n["admin"], "in");
        assert_eq!(n["lease"]["valid"], true, "{n}");
    }
    let text = c.ok(&["node", "list"]);
    assert!(text.starts_with("NODE"), "{text}");
    assert!(
        text.lines()
            .filter(|l| l.contains("lease valid for"))
            .count()
            == 3,
        "{text}"
    );
    let text = c.ok(&["node", "show", "m-2"]);
    assert!(
        text.contains("node m-2") && text.contains("admin:     in"),
        "{text}"
    );
    assert!(text.contains("extents:   0 with a chunk here"), "{text}");
    assert_fails(
        &c.weft(&["node", "show", "nope-9"]),
        1,
        "no node nope-9",
        "unknown node",
    );
    assert_fails(
        &c.weft(&["node", "drain", "Bad_Id"]),
        2,
        "Bad_Id",
        "bad node id",
    );

    // Draining takes a node out of the default profile's count.
    assert_eq!(c.json(&["node", "drain", "m-3"])["admin"], "draining");
    assert_eq!(c.json(&["status"])["nodes"]["draining"], 1);
    assert_eq!(
        c.json(&["lun", "create", "one", "--size", "1G"])["ec"],
        "1+1"
    );
    c.ok(&["lun", "delete", "one", "--yes"]);
    let text = c.ok(&["node", "show", "m-3"]);
    assert!(
        text.contains("admin:     draining") && text.contains("drained: weft node remove"),
        "{text}"
    );
    let text = c.ok(&["node", "undrain", "m-3"]);
    assert!(text.contains("node m-3 is in service"), "{text}");
    assert_eq!(c.json(&["node", "show", "m-3"])["admin"], "in");

    assert_fails(
        &c.weft(&["node", "remove", "m-3"]),
        2,
        "add --yes",
        "remove without --yes",
    );
    let text = c.ok(&["node", "remove", "m-3", "--yes"]);
    assert!(
        text.contains("node m-3 is removed") && text.contains("still a metadata"),
        "{text}"
    );
    assert_fails(
        &c.weft(&["node", "drain", "m-3"]),
        1,
        "node m-3 was removed",
        "drain a removed node",
    );
    let s = c.json(&["status"]);
    assert_eq!(
        (s["nodes"]["total"].as_u64(), s["nodes"]["removed"].as_u64()),
        (Some(2), Some(1))
    );

    // A node that dies keeps its catalogue entry; its lease lapses.
    c.nodes[1].kill();
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let o = c.weft(&["node", "show", "m-2", "-o", "json"]);
        if o.status.success() {
            let v: Value = serde_json::from_slice(&o.stdout).unwrap();
            if v["lease"]["valid"] == false {
                break;
            }
        }
        assert!(
            Instant::now() < end,
            "m-2's lease did not lapse: {}",
            stderr(&o)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let text = c.ok(&["node", "list"]);
    assert!(
        text.lines()
            .any(|l| l.starts_with("m-2") && l.contains("lease expired") && l.contains(" ago")),
        "{text}"
    );
    let s = c.json(&["status"]);
    assert_eq!(s["health"], "HEALTH_WARN", "{s:#}");
    assert!(
        codes(&s).contains(&"NODE_LEASE_LAPSED".to_string()),
        "{s:#}"
    );
    let text = c.ok(&["status"]);
    assert!(
        text.contains("without a valid lease") && text.contains("m-2 (lease expired"),
        "{text}"
    );
}

/// A config whose endpoints are closed ports, with an admin certificate.
fn dead_config(
    dir: &Path,
    name: &str,
    timeout_ms: Option<u64>,
) -> (std::path::PathBuf, Vec<String>) {
    let ca = dir.join("ca");
    if !ca.join("ca.key").exists() {
        let o = weft_in(
            dir,
            &[],
            &["cert", "init", "--dir", ca.to_str().unwrap()],
            None,
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let o = weft_in(
            dir,
            &[],
            &[
                "cert",
                "issue",
                "--role",
                "admin",
                "--node-id",
                "ops",
                "--ca-dir",
                ca.to_str().unwrap(),
                "--out",
                dir.join("admin").to_str().unwrap(),
            ],
            None,
        );
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let addrs: Vec<String> = (0..2).map(|_| free_port().to_string()).collect();
    let config = ClientConfig {
        cert_dir: dir.join("admin"),
        endpoints: addrs
            .iter()
            .enumerate()
            .map(|(i, a)| Endpoint {
                node: NodeId::new(format!("cs-{i}")).unwrap(),
                addr: a.clone(),
            })
            .collect(),
        timeout_ms,
    };
    let path = dir.join(name);
    write_client_config(&path, &config).unwrap();
    (path, addrs)
}

#[test]
fn unreachable_cluster_exits_3_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let (with_key, addrs) = dead_config(home, "short.toml", Some(1_000));
    let (no_key, _) = dead_config(home, "default.toml", None);
    let cases: Vec<(Vec<&str>, &Path)> = vec![
        (vec!["status"], &with_key),
        (vec!["lun", "list", "-o", "json"], &with_key),
        (
            vec!["lun", "create", "x", "--size", "1G", "--ec", "1+1"],
            &with_key,
        ),
        (vec!["target", "create", IQN], &with_key),
        (vec!["node", "drain", "cs-1"], &with_key),
        (vec!["top", "--once", "-o", "json"], &with_key),
        (vec!["--timeout", "500ms", "node", "list"], &no_key),
    ];
    for (args, config) in cases {
        let start = Instant::now();
        let o = weft_in(
            home,
            &[("WEFT_CONFIG", config.to_str().unwrap())],
            &args,
            None,
        );
        let took = start.elapsed();
        assert_fails(
            &o,
            3,
            "cannot reach the cluster: no answer from the metadata within",
            &format!("{args:?}"),
        );
        assert!(took < Duration::from_secs(5), "{args:?} took {took:?}");
        let err = stderr(&o);
        if config == with_key.as_path() {
            for a in &addrs {
                assert!(err.contains(a), "{args:?}: {err} does not name {a}");
            }
            assert!(
                err.contains("check that those chunkservers are running"),
                "{err}"
            );
        }
    }
}

#[test]
fn config_is_found_by_flag_then_env_then_home() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let (flag, flag_addrs) = dead_config(home, "flag.toml", Some(300));
    let (env, env_addrs) = dead_config(home, "env.toml", Some(300));
    let (default, default_addrs) = dead_config(home, ".config/weft/weft.toml", Some(300));
    let tried = |env_vars: &[(&str, &str)], args: &[&str]| {
        let mut all = vec!["node", "list"];
        all.extend_from_slice(args);
        let o = weft_in(home, env_vars, &all, None);
        assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
        stderr(&o)
    };
    let env_var = [("WEFT_CONFIG", env.to_str().unwrap())];
    let err = tried(&env_var, &["--config", flag.to_str().unwrap()]);
    assert!(err.contains(&flag_addrs[0]), "--config first: {err}");
    let err = tried(&env_var, &[]);
    assert!(err.contains(&env_addrs[0]), "then WEFT_CONFIG: {err}");
    let err = tried(&[], &[]);
    assert!(
        err.contains(&default_addrs[0]),
        "then ~/.config/weft/weft.toml: {err}"
    );

    std::fs::remove_file(&default).unwrap();
    assert_fails(
        &weft_in(home, &[], &["status"], None),
        3,
        "no cluster config",
        "no config at all",
    );
    assert_fails(
        &weft_in(
            home,
            &[],
            &["status", "--config", "/nonexistent/weft.toml"],
            None,
        ),
        3,
        "cannot read /nonexistent/weft.toml",
        "missing --config file",
    );
    let broken = home.join("broken.toml");
    std::fs::write(&broken, "[cluster]\ncert_dir = \"admin\"\nendpoint = []\n").unwrap();
    assert_fails(
        &weft_in(
            home,
            &[],
            &["status", "--config", broken.to_str().unwrap()],
            None,
        ),
        3,
        "endpoint",
        "unknown key",
    );
    let mut c = ClientConfig::load(&flag).unwrap();
    c.cert_dir = home.join("no-such-dir");
    write_client_config(&broken, &c).unwrap();
    assert_fails(
        &weft_in(
            home,
            &[],
            &["status", "--config", broken.to_str().unwrap()],
            None,
        ),
        3,
        "cannot load the admin certificate",
        "missing cert dir",
    );
}

/// Bad command lines fail with exit 2 before any config is read.
#[test]
fn bad_command_lines_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["lun", "create", "x", "--size", "12Q"],
            "unknown size unit \"Q\" in \"12Q\"",
        ),
        (
            &["lun", "create", "x", "--size", "1G", "--ec", "9+9"],
            "m must be at most 4",
        ),
        (
            &["lun", "create", "x", "--size", "1G", "--spread", "planet"],
            "invalid value 'planet'",
        ),
        (
            &["lun", "delete", "x"],
            "deleting LUN \"x\" destroys its data: add --yes to confirm",
        ),
        (
            &["target", "create", "foo"],
            "must start with iqn., eui. or naa.",
        ),
        (&["target", "delete", IQN], "add --yes"),
        (&["node", "remove", "cs-1"], "add --yes"),
        (&["status", "--timeout", "soon"], "is not a duration"),
        (
            &["lun", "create", "x", "--size", "1G", "--site", ""],
            "invalid site pin \"\": empty",
        ),
        (&["lun", "frobnicate"], "unrecognized subcommand"),
        (
            &["top", "--interval", "10ms"],
            "the interval is 100 ms at least",
        ),
        (&["top", "-n", "0"], "invalid value '0'"),
        (&["top", "--once", "-n", "2"], "cannot be used with"),
    ];
    for (args, want) in cases {
        let o = weft_in(dir.path(), &[], args, None);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.starts_with("weft: error: "), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err:?} lacks {want:?}");
    }
    // A value our parsers refuse is exactly one line.
    assert_fails(
        &weft_in(
            dir.path(),
            &[],
            &["lun", "create", "x", "--size", "12Q"],
            None,
        ),
        2,
        "12Q",
        "bad size",
    );
}

#[test]
fn every_command_has_help_with_an_example() {
    let dir = tempfile::tempdir().unwrap();
    let commands: &[&[&str]] = &[
        &[],
        &["status"],
        &["top"],
        &["lun", "create"],
        &["lun", "list"],
        &["lun", "show"],
        &["lun", "resize"],
        &["lun", "delete"],
        &["lun", "import"],
        &["lun", "export"],
        &["target", "create"],
        &["target", "delete"],
        &["target", "list"],
        &["target", "show"],
        &["target", "map"],
        &["target", "unmap"],
        &["target", "acl", "add"],
        &["target", "acl", "remove"],
        &["target", "chap", "set"],
        &["target", "chap", "clear"],
        &["node", "list"],
        &["node", "show"],
        &["node", "drain"],
        &["node", "undrain"],
        &["node", "remove"],
        &["cert", "init"],
        &["cert", "issue"],
        &["cert", "show"],
        &["up"],
    ];
    for cmd in commands {
        let mut args = cmd.to_vec();
        args.push("--help");
        let o = weft_in(dir.path(), &[], &args, None);
        assert_eq!(o.status.code(), Some(0), "{args:?}");
        let out = stdout(&o);
        assert!(out.contains("Example"), "{args:?} has no example:\n{out}");
        // `weft up` speaks to scripts through ready.json.
        let prints_data = !matches!(cmd.first(), None | Some(&"cert") | Some(&"up"));
        if prints_data {
            assert!(out.contains("-o, --output"), "{args:?} lacks -o:\n{out}");
        }
    }
}
