//! `weft cert` as a user runs it: the real binary, real files.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn weft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .output()
        .expect("run weft")
}

fn ok(args: &[&str]) -> String {
    let out = weft(args);
    assert!(
        out.status.success(),
        "weft {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(args: &[&str], want: &str) {
    let out = weft(args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "weft {args:?} should fail with exit 1"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(want),
        "weft {args:?}: stderr {err:?} lacks {want:?}"
    );
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_issue_show() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let ca_s = ca.to_str().unwrap();
    ok(&["cert", "init", "--dir", ca_s, "--cluster-name", "test"]);
    assert_eq!(mode(&ca.join("ca.key")), 0o600);
    fails(&["cert", "init", "--dir", ca_s], "already holds a CA");

    for (role, id) in [("chunkserver", "cs1"), ("gateway", "gw1"), ("admin", "ops")] {
        ok(&[
            "cert",
            "issue",
            "--role",
            role,
            "--node-id",
            id,
            "--ca-dir",
            ca_s,
        ]);
        let node_dir = ca.join("nodes").join(id);
        assert_eq!(mode(&node_dir.join("node.key")), 0o600);
        let json = ok(&["cert", "show", node_dir.to_str().unwrap(), "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["role"], role);
        assert_eq!(v["node_id"], id);
        assert_eq!(v["expired"], false);
        // The files are what the fabric loads.
        let creds = fabric::identity::NodeCredentials::load(&node_dir).unwrap();
        let who = creds.identity().unwrap();
        assert_eq!((who.role.as_str(), who.node_id.as_str()), (role, id));
        fabric::TlsConfig::new(&creds).unwrap();
    }
    let text = ok(&["cert", "show", ca.join("ca.crt").to_str().unwrap()]);
    assert!(text.contains("cluster CA"), "{text}");

    fails(
        &[
            "cert",
            "issue",
            "--role",
            "king",
            "--node-id",
            "x",
            "--ca-dir",
            ca_s,
        ],
        "king",
    );
    fails(
        &[
            "cert",
            "issue",
            "--role",
            "gateway",
            "--node-id",
            "Bad_Id",
            "--ca-dir",
            ca_s,
        ],
        "Bad_Id",
    );
    fails(
        &[
            "cert",
            "issue",
            "--role",
            "gateway",
            "--node-id",
            "x",
            "--ca-dir",
            "/nonexistent",
        ],
        "cannot load the CA",
    );
    fails(&["cert", "show", "/nonexistent.crt"], "cannot read");
}
