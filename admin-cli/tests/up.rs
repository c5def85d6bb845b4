//! `weft up` as a newcomer runs it (a fresh directory, no config, HOME
//! elsewhere), used through its contract (`ready.json`, `weft.toml`) with
//! libiscsi's tools and qemu-io, stopped with SIGINT and started again;
//! and `weft lun import|export` against the same cluster (one start for
//! both: this machine has two cores).
//!
//! Needs `weft-chunkserver` and `weft-gateway` beside `weft` (cargo build
//! --release --workspace), and iscsi-inq, iscsi-ls (libiscsi-bin) and
//! qemu-io (qemu-utils).

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{assert_fails, chunkserver_bin, free_port, stderr, stdout};

const IQN: &str = "iqn.2026-11.org.weft:demo";
const READY_TIMEOUT: Duration = Duration::from_secs(90);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// The image `lun import` writes: 256 MiB, as the issue asks.
const IMAGE_BYTES: usize = 256 << 20;
/// Where qemu-io writes its pattern: past the image, so both survive.
const PATTERN_AT: &str = "512M";
const PATTERN_OFFSET: usize = 512 << 20;
const PATTERN_BYTES: usize = 4 << 20;

fn tool(name: &str, package: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| panic!("{name} is missing: apt-get install -y {package}"))
}

