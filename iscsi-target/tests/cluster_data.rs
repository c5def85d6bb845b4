//! The data path end to end: 4 chunkservers (`3+1`), `weft-gateway
//! --cluster`, and QEMU's iSCSI client (`qemu-img`) writing and reading
//! through it, with chunkservers killed and chunk files corrupted for real.
//! Every acknowledged byte is checked.

mod cluster;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use cluster::Cluster;
use fabric::wire::chunk::{ChunkRead, ChunkReadRequest, ChunkRef};
use rand::{RngCore, SeedableRng};

const MIB: u64 = 1 << 20;

fn random_image(path: &Path, bytes: u64, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; bytes as usize];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    std::fs::write(path, &data).unwrap();
    data
}

fn qemu_img(args: &[&str]) -> Result<(), String> {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Writes `image` to the LUN at offset 0 through gateway `g`.
fn upload(c: &Cluster, g: usize, image: &Path) {
    qemu_img(&[
        "convert",
        "-n",
        "-f",
        "raw",
        "-O",
        "raw",
        &image.display().to_string(),
        &c.url(g),
    ])
    .unwrap_or_else(|e| panic!("upload: {e}\n{}", c.logs()));
}

/// Reads the first `len` bytes of the LUN through gateway `g`.
fn download(c: &Cluster, g: usize, len: u64) -> Vec<u8> {
    let out = c.dir.path().join(format!("down-{g}.img"));
    let _ = std::fs::remove_file(&out);
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "raw",
        &c.url(g),
        &out.display().to_string(),
    ])
    .unwrap_or_else(|e| panic!("download: {e}\n{}", c.logs()));
    let mut data = std::fs::read(&out).unwrap();
    data.truncate(len as usize);
    data
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

async fn cluster_with_lun(size: u64) -> Cluster {
    cluster_configured_with_lun(size, "").await
}