fn gateway_bin() -> PathBuf {
    let bin = chunkserver_bin().with_file_name("weft-gateway");
    assert!(
        bin.exists(),
        "{} is missing: cargo build --release --workspace",
        bin.display()
    );
    bin
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

/// `weft` with `args`, HOME pointed at `home`, no WEFT_CONFIG: as a user.
fn weft(home: &Path, args: &[&str]) -> Output {
    support::weft_in(home, &[], args, None)
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

/// A running `weft up`; dropped (a failed test) it is interrupted, then
/// killed (its children follow it: PR_SET_PDEATHSIG).
struct Up {
    child: Option<Child>,
    out: PathBuf,
    dir: PathBuf,
}

impl Up {
    fn start(home: &Path, dir: &Path, port: u16, log: &str) -> Up {
        let out = home.join(log);
        let f = std::fs::File::create(&out).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(["up", "--dir"])
            .arg(dir)
            .args(["--port", &port.to_string()])
            .current_dir(home)
            .env("HOME", home)
            .env_remove("WEFT_CONFIG")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .expect("start weft up");
        Up {
            child: Some(child),
            out,
            dir: dir.to_path_buf(),
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Waits for `ready.json` and returns it.
    fn ready(&mut self) -> Value {
        let path = self.dir.join("ready.json");
        let until = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(text) = std::fs::read_to_string(&path) {
                return serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("ready.json is not JSON ({e}): {text}"));
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("weft up exited ({status}) before ready:\n{}", self.output());
            }
            assert!(
                Instant::now() < until,
                "no ready.json within {READY_TIMEOUT:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGINT, and the exit status once it stopped.
    fn interrupt(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        // SAFETY: the pid of our own child, not yet reaped.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGINT);
        }
        let until = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > until {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "weft up did not stop within {STOP_TIMEOUT:?} of SIGINT:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe {
                libc::kill(c.id() as libc::pid_t, libc::SIGINT);
            }
            std::thread::sleep(Duration::from_secs(3));
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The pids in `ready.json`, checked against the contract.
fn check_ready(ready: &Value, portal: &str) -> Vec<u32> {
    assert_eq!(ready["portals"], serde_json::json!([portal]), "{ready}");
    assert_eq!(ready["iqn"], IQN);
    assert_eq!(ready["lun"], 0);
    assert_eq!(ready["lun_name"], "demo");
    let procs = ready["processes"].as_array().expect("processes");
    let roles: Vec<(String, String)> = procs
        .iter()
        .map(|p| {
            (
                p["role"].as_str().unwrap().to_string(),
                p["node_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("chunkserver", "cs-1"),
        ("chunkserver", "cs-2"),
        ("chunkserver", "cs-3"),
        ("chunkserver", "cs-4"),
        ("gateway", "gw-1"),
    ]
    .iter()
    .map(|(r, n)| (r.to_string(), n.to_string()))
    .collect();
    assert_eq!(roles, want);
    procs
        .iter()
        .map(|p| {
            let pid = p["pid"].as_u64().unwrap() as u32;
            assert!(alive(pid), "{p} is not running");
            let data = Path::new(p["data_dir"].as_str().unwrap());
            assert!(data.is_dir(), "{p}: no data_dir");
            pid
        })
        .collect()
}

fn qemu_io(url: &str, command: &str) -> Output {
    run(Command::new(tool("qemu-io", "qemu-utils")).args(["-f", "raw", "-c", command, url]))
}

fn check_pattern(url: &str, pattern: &str) {
    let cmd = format!("read -P {pattern} {PATTERN_AT} 4M");
    let o = qemu_io(url, &cmd);
    let text = format!("{}{}", stdout(&o), stderr(&o));
    assert!(
        o.status.success() && text.contains("read 4194304/4194304") && !text.contains("failed"),
        "qemu-io {cmd}: {text}"
    );
}

/// 256 MiB that no compressor or zero detection can shortcut, the same
/// every run (xorshift64*).
fn random_image(path: &Path) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut data = Vec::with_capacity(IMAGE_BYTES);
    while data.len() < IMAGE_BYTES {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        data.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    std::fs::write(path, &data).unwrap();
    data
}

fn no_carriage_return(o: &Output, what: &str) {
    assert!(
        !o.stdout.contains(&b'\r') && !o.stderr.contains(&b'\r'),
        "{what}: a progress bar without a terminal: {:?}",
        stderr(o)
    );
}

/// `weft top` sees the gateway's I/O: per LUN and for the gateway, while
/// qemu-io writes (the same pattern again, so the later checks hold) and
/// as totals.
fn top_through_the_gateway(home: &Path, config: &str, url: &str) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, url) = (stop.clone(), url.to_string());
        std::thread::spawn(move || {
            let mut writes = 0;
            while !stop.load(Ordering::Relaxed) && writes < 200 {
                let o = qemu_io(&url, &format!("write -P 0xab {PATTERN_AT} 4M"));
                assert!(o.status.success(), "qemu-io write: {}", stderr(&o));
                writes += 1;
            }
        })
    };
    // Each qemu-io run logs in anew, so on a loaded machine a sample can
    // fall in a pause between writes (the gateway then publishes a closing
    // record and the rate reads 0): take a few samples while it writes.
    let mut top = Value::Null;
    for _ in 0..5 {
        let o = weft(home, &["--config", config, "top", "--once", "-o", "json"]);
        assert!(o.status.success(), "weft top: {}", stderr(&o));
        top = serde_json::from_str(&stdout(&o)).unwrap();
        if top["luns"][0]["io"]["write_ops_per_s"].as_f64() > Some(0.0) {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let demo = &top["luns"][0];
    assert_eq!(demo["name"], "demo", "{top:#}");
    assert_eq!(demo["gateways"], serde_json::json!(["gw-1"]), "{top:#}");
    let io = &demo["io"];
    assert!(io["write_ops_per_s"].as_f64().unwrap() > 0.0, "{top:#}");
    assert!(io["write_bytes_per_s"].as_u64().unwrap() > 0, "{top:#}");
    assert!(io["write_latency_us_avg"].as_u64().unwrap() > 0, "{top:#}");
    // The first qemu-io calls wrote and read 4 MiB each: in the totals.
    assert!(
        io["write_bytes_total"].as_u64().unwrap() >= 8 << 20,
        "{top:#}"
    );
    assert!(
        io["read_bytes_total"].as_u64().unwrap() >= 4 << 20,
        "{top:#}"
    );
    let nodes = top["nodes"].as_array().unwrap();
    let roles: Vec<(&str, &str)> = nodes
        .iter()
        .map(|n| (n["node"].as_str().unwrap(), n["role"].as_str().unwrap()))
        .collect();
    assert_eq!(
        roles,
        [
            ("cs-1", "chunkserver"),
            ("cs-2", "chunkserver"),
            ("cs-3", "chunkserver"),
            ("cs-4", "chunkserver"),
            ("gw-1", "gateway")
        ]
    );
    let gw = &nodes[4]["io"];
    assert!(
        gw["write_bytes_total"].as_u64() >= io["write_bytes_total"].as_u64(),
        "the gateway counts every LUN: {top:#}"
    );
    // 3+1: a 4 MiB write reaches every chunkserver of its extent.
    let chunk_writes: u64 = nodes[..4]
        .iter()
        .map(|n| n["io"]["write_ops_total"].as_u64().unwrap())
        .sum();
    assert!(chunk_writes >= 4, "{top:#}");
}

#[test]
fn weft_up_as_a_newcomer_then_images() {
    let t0 = Instant::now();
    chunkserver_bin();
    gateway_bin();
    let (inq, ls) = (
        tool("iscsi-inq", "libiscsi-bin"),
        tool("iscsi-ls", "libiscsi-bin"),
    );
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let dir = home.join("weft-data");
    let port = free_port().port();
    let portal = format!("127.0.0.1:{port}");
    let url = format!("iscsi://{portal}/{IQN}/0");

    // First run: from nothing to a LUN.
    let mut up = Up::start(home, &dir, port, "up-1.out");
    let ready = up.ready();
    let started = t0.elapsed();
    let pids = check_ready(&ready, &portal);
    let text = up.output();
    for want in [
        format!("iscsiadm -m discovery -t sendtargets -p {portal}"),
        format!("iscsiadm -m node -T {IQN} -p {portal} --login"),
        format!("qemu-system-x86_64 -m 2G -drive file={url},format=raw"),
        format!("export WEFT_CONFIG={}", dir.join("weft.toml").display()),
    ] {
        assert!(text.contains(&want), "weft up printed no {want:?}:\n{text}");
    }
    assert!(!text.contains("error"), "{text}");

    // libiscsi logs in: inquiry and discovery.
    let o = run(Command::new(&inq).arg(&url));
    assert!(
        o.status.success() && stdout(&o).contains("Vendor:WEFT"),
        "iscsi-inq: {}{}",
        stdout(&o),
        stderr(&o)
    );
    let o = run(Command::new(&ls).arg(format!("iscsi://{portal}")));
    assert!(
        stdout(&o).contains(&format!("Target:{IQN} Portal:{portal},1")),
        "iscsi-ls: {}{}",
        stdout(&o),
        stderr(&o)
    );

    // Write and read through the gateway; a wrong pattern is noticed.
    let o = qemu_io(&url, &format!("write -P 0xab {PATTERN_AT} 4M"));
    assert!(o.status.success(), "qemu-io write: {}", stderr(&o));
    check_pattern(&url, "0xab");
    let o = qemu_io(&url, &format!("read -P 0xcd {PATTERN_AT} 4M"));
    assert!(
        stdout(&o).contains("Pattern verification failed"),
        "a wrong pattern must fail: {}",
        stdout(&o)
    );

    // weft commands find the cluster through DIR/weft.toml.
    let config = dir.join("weft.toml");
    let config = config.to_str().unwrap();
    let o = weft(home, &["--config", config, "status", "-o", "json"]);
    assert!(o.status.success(), "weft status: {}", stderr(&o));
    let status: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(status["health"], "HEALTH_OK", "{status}");
    assert_eq!(status["nodes"]["total"], 4);
    assert_eq!(status["nodes"]["lease_valid"], 4);
    assert_eq!(status["metadata"]["voters"].as_array().unwrap().len(), 3);
    assert_eq!(status["capacity"]["nodes_reporting"], 4, "{status}");
    top_through_the_gateway(home, config, &url);
    // Capacity is republished every second: the chunks written show.
    let o = weft(home, &["--config", config, "status", "-o", "json"]);
    let status: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(
        status["capacity"]["used_bytes"].as_u64().unwrap() > 0,
        "{status}"
    );
    let o = weft(
        home,
        &["--config", config, "lun", "show", "demo", "-o", "json"],
    );
    let lun: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        (lun["ec"].as_str(), lun["size_bytes"].as_u64()),
        (Some("3+1"), Some(1 << 30))
    );

    let image_times = images(home, config);

    // Ctrl-C: exit 0, ready.json gone, no process left.
    let t_stop = Instant::now();
    let status = up.interrupt();
    let stop_took = t_stop.elapsed();
    assert_eq!(
        status.code(),
        Some(0),
        "weft up after SIGINT:\n{}",
        up.output()
    );
    assert!(!dir.join("ready.json").exists(), "ready.json left behind");
    for pid in &pids {
        assert!(
            !alive(*pid),
            "pid {pid} is still running after weft up stopped"
        );
    }
    assert!(up.output().contains("stopped in"), "{}", up.output());

    // Again: the same certificates, ports and data.
    let t_again = Instant::now();
    let mut up = Up::start(home, &dir, port, "up-2.out");
    let ready = up.ready();
    let restarted = t_again.elapsed();
    let pids = check_ready(&ready, &portal);
    let text = up.output();
    assert!(
        text.contains("restarting") && text.contains("kept from the last run"),
        "{text}"
    );
    assert!(
        !text.contains("certificates"),
        "certificates made again:\n{text}"
    );
    check_pattern(&url, "0xab");
    let status = up.interrupt();
    assert_eq!(status.code(), Some(0), "{}", up.output());
    for pid in &pids {
        assert!(!alive(*pid), "pid {pid} left running");
    }
    eprintln!(
        "weft up: ready in {started:?} (first run), {restarted:?} (again); stopped in {stop_took:?}; {image_times}; whole test {:?}",
        t0.elapsed()
    );
}

/// `lun import` and `lun export` on the running cluster. Returns the
/// measured times.
fn images(home: &Path, config: &str) -> String {
    let image = home.join("image.raw");
    let data = random_image(&image);
    let image_s = image.to_str().unwrap();

    // Import 256 MiB; output is not a terminal: no bar, one summary line.
    let t = Instant::now();
    let o = weft(
        home,
        &["--config", config, "lun", "import", image_s, "demo"],
    );
    let import_took = t.elapsed();
    assert!(o.status.success(), "import: {}", stderr(&o));
    no_carriage_return(&o, "import");
    let summary = stdout(&o);
    assert!(
        summary.starts_with(&format!(
            "imported {image_s} (raw, 256 MiB) into LUN demo in "
        )) && summary.trim_end().ends_with("MiB/s")
            && summary.lines().count() == 1,
        "{summary:?}"
    );
    assert!(o.stderr.is_empty(), "{}", stderr(&o));

    // Export the whole LUN: the image, zeroes, and qemu-io's pattern.
    let out = home.join("export.raw");
    let out_s = out.to_str().unwrap();
    let t = Instant::now();
    let o = weft(
        home,
        &[
            "--config", config, "lun", "export", "demo", out_s, "-o", "json",
        ],
    );
    let export_took = t.elapsed();
    assert!(o.status.success(), "export: {}", stderr(&o));
    no_carriage_return(&o, "export");
    let j: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["bytes"], 1u64 << 30);
    let mut got = Vec::new();
    std::fs::File::open(&out)
        .unwrap()
        .read_to_end(&mut got)
        .unwrap();
    assert_eq!(got.len(), 1 << 30);
    assert!(got[..IMAGE_BYTES] == data[..], "the exported image differs");
    assert!(got[PATTERN_OFFSET..PATTERN_OFFSET + PATTERN_BYTES]
        .iter()
        .all(|b| *b == 0xab));
    assert!(got[IMAGE_BYTES..PATTERN_OFFSET].iter().all(|b| *b == 0));
    drop(got);

    // An existing file is kept unless --force.
    let o = weft(home, &["--config", config, "lun", "export", "demo", out_s]);
    assert_fails(&o, 2, "exists: add --force", "export over a file");

    // A larger image is refused before anything is written.
    let big = home.join("big.raw");
    std::fs::File::create(&big)
        .unwrap()
        .set_len((1 << 30) + (1 << 20))
        .unwrap();
    let o = weft(
        home,
        &[
            "--config",
            config,
            "lun",
            "import",
            big.to_str().unwrap(),
            "demo",
        ],
    );
    assert_fails(
        &o,
        1,
        "is 1.00 GiB (1074790400 bytes) but LUN demo is only 1 GiB: grow the LUN first (weft lun resize demo --size 1025M)",
        "import of a larger image",
    );
    let o = weft(
        home,
        &["--config", config, "lun", "import", image_s, "nosuch"],
    );
    assert_fails(
        &o,
        1,
        "no LUN named \"nosuch\"",
        "import into an unknown LUN",
    );

    // Through pipes: stdin in, stdout out, on a LUN of its own; the odd
    // tail is padded to the block size.
    let o = weft(
        home,
        &["--config", config, "lun", "create", "pipe", "--size", "16M"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let small = &data[..(5 << 20) + 100];
    let mut import = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["--config", config, "lun", "import", "-", "pipe"])
        .env("HOME", home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        import.stdin.take().unwrap().write_all(small).unwrap();
    }
    let o = import.wait_with_output().unwrap();
    assert!(o.status.success(), "import -: {}", stderr(&o));
    assert!(
        stdout(&o).contains("imported stdin (raw, 5.00 MiB)"),
        "{}",
        stdout(&o)
    );
    let o = weft(home, &["--config", config, "lun", "export", "pipe", "-"]);
    assert!(o.status.success(), "export -: {}", stderr(&o));
    assert_eq!(o.stdout.len(), 16 << 20);
    assert!(o.stdout[..small.len()] == *small);
    assert!(o.stdout[small.len()..].iter().all(|b| *b == 0));
    assert!(
        stderr(&o).starts_with("exported LUN pipe (16 MiB) to stdout"),
        "{}",
        stderr(&o)
    );
    // qcow2 in and out through qemu-img.
    let qemu_img = tool("qemu-img", "qemu-utils");
    let raw = home.join("small.raw");
    std::fs::write(&raw, small).unwrap();
    let qcow2 = home.join("small.qcow2");
    let o = run(Command::new(&qemu_img)
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .args([&raw, &qcow2]));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = weft(
        home,
        &[
            "--config",
            config,
            "lun",
            "import",
            qcow2.to_str().unwrap(),
            "pipe",
        ],
    );
    assert!(o.status.success(), "import qcow2: {}", stderr(&o));
    assert!(stdout(&o).contains("(qcow2, "), "{}", stdout(&o));
    let back = home.join("back.qcow2");
    let o = weft(
        home,
        &[
            "--config",
            config,
            "lun",
            "export",
            "pipe",
            back.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "export qcow2: {}", stderr(&o));
    let o = run(Command::new(&qemu_img)
        .args(["info", "--output=json"])
        .arg(&back));
    let info: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    // The LUN is larger than the image: compare checks its tail is zero.
    let o = run(Command::new(&qemu_img).arg("compare").args([&qcow2, &back]));
    assert!(
        o.status.success(),
        "qcow2 round trip: {}{}",
        stdout(&o),
        stderr(&o)
    );

    // A stream larger than the LUN stops at the LUN's end, and says so.
    let mut import = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["--config", config, "lun", "import", "-", "pipe"])
        .env("HOME", home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut s = import.stdin.take().unwrap();
        let _ = s.write_all(&data[..(16 << 20) + 512]);
    }
    let o = import.wait_with_output().unwrap();
    assert_fails(&o, 1, "stdin is 16.00 MiB", "a stream larger than the LUN");

    // On a terminal (script(1) fakes one) the bar shows, then the summary.
    if let Some(script) = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("script"))
            .find(|p| p.is_file())
    }) {
        let cmd = format!(
            "{} --config {config} lun export pipe {out_s} --force",
            env!("CARGO_BIN_EXE_weft")
        );
        let o = run(Command::new(script)
            .args(["-qec", &cmd, "/dev/null"])
            .env("HOME", home));
        let text = stdout(&o);
        assert!(o.status.success(), "{text}");
        assert!(
            text.contains("\rexport pipe [")
                && text.contains("MiB/s")
                && text.contains("exported LUN pipe"),
            "no progress bar on a terminal: {text:?}"
        );
    }
    format!(
        "import 256 MiB in {import_took:?} ({:.0} MiB/s), export 1 GiB in {export_took:?}",
        256.0 / import_took.as_secs_f64()
    )
}

/// Mistakes are refused before anything starts.
#[test]
fn up_refuses_bad_input() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let o = weft(home, &["up", "--nodes", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = weft(home, &["up", "--size", "12Q"]);
    assert_fails(&o, 2, "12Q", "bad size");
    let o = weft(home, &["up", "--size", "1000"]);
    assert_fails(&o, 2, "multiple of the block size", "odd size");

    // A directory with other things in it is not taken over.
    let other = home.join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    let o = weft(home, &["up", "--dir", other.to_str().unwrap()]);
    assert_fails(&o, 2, "was not made by weft up", "a foreign directory");

    // The shape of a cluster is fixed by its first run.
    let dir = home.join("data");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("up.toml"),
        "version = 1\nport = 3260\ngateways = 1\ncapacity_bytes = 17179869184\n\
         [[nodes]]\nid = \"cs-1\"\nfabric = \"127.0.0.1:7400\"\n\
         [[nodes]]\nid = \"cs-2\"\nfabric = \"127.0.0.1:7401\"\n",
    )
    .unwrap();
    let o = weft(
        home,
        &["up", "--dir", dir.to_str().unwrap(), "--nodes", "3"],
    );
    assert_fails(
        &o,
        2,
        "holds a cluster of 2 chunkservers",
        "--nodes on a rerun",
    );

    // Without the other binaries beside it or on PATH: what to do.
    let lonely = home.join("bin");
    std::fs::create_dir(&lonely).unwrap();
    if std::fs::hard_link(env!("CARGO_BIN_EXE_weft"), lonely.join("weft")).is_err() {
        std::fs::copy(env!("CARGO_BIN_EXE_weft"), lonely.join("weft")).unwrap();
    }
    let o = run(Command::new(lonely.join("weft"))
        .args(["up", "--dir"])
        .arg(home.join("fresh"))
        .env("HOME", home)
        .env("PATH", "/nonexistent"));
    assert_fails(
        &o,
        1,
        "weft up needs weft-chunkserver",
        "no chunkserver binary",
    );
    assert!(stderr(&o).contains("cargo build --release --workspace"));
}