/// [`cluster_with_lun`], `toml` appended to every node's config.
async fn cluster_configured_with_lun(size: u64, toml: &str) -> Cluster {
    let mut c = Cluster::new(4, 2);
    c.append_node_config(toml);
    c.start_nodes().await;
    c.create_lun("data", size, 3).await;
    c.start_gateway(0).await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_img_round_trip_through_the_cluster() {
    let c = cluster_with_lun(256 * MIB).await;
    let img = c.dir.path().join("in.img");
    // 100 MiB: spans three 48 MiB extents, so three placements.
    let data = random_image(&img, 100 * MIB, 1);
    upload(&c, 0, &img);
    let back = download(&c, 0, 100 * MIB);
    assert_eq!(first_difference(&data, &back), None, "data differs");
    let s = c.summary().await;
    assert_eq!(
        s.extents.first().map(|(_, n)| *n),
        Some(3),
        "{:?}",
        s.extents
    );
    // Beyond what was written: zeroes.
    let all = download(&c, 0, 256 * MIB);
    assert!(all[100 * MIB as usize..].iter().all(|b| *b == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_data_holder_is_read_around() {
    let mut c = cluster_with_lun(128 * MIB).await;
    let img = c.dir.path().join("in.img");
    let data = random_image(&img, 40 * MIB, 2);
    upload(&c, 0, &img);
    let lun = c.summary().await.luns[0].id;
    let e = c.extent(lun, 0).await.unwrap();
    // A data holder that is not the primary.
    let victim = c.node_index(&e.nodes[0]);
    c.nodes[victim].kill();
    let back = download(&c, 0, 40 * MIB);
    assert_eq!(
        first_difference(&data, &back),
        None,
        "data differs with {} down",
        e.nodes[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bytes_are_read_around_and_repaired() {
    let c = cluster_with_lun(64 * MIB).await;
    let img = c.dir.path().join("in.img");
    let data = random_image(&img, 8 * MIB, 3);
    upload(&c, 0, &img);
    let lun = c.summary().await.luns[0].id;
    let e = c.extent(lun, 0).await.unwrap();
    // Flip bytes in the file of data chunk 1 while its holder runs, as a
    // bad disk would.
    let holder = c.node_index(&e.nodes[1]);
    let file = c.nodes[holder]
        .data
        .join("chunks")
        .join(format!("{lun:016x}"))
        .join(format!("{:016x}-{:02x}.chunk", 0, 1));
    let mut bytes = std::fs::read(&file).unwrap();
    for at in [100usize, 70_000, 1_000_000] {
        bytes[at] ^= 0x5a;
    }
    std::fs::write(&file, &bytes).unwrap();
    let back = download(&c, 0, 8 * MIB);
    assert_eq!(first_difference(&data, &back), None, "corrupt data served");
    // The primary rewrote the bad blocks: the chunk reads clean again.
    let rpc = c.rpc();
    let addr = c.nodes[holder].addr;
    let r = rpc
        .call::<ChunkRead>(
            addr,
            &e.nodes[1],
            &ChunkReadRequest {
                chunk: ChunkRef {
                    lun,
                    extent: 0,
                    index: 1,
                },
                epoch: e.epoch,
                offset: 0,
                len: 2 * MIB as u32,
            },
            Bytes::new(),
            tokio::time::Instant::now() + Duration::from_secs(10),
        )
        .await;
    assert!(r.is_ok(), "chunk still corrupt: {r:?}");
}

/// Reads every chunk of every allocated extent of the first LUN and checks
/// that data and parity agree (the XOR of a stripe's chunks is zero), and
/// that every chunk is in service.
async fn assert_whole(c: &Cluster) {
    let s = c.summary().await;
    let lun = s.luns[0].clone();
    let rpc = c.rpc();
    let extents = (lun.size_bytes).div_ceil(lun.chunk_bytes * u64::from(lun.policy.ec.k));
    for index in 0..extents {
        let Some(e) = c.extent(lun.id, index).await else {
            continue;
        };
        assert!(
            e.chunks
                .iter()
                .all(|s| *s == fabric::metadata::ChunkState::Ok),
            "extent {index} not whole: {:?}",
            e.chunks
        );
        let (k, m) = (usize::from(lun.policy.ec.k), usize::from(lun.policy.ec.m));
        let step = 4 * MIB;
        let mut pos = 0;
        while pos < lun.chunk_bytes {
            let mut stripe = Vec::new();
            for (slot, node) in e.nodes.iter().enumerate() {
                let addr = c.nodes[c.node_index(node)].addr;
                let (_, d) = rpc
                    .call::<ChunkRead>(
                        addr,
                        node,
                        &ChunkReadRequest {
                            chunk: ChunkRef {
                                lun: lun.id,
                                extent: index,
                                index: slot as u8,
                            },
                            epoch: e.epoch,
                            offset: pos,
                            len: step as u32,
                        },
                        Bytes::new(),
                        tokio::time::Instant::now() + Duration::from_secs(20),
                    )
                    .await
                    .unwrap_or_else(|err| panic!("extent {index} chunk {slot}: {err}"));
                stripe.push(d.to_vec());
            }
            // k+1 is XOR parity; more parity chunks are Reed–Solomon.
            let consistent = if m == 1 {
                let mut acc = vec![0u8; step as usize];
                for d in &stripe {
                    for (a, b) in acc.iter_mut().zip(d.iter()) {
                        *a ^= b;
                    }
                }
                acc.iter().all(|b| *b == 0)
            } else {
                reed_solomon_erasure::galois_8::ReedSolomon::new(k, m)
                    .unwrap()
                    .verify(&stripe)
                    .unwrap()
            };
            assert!(
                consistent,
                "extent {index}: parity disagrees with data at chunk offset {pos}..\n{}",
                c.logs()
            );
            pos += step;
        }
    }
}

/// Waits until every allocated extent of the first LUN is whole again.
async fn wait_whole(c: &Cluster, within: Duration) {
    let end = tokio::time::Instant::now() + within;
    loop {
        let s = c.summary().await;
        if s.degraded.iter().all(|(_, n)| *n == 0) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "extents still degraded: {:?}\n{}",
            s.degraded,
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[derive(Clone, Copy, Debug)]
enum Victim {
    DataHolder,
    Primary,
    MetadataLeader,
}

/// Kills one chunkserver with SIGKILL while `qemu-img` writes through the
/// gateway; the write completes, reads return it, and once the node is
/// back every extent is whole and consistent.
async fn kill_during_writes(victim: Victim) {
    // Long enough that the kill lands inside the stream also when the
    // cluster writes fast (a whole-row stream runs at a few hundred MB/s).
    const STREAM: u64 = 240 * MIB;
    let mut c = cluster_with_lun(256 * MIB).await;
    let img = c.dir.path().join("in.img");
    // A first pass places the extents, so the victim can be chosen.
    let first = random_image(&img, STREAM, 10);
    upload(&c, 0, &img);
    let lun = c.summary().await.luns[0].id;
    let e = c.extent(lun, 0).await.unwrap();
    let v = match victim {
        Victim::DataHolder => c.node_index(&e.nodes[1]),
        Victim::Primary => c.node_index(e.primary_node().unwrap()),
        Victim::MetadataLeader => {
            let ci = match c.admin().read(fabric::metadata::ReadRequest::Cluster).await {
                Ok(fabric::metadata::ReadReply::Cluster(ci)) => ci,
                o => panic!("{o:?}"),
            };
            c.node_index(&ci.leader.unwrap())
        }
    };
    let data = random_image(&img, STREAM, 11);
    assert_ne!(first, data);
    let url = c.url(0);
    let path = img.display().to_string();
    let mut writer = Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw", &path, &url])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        writer.try_wait().unwrap().is_none(),
        "the write stream ended before the kill: the test proves nothing"
    );
    let started = std::time::Instant::now();
    c.nodes[v].kill();
    let out = writer.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{victim:?} killed: the write stream failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.logs()
    );
    eprintln!(
        "{victim:?} killed: the stream finished {:?} after the kill",
        started.elapsed()
    );
    let back = download(&c, 0, STREAM);
    assert_eq!(
        first_difference(&data, &back),
        None,
        "{victim:?} killed: data differs"
    );
    c.nodes[v].start();
    wait_whole(&c, Duration::from_secs(60)).await;
    assert_whole(&c).await;
    let back = download(&c, 0, STREAM);
    assert_eq!(
        first_difference(&data, &back),
        None,
        "after the rebuild: data differs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_holder_killed_during_writes() {
    kill_during_writes(Victim::DataHolder).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_killed_during_writes() {
    kill_during_writes(Victim::Primary).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_leader_killed_during_writes() {
    kill_during_writes(Victim::MetadataLeader).await;
}

fn qemu_io(url: &str, cmd: &str) -> Result<String, String> {
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", cmd, url])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    // qemu-io reports a failed command (or a pattern mismatch) on its
    // output, not always in its exit status.
    if out.status.success() && !text.contains("failed") && !text.contains("Pattern verification") {
        Ok(text)
    } else {
        Err(text)
    }
}

/// Runs `cmd` with `qemu-io` on the first gateway's LUN; a failure fails
/// the test, with the cluster's logs.
fn io(c: &Cluster, cmd: &str) {
    qemu_io(&c.url(0), cmd).unwrap_or_else(|e| panic!("{cmd}: {e}\n{}", c.logs()));
}

/// The primary is killed (by a test hook) at a point where a write is
/// journaled but not (fully) applied; the write stream goes on, the node
/// comes back, and no stripe is left with parity that disagrees with its
/// data.
async fn crash_inside_a_write(point: &str) {
    let mut c = Cluster::new(4, 1);
    for n in &mut c.nodes {
        n.set_env("WEFT_TEST_CRASH_POINT", Some(point));
    }
    c.start_nodes().await;
    c.create_lun("data", 128 * MIB, 3).await;
    c.start_gateway(0).await;
    let img = c.dir.path().join("in.img");
    let data = random_image(&img, 96 * MIB, 20);
    let url = c.url(0);
    let path = img.display().to_string();
    let mut writer = Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw", &path, &url])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Restart a crashed node at once (without the hook), so that it may
    // still be the primary and replay its journal.
    let mut crashed = Vec::new();
    while writer.try_wait().unwrap().is_none() {
        for (i, n) in c.nodes.iter_mut().enumerate() {
            if n.exited() {
                n.set_env("WEFT_TEST_CRASH_POINT", None);
                n.start();
                crashed.push(i);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = writer.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the write stream failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.logs()
    );
    assert!(
        !crashed.is_empty(),
        "the hook never fired: the test proves nothing"
    );
    let back = download(&c, 0, 96 * MIB);
    assert_eq!(first_difference(&data, &back), None, "data differs");
    wait_whole(&c, Duration::from_secs(60)).await;
    // A restarted primary serves nothing until its journal is replayed;
    // wait for that before reading chunks behind its back.
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    for i in &crashed {
        loop {
            let log = std::fs::read_to_string(&c.nodes[*i].log).unwrap_or_default();
            if !log.contains("replaying the write journal") || log.contains("journal replayed") {
                break;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "journal replay did not finish\n{}",
                c.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert_whole(&c).await;
    let how: Vec<&str> = crashed
        .iter()
        .map(|i| {
            if std::fs::read_to_string(&c.nodes[*i].log)
                .unwrap_or_default()
                .contains("journal replayed")
            {
                "replayed its journal"
            } else {
                "was taken over"
            }
        })
        .collect();
    eprintln!("{point}: crashed nodes {crashed:?}: {how:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_crash_after_the_journal_leaves_no_write_hole() {
    crash_inside_a_write("journal:12").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_crash_before_the_parity_leaves_no_write_hole() {
    crash_inside_a_write("parity:12").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_holder_is_hedged_around() {
    let c = cluster_with_lun(128 * MIB).await;
    let img = c.dir.path().join("in.img");
    let data = random_image(&img, 48 * MIB, 30);
    upload(&c, 0, &img);
    let lun = c.summary().await.luns[0].id;
    let e = c.extent(lun, 0).await.unwrap();
    let v = c.node_index(&e.nodes[0]);
    c.nodes[v].signal(libc::SIGSTOP);
    let t = std::time::Instant::now();
    let back = download(&c, 0, 48 * MIB);
    let took = t.elapsed();
    c.nodes[v].signal(libc::SIGCONT);
    assert_eq!(first_difference(&data, &back), None, "data differs");
    eprintln!("48 MiB read with a stopped holder in {took:?}");
    // Without hedging every request touching the stopped holder waits out
    // a 10 s call deadline: 48 MiB is dozens of requests.
    assert!(took < Duration::from_secs(15), "reads took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_write_one_lun_and_read_each_others_writes() {
    let mut c = cluster_with_lun(128 * MIB).await;
    c.start_gateway(1).await;
    let (u0, u1) = (c.url(0), c.url(1));
    // Same extent (48 MiB) and different extents, at the same time.
    let jobs = [
        (u0.clone(), "write -P 0xa1 0 8M"),
        (u1.clone(), "write -P 0xb2 8M 8M"),
        (u0.clone(), "write -P 0xc3 64M 16M"),
        (u1.clone(), "write -P 0xd4 96M 16M"),
    ];
    let handles: Vec<_> = jobs
        .iter()
        .cloned()
        .map(|(u, cmd)| std::thread::spawn(move || qemu_io(&u, cmd)))
        .collect();
    for h in handles {
        h.join()
            .unwrap()
            .unwrap_or_else(|e| panic!("write: {e}\n{}", c.logs()));
    }
    // Each gateway reads what the other wrote, and its own.
    for (u, cmd) in [
        (&u0, "read -P 0xb2 8M 8M"),
        (&u0, "read -P 0xd4 96M 16M"),
        (&u1, "read -P 0xa1 0 8M"),
        (&u1, "read -P 0xc3 64M 16M"),
        (&u1, "read -P 0x00 16M 48M"),
    ] {
        qemu_io(u, cmd).unwrap_or_else(|e| panic!("{cmd}: {e}\n{}", c.logs()));
    }
    // A read that must fail does (the check itself can fail).
    assert!(qemu_io(&u0, "read -P 0xee 0 1M").is_err());
}

/// libiscsi's conformance suite against `weft-gateway --cluster`, with the
/// same lists of allowed failures and skips as the RAM backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_against_the_cluster() {
    let c = cluster_with_lun(256 * MIB).await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out_dir = c.dir.path().join("conformance");
    let out = Command::new(root.join("tests/conformance/run.sh"))
        .arg("--url")
        .arg(c.url(0))
        .arg("--expected-skips")
        .arg(root.join("tests/conformance/expected-skips.txt"))
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert!(
        out.status.success(),
        "conformance against the cluster failed:\n{text}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.logs()
    );
}

fn lun_size(url: &str) -> Option<u64> {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", url])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let at = text.find("\"virtual-size\":")?;
    text[at + 15..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The gateway follows the catalogue: a LUN mapped later is served
/// without a restart, and a resize is seen at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_luns_and_resizes_reach_a_running_gateway() {
    let c = cluster_with_lun(64 * MIB).await;
    let url1 = c.url(0).replace("/0", "/1");
    assert!(lun_size(&url1).is_none(), "LUN 1 served before it exists");
    let a = c.admin();
    a.admin(fabric::metadata::Command::CreateLun {
        name: "second".into(),
        size_bytes: 32 * MIB,
        block_size: 512,
        policy: fabric::placement::Policy::new(fabric::placement::EcProfile { k: 3, m: 1 }),
        naa: [0; 16],
        serial: String::new(),
        now_ms: 0,
    })
    .await
    .unwrap();
    a.admin(fabric::metadata::Command::MapLun {
        iqn: cluster::IQN.into(),
        lun: 1,
        name: "second".into(),
    })
    .await
    .unwrap();
    a.admin(fabric::metadata::Command::ResizeLun {
        name: "data".into(),
        size_bytes: 96 * MIB,
    })
    .await
    .unwrap();
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (s0, s1) = (lun_size(&c.url(0)), lun_size(&url1));
        if s0 == Some(96 * MIB) && s1 == Some(32 * MIB) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "gateway did not follow: LUN 0 {s0:?}, LUN 1 {s1:?}\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    qemu_io(&url1, "write -P 0x5e 0 1M").unwrap();
    qemu_io(&url1, "read -P 0x5e 0 1M").unwrap();
    qemu_io(&c.url(0), "write -P 0x6f 90M 1M").unwrap();
    qemu_io(&c.url(0), "read -P 0x6f 90M 1M").unwrap();
}

/// With one of four nodes down, a 3+1 LUN still takes writes to an extent
/// never written before (placed degraded: the down node's chunk is marked
/// missing) and UNMAP of whole rows of an extent the down node holds; once
/// the node is back both extents are whole again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_extents_and_unmap_while_a_node_is_down() {
    let mut c = cluster_with_lun(128 * MIB).await;
    let url = c.url(0);
    qemu_io(&url, "write -P 0x11 0 1M").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let lun = c.summary().await.luns[0].id;
    assert!(
        c.extent(lun, 1).await.is_none(),
        "extent 1 is not allocated yet"
    );
    c.nodes[3].kill();
    // Extent 1 starts at 48 MiB; every 3+1 extent on four nodes has a
    // chunk on the dead node.
    qemu_io(&url, "write -P 0x22 50M 1M")
        .unwrap_or_else(|e| panic!("write to a new extent: {e}\n{}", c.logs()));
    qemu_io(&url, "read -P 0x22 50M 1M").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    // One whole row (3 × 64 KiB) of extent 0.
    qemu_io(&url, "discard 0 192K").unwrap_or_else(|e| panic!("unmap: {e}\n{}", c.logs()));
    qemu_io(&url, "read -P 0 0 192K").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    qemu_io(&url, "read -P 0x11 192K 832K").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    c.nodes[3].start();
    wait_whole(&c, Duration::from_secs(90)).await;
    qemu_io(&url, "read -P 0x22 50M 1M").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
}

/// `text` without its terminal colour codes (`ESC [ ... m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(ch) = chars.next() {
        if ch == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

/// A data holder away for a short while: the writes it missed (partial
/// rows, whole rows, an unmap) are copied to it when it returns, from the
/// primary's record of their ranges, instead of its whole chunk being
/// rebuilt; after that every stripe is consistent and every write reads
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_holder_is_caught_up_with_only_what_it_missed() {
    let mut c = cluster_with_lun(128 * MIB).await;
    // Extent 0 (48 MiB: three 16 MiB data chunks) written whole.
    io(&c, "write -P 0x11 0 48M");
    let s = c.summary().await;
    let (lun, chunk_bytes) = (s.luns[0].id, s.luns[0].chunk_bytes);
    let e = c.extent(lun, 0).await.unwrap();
    let victim = c.node_index(&e.nodes[1]);
    let primary = c.node_index(e.primary_node().unwrap());
    assert_ne!(victim, primary);
    c.nodes[victim].kill();
    // Partial rows, whole rows and an unmap, with chunk 1 away.
    let missed = [
        ("write -P 0x22 1M 64K", "read -P 0x22 1M 64K"),
        ("write -P 0x33 20M 300K", "read -P 0x33 20M 300K"),
        ("write -P 0x44 30M 3M", "read -P 0x44 30M 3M"),
        ("discard 40M 192K", "read -P 0 40M 192K"),
        ("write -P 0x55 47M 4K", "read -P 0x55 47M 4K"),
    ];
    for (w, _) in missed {
        io(&c, w);
    }
    c.nodes[victim].start();
    wait_whole(&c, Duration::from_secs(60)).await;
    assert_whole(&c).await;
    for (_, r) in missed {
        io(&c, r);
    }
    io(&c, "read -P 0x11 0 1M");
    io(&c, "read -P 0x11 10M 10M");
    let log = strip_ansi(&std::fs::read_to_string(&c.nodes[primary].log).unwrap_or_default());
    let line = log
        .lines()
        .find(|l| l.contains("catching up a chunk") && l.contains("extent=0 slot=1"))
        .unwrap_or_else(|| panic!("chunk 1 not caught up by its ranges:\n{}", c.logs()));
    let bytes: u64 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("bytes="))
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {line:?}"));
    eprintln!("caught up: {line}");
    assert!(
        bytes < chunk_bytes / 4,
        "caught up {bytes} of {chunk_bytes} bytes: more than it missed"
    );
}

/// An extent's primary crashes inside a write (a test hook: after the data
/// chunk took it, before the parity), the gateway that sent it dies too (so
/// nothing retries it), and another holder takes the extent over (a write
/// from a new gateway). While the old primary is down, a block of data
/// chunk 1 goes bad in a row nobody wrote since. When it returns, its chunk
/// (the parity) is caught up with the rows written since the takeover and
/// the rows its own journal names (the write it left in doubt, whose rows
/// nothing else records), and the bad block is then repaired from that
/// parity. Before, a chunk marked missing by a takeover was always rebuilt
/// whole: the rebuild met the bad block, which a 3+1 stripe with its parity
/// out cannot rebuild, so the parity stayed out for good and the block
/// unreadable (`weft-sim --seed 60`). Caught up without the journal's rows,
/// the parity would disagree with the data there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_taken_over_is_caught_up_and_a_bad_block_elsewhere_repaired() {
    // Its own flushes every second retire the journal records of the
    // first writes before the crash, so they are not rows in doubt.
    let mut c = cluster_configured_with_lun(64 * MIB, "[journal]\nflush_after_secs = 1\n").await;
    io(&c, "write -P 0x33 0 6M");
    let s = c.summary().await;
    let (lun, unit) = (s.luns[0].id, u64::from(s.luns[0].stripe_unit));
    let e = c.extent(lun, 0).await.unwrap();
    let old = c.node_index(e.primary_node().unwrap());
    let parity = usize::from(e.primary);
    let d1 = c.node_index(&e.nodes[1]);
    assert_ne!(old, d1);
    // The primary again, with the hook armed for its first write, once
    // it is registered again (and its records flushed).
    c.nodes[old].kill();
    c.nodes[old].set_env("WEFT_TEST_CRASH_POINT", Some("parity:1"));
    c.nodes[old].start();
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(&c.nodes[old].log)
        .unwrap_or_default()
        .matches("registered with the metadata")
        .count()
        < 2
    {
        assert!(std::time::Instant::now() < end, "not back\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!c.nodes[old].exited(), "crashed too soon\n{}", c.logs());
    let url = c.url(0);
    let mut doomed = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0x55 2M 8K", &url])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while !c.nodes[old].exited() {
        assert!(
            std::time::Instant::now() < end,
            "the hook never fired\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Before the old primary's lease lapses, so no takeover yet: the
    // write is never retried.
    c.gateways[0].kill();
    let _ = doomed.kill();
    let _ = doomed.wait();
    c.start_gateway(0).await;
    // Row 0, through a new primary.
    io(&c, "write -P 0x44 0 4K");
    let taken = c.extent(lun, 0).await.unwrap();
    assert_ne!(
        taken.primary_node(),
        e.primary_node(),
        "not taken over: {taken:?}"
    );
    assert_ne!(taken.chunks[parity], fabric::metadata::ChunkState::Ok);
    // A bad block in chunk 1 at chunk offset 1 MiB: not a row written
    // since, nor the one in doubt.
    let at = MIB + 100;
    assert!(at / unit != 0 && at / unit != 2 * MIB / (3 * unit));
    let file = chunk_file(&c, d1, lun, 0, 1);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[at as usize] ^= 0x5a;
    std::fs::write(&file, &bytes).unwrap();
    c.nodes[old].set_env("WEFT_TEST_CRASH_POINT", None);
    c.nodes[old].start();
    wait_whole(&c, Duration::from_secs(60)).await;
    io(&c, "read -P 0x44 0 4K");
    io(&c, &format!("read -P 0x33 4K {}", 2 * MIB - 4096));
    io(
        &c,
        &format!("read -P 0x33 {} {}", 2 * MIB + 8192, 4 * MIB - 8192),
    );
    assert_whole(&c).await;
    let new = c.node_index(taken.primary_node().unwrap());
    let log = strip_ansi(&std::fs::read_to_string(&c.nodes[new].log).unwrap_or_default());
    let line = log
        .lines()
        .find(|l| {
            l.contains("catching up a chunk") && l.contains(&format!("extent=0 slot={parity}"))
        })
        .unwrap_or_else(|| panic!("the parity was not caught up:\n{}", c.logs()));
    eprintln!("{line}");
}

/// A data holder killed and started again at once (a process that crashed
/// and was restarted): a write that failed against it while it was down is
/// mended in place once it is back. Marking the chunk missing instead
/// waited, holding the extent, for the holder's lease to lapse, which a
/// restarted holder renews: 2 × 3 s + 10 s, and then the write failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_missed_by_a_holder_back_at_once_is_mended_in_place() {
    // Row 0 of chunk 1 (LUN bytes unit..2·unit).
    mended_after_a_quick_restart(|unit| {
        (
            format!("write -P 0x22 {unit} 4K"),
            format!("read -P 0x22 {unit} 4K"),
        )
    })
    .await;
}

/// The same for an unmap of whole rows, which every chunk takes as a hole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmap_missed_by_a_holder_back_at_once_is_mended_in_place() {
    // Rows 0–3 whole (a row is 3·unit of the LUN).
    mended_after_a_quick_restart(|unit| {
        (
            format!("discard 0 {}", 12 * unit),
            format!("read -P 0 0 {}", 12 * unit),
        )
    })
    .await;
}

/// Kills the holder of data chunk 1 of extent 0, runs the command that
/// `cmds(stripe unit)` gives while it is down, starts the holder again
/// 0.5 s later, and checks that the command was mended in place, soon,
/// with no chunk marked missing, and reads back.
async fn mended_after_a_quick_restart(cmds: impl Fn(u64) -> (String, String)) {
    let mut c = cluster_with_lun(64 * MIB).await;
    let url = c.url(0);
    io(&c, "write -P 0x11 0 48M");
    let s = c.summary().await;
    let (lun, unit) = (s.luns[0].id, u64::from(s.luns[0].stripe_unit));
    let (change, check) = cmds(unit);
    let e = c.extent(lun, 0).await.unwrap();
    let victim = c.node_index(&e.nodes[1]);
    let primary = c.node_index(e.primary_node().unwrap());
    assert_ne!(victim, primary);
    c.nodes[victim].kill();
    let started = std::time::Instant::now();
    let changer = std::thread::spawn({
        let (url, change) = (url.clone(), change.clone());
        move || qemu_io(&url, &change)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.nodes[victim].start();
    let changed = changer.join().unwrap();
    let took = started.elapsed();
    changed.unwrap_or_else(|e| panic!("{change} failed: {e}\n{}", c.logs()));
    eprintln!("{change} took {took:?}");
    let log = strip_ansi(&std::fs::read_to_string(&c.nodes[primary].log).unwrap_or_default());
    assert!(
        log.contains("mended in place"),
        "{change} did not fail against the killed holder (the test proves nothing), \
         or was not mended:\n{}",
        c.logs()
    );
    assert!(
        took < Duration::from_secs(8),
        "{change} took {took:?}: it waited for a lease that does not lapse\n{}",
        c.logs()
    );
    let e = c.extent(lun, 0).await.unwrap();
    assert!(
        e.chunks
            .iter()
            .all(|s| *s == fabric::metadata::ChunkState::Ok),
        "a chunk was marked missing: {e:?}"
    );
    io(&c, &check);
    io(&c, &format!("read -P 0x11 {} {unit}", 12 * unit));
    assert_whole(&c).await;
}

/// Extent 0 of the cluster's LUN once its row 0 is written whole with
/// 0x11 through gateway 0: the LUN, its stripe unit, and the nodes (by
/// index) holding data chunks 0 and 1 and the primary, checked to differ.
struct Row0 {
    lun: u64,
    unit: u64,
    chunk0: usize,
    chunk1: usize,
    primary: usize,
}

async fn write_row_0(c: &Cluster) -> Row0 {
    let s = c.summary().await;
    let (lun, unit) = (s.luns[0].id, u64::from(s.luns[0].stripe_unit));
    let cmd = format!("write -P 0x11 0 {}", 3 * unit);
    qemu_io(&c.url(0), &cmd).unwrap_or_else(|e| panic!("{cmd}: {e}\n{}", c.logs()));
    let e = c.extent(lun, 0).await.unwrap();
    let r = Row0 {
        lun,
        unit,
        chunk0: c.node_index(&e.nodes[0]),
        chunk1: c.node_index(&e.nodes[1]),
        primary: c.node_index(e.primary_node().unwrap()),
    };
    assert!(r.chunk0 != r.primary && r.chunk1 != r.primary, "{e:?}");
    r
}

/// A write whose call reached data chunk 0, which took it, but whose
/// answer was lost (its holder aborts right after: a test hook), while the
/// holder of data chunk 1, which the write also touches, was down: two
/// chunks of a 3+1 stripe out, so the write fails, and chunk 0 may hold
/// data its parity lacks. The gateway retries. On chunk 0 the retry finds
/// `old ⊕ new` = 0, so it must not be acknowledged over that stripe: the
/// rows are reconciled first (once chunk 1 is back to read). Without that,
/// the retry was acknowledged with chunk 1 marked missing, and chunk 1,
/// caught up from the stripe, got chunk 0's change in a block of its own.
/// Then the holder of chunk 0 is killed, and the row, rebuilt from the
/// others, must read back as acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_over_a_chunk_write_whose_answer_was_lost_is_not_lost() {
    let mut c = Cluster::new(4, 1);
    for n in &mut c.nodes {
        n.set_env("WEFT_TEST_CRASH_POINT", Some("chunk-write:1"));
    }
    c.start_nodes().await;
    c.create_lun("data", 64 * MIB, 3).await;
    c.start_gateway(0).await;
    for n in &mut c.nodes {
        n.set_env("WEFT_TEST_CRASH_POINT", None); // for restarts
    }
    let url = c.url(0);
    // Row 0 whole: every chunk overwritten, no delta write (no hook).
    let Row0 {
        lun,
        unit,
        chunk0: took,
        chunk1: down,
        primary,
    } = write_row_0(&c).await;
    let row = 3 * unit;
    c.nodes[down].kill();
    // The last block of chunk 0's row 0 and the first of chunk 1's.
    let at = unit - 4096;
    let writer = std::thread::spawn({
        let url = url.clone();
        move || qemu_io(&url, &format!("write -P 0x22 {at} 8K"))
    });
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while !c.nodes[took].exited() {
        assert!(
            std::time::Instant::now() < end,
            "the hook never fired: the test proves nothing\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.nodes[took].start();
    // Long enough for chunk 1's lease to lapse and for it to be marked
    // missing by a retry (what happened before the fix).
    tokio::time::sleep(Duration::from_secs(6)).await;
    c.nodes[down].start();
    let written = writer.join().unwrap();
    let log = strip_ansi(&std::fs::read_to_string(&c.nodes[primary].log).unwrap_or_default());
    assert!(
        [0, 1]
            .iter()
            .all(|j| log.contains(&format!("chunk write failed chunk={lun}/0/{j} "))),
        "the write did not fail on both chunks (the test proves nothing)\n{}",
        c.logs()
    );
    if let Err(err) = written {
        // The gateway gave up: the initiator retries.
        eprintln!("the write failed, retrying it: {err}");
        io(&c, &format!("write -P 0x22 {at} 8K"));
    }
    // Whatever was marked missing is caught up; then the holder that took
    // the write goes away and its chunk is read from the others.
    wait_whole(&c, Duration::from_secs(60)).await;
    c.nodes[took].kill();
    io(&c, &format!("read -P 0x11 0 {at}"));
    io(&c, &format!("read -P 0x22 {at} 8K"));
    io(
        &c,
        &format!("read -P 0x11 {} {}", at + 8192, row - at - 8192),
    );
    c.nodes[took].start();
    wait_whole(&c, Duration::from_secs(60)).await;
    assert_whole(&c).await;
    io(&c, &format!("read -P 0x11 0 {at}"));
    io(&c, &format!("read -P 0x22 {at} 8K"));
    io(
        &c,
        &format!("read -P 0x11 {} {}", at + 8192, row - at - 8192),
    );
}

/// A write that fails with a data chunk of its stripe already out (marked
/// missing, its holder gone for good) and a second data holder down: its
/// journal record must not wait for the first chunk to come back before
/// it is retired (with four nodes it could never be rebuilt elsewhere, and
/// the record pinned the journal: every later record stayed in it). With
/// no chunk in doubt over its rows, nothing can disagree there, so the
/// record is retired once the second holder is back; writes and reads go
/// on, and once the first holder returns too the extent is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_with_a_chunk_out_does_not_pin_the_journal() {
    let mut c = cluster_with_lun(64 * MIB).await;
    let url = c.url(0);
    let Row0 {
        lun,
        unit,
        chunk0: d0,
        chunk1: d1,
        primary,
    } = write_row_0(&c).await;
    // Chunk 0 out: its holder killed, a write to it marks it missing.
    c.nodes[d0].kill();
    io(&c, "write -P 0x22 0 4K");
    let e = c.extent(lun, 0).await.unwrap();
    assert_ne!(e.chunks[0], fabric::metadata::ChunkState::Ok, "{e:?}");
    // A write at the new epoch (the chunks in service are checked once
    // per epoch, before any journal record).
    io(&c, &format!("write -P 0x44 {} 4K", 2 * unit));
    // A write to chunk 1 with its holder down too: two chunks out, it
    // fails after its journal record (the gateway retries it until the
    // holder is back).
    c.nodes[d1].kill();
    let writer = std::thread::spawn({
        let url = url.clone();
        move || qemu_io(&url, &format!("write -P 0x33 {unit} 4K"))
    });
    let log_of = |c: &Cluster| {
        strip_ansi(&std::fs::read_to_string(&c.nodes[primary].log).unwrap_or_default())
    };
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while !log_of(&c).contains("chunk write failed chunk=1/0/1") {
        assert!(
            std::time::Instant::now() < end,
            "the write never failed\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.nodes[d1].start();
    let written = writer.join().unwrap();
    if let Err(err) = written {
        eprintln!("the write failed, retrying it: {err}");
        io(&c, &format!("write -P 0x33 {unit} 4K"));
    }
    let end = std::time::Instant::now() + Duration::from_secs(20);
    while !log_of(&c).contains("journal record is retired") {
        assert!(
            std::time::Instant::now() < end,
            "the failed write's journal record was not retired while chunk 0 is out\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    io(&c, "read -P 0x22 0 4K");
    io(&c, &format!("read -P 0x33 {unit} 4K"));
    io(&c, &format!("read -P 0x11 4K {}", unit - 4096));
    io(&c, &format!("read -P 0x11 {} {}", unit + 4096, unit - 4096));
    io(&c, &format!("read -P 0x44 {} 4K", 2 * unit));
    io(
        &c,
        &format!("read -P 0x11 {} {}", 2 * unit + 4096, unit - 4096),
    );
    c.nodes[d0].start();
    wait_whole(&c, Duration::from_secs(60)).await;
    assert_whole(&c).await;
    io(&c, "read -P 0x22 0 4K");
    io(&c, &format!("read -P 0x33 {unit} 4K"));
}

/// `qemu-io` with its cache in `unsafe` mode: its writes are not FUA (as
/// by default, writethrough) and it sends no SYNCHRONIZE CACHE, not even
/// when it closes the LUN, so what it writes is acknowledged but not
/// flushed.
fn qemu_io_unflushed(url: &str, cmd: &str) -> Result<String, String> {
    qemu_io_cached(url, "unsafe", &[cmd])
}

/// `qemu-io` with cache mode `cache`, running `cmds` in one session.
fn qemu_io_cached(url: &str, cache: &str, cmds: &[&str]) -> Result<String, String> {
    let mut args = vec!["-t", cache, "-f", "raw"];
    for c in cmds {
        args.extend(["-c", c]);
    }
    args.push(url);
    let out = Command::new("qemu-io").args(&args).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() && !text.contains("failed") {
        Ok(text)
    } else {
        Err(text)
    }
}

/// A cluster with row 0 written whole (and durable: qemu-io's writes are
/// FUA by default), then an 8 KiB write of 0x22 at `unit + 4K` (all in
/// chunk 1) that is acknowledged but not flushed. Chunk 1's file as it
/// was before that write is kept at `saved`, to play its loss.
struct Unflushed {
    c: Cluster,
    row: Row0,
    /// Chunk 1's file on its holder, and its copy from before the write.
    file: std::path::PathBuf,
    saved: std::path::PathBuf,
}

async fn unflushed_write_to_chunk_1(flush_after_secs: u64) -> Unflushed {
    let c = cluster_configured_with_lun(
        64 * MIB,
        &format!("[journal]\nflush_after_secs = {flush_after_secs}\n"),
    )
    .await;
    let row = write_row_0(&c).await;
    let file = chunk_file(&c, row.chunk1, row.lun, 0, 1);
    let saved = c.dir.path().join("chunk1.saved");
    std::fs::copy(&file, &saved).unwrap();
    let cmd = format!("write -P 0x22 {} 8K", row.unit + 4096);
    qemu_io_unflushed(&c.url(0), &cmd).unwrap_or_else(|e| panic!("{cmd}: {e}\n{}", c.logs()));
    Unflushed {
        c,
        row,
        file,
        saved,
    }
}

impl Unflushed {
    /// A power loss of chunk 1's holder: its process killed, the file put
    /// back as it was before the write (as if the page cache had never
    /// reached the disk), and its kernel booted again (a new boot id).
    fn lose_chunk_1s_page_cache(&mut self) {
        let d1 = self.row.chunk1;
        self.c.nodes[d1].kill();
        std::fs::copy(&self.saved, &self.file).unwrap();
        self.c.new_boot(d1);
    }
}

/// A data holder loses power after acknowledging a write the initiator
/// did not flush: its chunk file comes back without it while the parity
/// has it. The primary keeps the write's journal record until a flush of
/// every chunk succeeds; the flush it makes by itself within
/// `flush_after_secs` finds the holder down and marks its chunk missing,
/// so when the holder returns the chunk is rebuilt from the others and
/// the write is not lost. Before, the record was retired as soon as every
/// chunk had the write in its page cache: nothing marked the chunk, it
/// came back serving its old data under parity that had the new, and the
/// stripe disagreed for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_holder_that_loses_power_loses_no_acknowledged_write() {
    // The primary's own flush every 2 s. One that falls between the
    // write's acknowledgement and the kill (a few ms) would make the
    // write durable before the test takes it away, an impossible case
    // (about 1 run in 500 or fewer).
    let mut u = unflushed_write_to_chunk_1(2).await;
    u.lose_chunk_1s_page_cache();
    let Unflushed { c, row, .. } = &mut u;
    let (lun, unit, d1) = (row.lun, row.unit, row.chunk1);
    // The holder stays down until the primary's own flush has found it
    // gone (or 30 s: without that flush nothing ever does).
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < end {
        let e = c.extent(lun, 0).await.unwrap();
        if e.chunks[1] != fabric::metadata::ChunkState::Ok {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    c.nodes[d1].start();
    wait_whole(c, Duration::from_secs(60)).await;
    io(c, &format!("read -P 0x22 {} 8K", unit + 4096));
    io(c, &format!("read -P 0x11 0 {}", unit + 4096));
    io(
        c,
        &format!("read -P 0x11 {} {}", unit + 12288, 2 * unit - 12288),
    );
    assert_whole(c).await;
}

/// A data holder loses power and is back before anything noticed it was
/// gone (no write, no flush meanwhile): its chunk file lacks a write the
/// initiator did not flush, and its store now answers with a new
/// incarnation. The next flush finds that, and rebuilds the rows written
/// since the last flush on that chunk from the others, so the write is
/// not lost and the stripe agrees. Before, the flush succeeded and the
/// chunk kept its old data under parity that had the new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_holder_back_at_once_from_a_power_loss_loses_no_acknowledged_write() {
    // No flush of its own within the test: the initiator's finds it.
    let mut u = unflushed_write_to_chunk_1(600).await;
    u.lose_chunk_1s_page_cache();
    let Unflushed { c, row, .. } = &mut u;
    let (unit, d1, primary) = (row.unit, row.chunk1, row.primary);
    let url = c.url(0);
    c.nodes[d1].start();
    // The initiator writes elsewhere and flushes (in writeback mode, not
    // FUA: qemu sends SYNCHRONIZE CACHE only after such a write).
    let cmds = [&format!("write -P 0x33 {} 4K", 3 * unit)[..], "flush"];
    qemu_io_cached(&url, "writeback", &cmds)
        .unwrap_or_else(|e| panic!("{cmds:?}: {e}\n{}", c.logs()));
    assert_whole(c).await;
    io(c, &format!("read -P 0x22 {} 8K", unit + 4096));
    let log = strip_ansi(&std::fs::read_to_string(&c.nodes[primary].log).unwrap_or_default());
    assert!(
        log.contains("lost their page cache"),
        "the flush did not find the holder's lost page cache\n{}",
        c.logs()
    );
    // And from the others, with the holder gone again.
    c.nodes[d1].kill();
    io(c, &format!("read -P 0x22 {} 8K", unit + 4096));
    io(c, &format!("read -P 0x11 0 {}", unit + 4096));
}

/// The whole cluster loses power after a write the initiator did not
/// flush: one data chunk's file comes back without it, the others (its
/// parity too) with it. Losing the write is allowed (it was not flushed);
/// the stripe disagreeing with its parity is not (a later rebuild from it
/// would return another block's bytes). The primary's journal still has
/// the write's record (kept until a flush), so its replay recomputes the
/// parity of those rows from the data. Before, the record was gone and
/// the stripe stayed inconsistent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_loss_of_every_node_leaves_every_stripe_consistent() {
    // No flush of its own within the test: the write stays unflushed.
    let mut u = unflushed_write_to_chunk_1(600).await;
    for n in 0..u.c.nodes.len() {
        u.c.nodes[n].kill();
        u.c.new_boot(n);
    }
    u.lose_chunk_1s_page_cache();
    let Unflushed { c, row, .. } = &mut u;
    let (unit, d1) = (row.unit, row.chunk1);
    let url = c.url(0);
    for n in 0..c.nodes.len() {
        c.nodes[n].start();
    }
    wait_whole(c, Duration::from_secs(60)).await;
    // Chunk 1 lost the write; the stripe must agree with what it holds.
    let mut good = false;
    let end = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < end {
        if qemu_io(&url, &format!("read -P 0x11 0 {}", 3 * unit)).is_ok() {
            good = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(good, "row 0 does not read back\n{}", c.logs());
    assert_whole(c).await;
    // And a rebuild of chunk 1 from the others returns the same.
    c.nodes[d1].kill();
    io(c, &format!("read -P 0x11 0 {}", 3 * unit));
}

/// A chunkserver that stays away: once `replace_after` has passed, the
/// primaries move its chunks to the fifth node and rebuild them there,
/// with no write needed to find them missing; the extents are whole
/// without it, and its return changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_of_a_node_that_stays_away_are_rebuilt_elsewhere() {
    let mut c = Cluster::new(5, 1);
    c.append_node_config("[repair]\nreplace_after_secs = 3\ngc_interval_secs = 2\n");
    c.start_nodes().await;
    c.create_lun("data", 96 * MIB, 3).await;
    c.start_gateway(0).await;
    let img = c.dir.path().join("in.img");
    let data = random_image(&img, 96 * MIB, 21);
    upload(&c, 0, &img);
    let lun = c.summary().await.luns[0].id;
    let extents = [
        c.extent(lun, 0).await.unwrap(),
        c.extent(lun, 1).await.unwrap(),
    ];
    // A holder of extent 0 that leads no extent (an extent whose primary
    // is away is taken over only by the next I/O), a non-voter if can be.
    let leads = |n: &fabric::NodeId| extents.iter().any(|e| e.primary_node() == Some(n));
    let mut holders: Vec<usize> = extents[0]
        .nodes
        .iter()
        .filter(|n| !leads(n))
        .map(|n| c.node_index(n))
        .collect();
    holders.sort_by_key(|i| std::cmp::Reverse(*i));
    let v = holders[0];
    let victim = cluster::id(&c.nodes[v].name);
    // Its chunk files, deleted once it is back and they are rebuilt
    // elsewhere.
    let files: Vec<std::path::PathBuf> = extents
        .iter()
        .flat_map(|e| {
            e.nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| **n == victim)
                .map(|(slot, _)| chunk_file(&c, v, lun, e.index, slot))
        })
        .collect();
    assert!(
        !files.is_empty() && files.iter().all(|f| f.exists()),
        "{files:?}"
    );
    c.nodes[v].kill();
    let started = std::time::Instant::now();
    let end = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let mut moved = true;
        for i in 0..2 {
            let e = c.extent(lun, i).await.unwrap();
            moved &= !e.nodes.contains(&victim)
                && e.chunks
                    .iter()
                    .all(|s| *s == fabric::metadata::ChunkState::Ok);
        }
        if moved {
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "the chunks of {victim} were not rebuilt elsewhere: {:?}\n{}",
            c.extent(lun, 0).await,
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "{victim}'s chunks rebuilt elsewhere {:?} after the kill",
        started.elapsed()
    );
    assert_whole(&c).await;
    let back = download(&c, 0, 96 * MIB);
    assert_eq!(first_difference(&data, &back), None, "data differs");
    // The old holder returns: fenced off the chunks it no longer holds.
    c.nodes[v].start();
    tokio::time::sleep(Duration::from_secs(3)).await;
    for i in 0..2 {
        let e = c.extent(lun, i).await.unwrap();
        assert!(!e.nodes.contains(&victim), "{e:?}");
    }
    let back = download(&c, 0, 96 * MIB);
    assert_eq!(
        first_difference(&data, &back),
        None,
        "data differs after {victim} returned"
    );
    // Its copies of the moved chunks are garbage: deleted within a few
    // collection rounds. The chunks' new holders keep theirs.
    let end = tokio::time::Instant::now() + Duration::from_secs(30);
    while files.iter().any(|f| f.exists()) {
        assert!(
            tokio::time::Instant::now() < end,
            "{victim} kept chunk files it no longer holds: {files:?}\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for e in &extents {
        let e = c.extent(lun, e.index).await.unwrap();
        for (slot, n) in e.nodes.iter().enumerate() {
            let f = chunk_file(&c, c.node_index(n), lun, e.index, slot);
            assert!(f.exists(), "{f:?} of {n} is gone");
        }
    }
    assert_whole(&c).await;
}

/// Where node `i` keeps chunk `slot` of extent `index` of LUN `lun`.
fn chunk_file(c: &Cluster, i: usize, lun: u64, index: u64, slot: usize) -> std::path::PathBuf {
    c.dir.path().join(format!(
        "data-{i}/chunks/{lun:016x}/{index:016x}-{slot:02x}.chunk"
    ))
}

/// Which nodes of a `3+2` cluster to kill.
#[derive(Clone, Copy, Debug)]
enum RsVictims {
    /// Two that lead no extent.
    TwoHolders,
    /// Extent 0's primary.
    Primary,
}

/// Two nodes that lead no extent (with its primary, a 3+2 extent loses
/// all its parity: docs/data-path.md), at most one of them a metadata voter
/// (cs-1..cs-3), so the metadata keeps its majority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_holders_of_a_3_plus_2_lun_killed_during_writes() {
    kill_in_3_plus_2(RsVictims::TwoHolders).await;
}

/// The primary of a 3+2 extent: a parity holder takes over, both parity
/// chunks go out (the rows in doubt went with the old primary's journal)
/// and are rebuilt from the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_of_a_3_plus_2_lun_killed_during_writes() {
    kill_in_3_plus_2(RsVictims::Primary).await;
}

/// A `3+2` LUN (Reed–Solomon) on five nodes: nodes killed with SIGKILL in
/// the middle of a write stream. The stream completes, reads return it
/// with them away, partial writes then read back, and once they return
/// every extent is whole and every stripe's parity checks.
async fn kill_in_3_plus_2(which: RsVictims) {
    const STREAM: u64 = 96 * MIB;
    let mut c = Cluster::new(5, 1);
    c.start_nodes().await;
    c.create_lun_ec("data", STREAM, 3, 2).await;
    c.start_gateway(0).await;
    let img = c.dir.path().join("in.img");
    let first = random_image(&img, STREAM, 30);
    upload(&c, 0, &img);
    let back = download(&c, 0, STREAM);
    assert_eq!(first_difference(&first, &back), None, "3+2: data differs");
    let lun = c.summary().await.luns[0].id;
    let extents = [
        c.extent(lun, 0).await.unwrap(),
        c.extent(lun, 1).await.unwrap(),
    ];
    let victims = match which {
        RsVictims::TwoHolders => {
            let mut cands: Vec<usize> = (0..5)
                .filter(|i| {
                    let n = cluster::id(&c.nodes[*i].name);
                    extents.iter().all(|e| e.primary_node() != Some(&n))
                })
                .collect();
            cands.sort_by_key(|i| std::cmp::Reverse(*i));
            let v = vec![cands[0], cands[1]];
            assert!(
                v.iter().filter(|v| **v < 3).count() <= 1,
                "placement left only voters to kill: {extents:?}"
            );
            v
        }
        RsVictims::Primary => vec![c.node_index(extents[0].primary_node().unwrap())],
    };
    let data = random_image(&img, STREAM, 31);
    let url = c.url(0);
    let path = img.display().to_string();
    let mut writer = Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw", &path, &url])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        writer.try_wait().unwrap().is_none(),
        "the write stream ended before the kills: the test proves nothing"
    );
    for v in &victims {
        c.nodes[*v].kill();
    }
    let out = writer.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{which:?} killed: the write stream failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.logs()
    );
    let back = download(&c, 0, STREAM);
    assert_eq!(
        first_difference(&data, &back),
        None,
        "{which:?} of 3+2 down: data differs\n{}",
        c.logs()
    );
    // Partial rows while chunks are out: Reed–Solomon deltas, and parity
    // recomputed over chunks that missed the write.
    let mut data = data;
    for (i, (off, len)) in [
        (60u64, 80u64),
        (130, 40),
        (4, 4),
        (68, 4),
        (132, 4),
        (200, 376),
    ]
    .into_iter()
    .enumerate()
    {
        let (off, len) = (off * 1024, len * 1024);
        let pat = 0x51 + i as u8;
        qemu_io(&url, &format!("write -P {pat} {off} {len}"))
            .unwrap_or_else(|e| panic!("partial write, {which:?} down: {e}\n{}", c.logs()));
        data[off as usize..(off + len) as usize].fill(pat);
    }
    let back = download(&c, 0, STREAM);
    assert_eq!(
        first_difference(&data, &back),
        None,
        "partial writes with {which:?} of 3+2 down: data differs"
    );
    let s = c.summary().await;
    assert!(
        s.degraded.iter().any(|(_, n)| *n > 0),
        "no extent is degraded with {which:?} down: {:?}",
        s.degraded
    );
    for v in &victims {
        c.nodes[*v].start();
    }
    wait_whole(&c, Duration::from_secs(90)).await;
    assert_whole(&c).await;
    let back = download(&c, 0, STREAM);
    assert_eq!(
        first_difference(&data, &back),
        None,
        "after the rebuild: data differs"
    );
}
