//! The real `weft-chunkserver` binary over mTLS: corruption on disk,
//! filling to the reserve, malformed requests, config errors.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::process::Command;

use bytes::Bytes;
use common::*;
use fabric::identity::Role;
use fabric::rpc::RpcError;
use fabric::wire::chunk::*;
use fabric::wire::Kind;
use rand::{Rng, SeedableRng};

const MIB: u64 = 1024 * 1024;
const BLOCK: u64 = 4096;

fn chunk_file(node: &Node, c: ChunkRef) -> std::path::PathBuf {
    node.data_dir()
        .join("chunks")
        .join(format!("{:016x}", c.lun))
        .join(format!("{:016x}-{:02x}.chunk", c.extent, c.index))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bytes_fail_reads_and_the_scrubber_finds_every_one() {
    let seed: u64 = rand::random();
    eprintln!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut node = Node::new(Settings::default());
    let t = node.client(Role::Chunkserver, "tester");
    node.start_ready(&t).await;
    let chunks = [chunk(1, 0, 0), chunk(1, 1, 2)];
    let blocks = MIB / BLOCK;
    for (i, &c) in chunks.iter().enumerate() {
        t.create(c, MIB, 1).await.unwrap();
        // Every block written except the last 16 (holes).
        let mut data = Vec::new();
        for b in 0..blocks - 16 {
            data.extend(block_pattern(i as u64, b));
        }
        t.write(c, 1, 0, Bytes::from(data), Durability::Stable)
            .await
            .unwrap();
    }
    node.terminate();

    // Flip a byte in 10 random blocks per chunk (some in holes).
    let mut flipped: BTreeSet<(ChunkRef, u64)> = BTreeSet::new();
    for &c in &chunks {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(chunk_file(&node, c))
            .unwrap();
        while flipped.iter().filter(|(x, _)| *x == c).count() < 10 {
            let b = rng.random_range(0..blocks);
            if !flipped.insert((c, b)) {
                continue;
            }
            let at = b * BLOCK + rng.random_range(0..BLOCK);
            let mut byte = [0u8; 1];
            f.read_exact_at(&mut byte, at).unwrap();
            byte[0] ^= rng.random_range(1..=255u8);
            f.write_all_at(&byte, at).unwrap();
        }
        f.sync_all().unwrap();
    }

    node.start_ready(&t).await;
    // The scrubber finds exactly the flipped blocks.
    let (report, _) = t
        .call::<ChunkScrub>(&ChunkScrubRequest { blocks_per_sec: 0 }, Bytes::new())
        .await
        .unwrap();
    let found: BTreeSet<(ChunkRef, u64)> = report
        .bad
        .iter()
        .flat_map(|b| b.blocks.iter().map(move |&x| (b.chunk, x)))
        .collect();
    assert_eq!(found, flipped, "scrub report {report:?}");
    assert_eq!(report.bad_blocks_total, flipped.len() as u64);
    assert_eq!(report.checked_blocks, 2 * blocks);

    // Reads of flipped blocks fail with the checksum error naming the
    // block; every other block reads back exactly.
    for (i, &c) in chunks.iter().enumerate() {
        for b in 0..blocks {
            let r = t.read(c, 1, b * BLOCK, BLOCK as u32).await;
            if flipped.contains(&(c, b)) {
                let e = r.unwrap_err();
                assert_eq!(app_code(&e), Some(chunk_error::CHECKSUM), "{e}");
                assert!(e.to_string().contains(&format!("[{b}]")), "{e}");
            } else {
                let want = if b < blocks - 16 {
                    block_pattern(i as u64, b)
                } else {
                    vec![0; BLOCK as usize]
                };
                assert_eq!(r.unwrap(), want, "chunk {c} block {b}");
            }
        }
        // A read spanning a flipped block returns no bytes at all.
        let e = t.read(c, 1, 0, MIB as u32).await.unwrap_err();
        assert_eq!(app_code(&e), Some(chunk_error::CHECKSUM));
    }
    assert!(t.stats().await.checksum_errors >= flipped.len() as u64);
    // A whole-chunk stream refuses too.
    let e = t
        .call::<ChunkFetch>(
            &ChunkFetchRequest {
                chunk: chunks[0],
                epoch: 1,
            },
            Bytes::new(),
        )
        .await
        .unwrap_err();
    assert_eq!(app_code(&e), Some(chunk_error::CHECKSUM));
    node.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_to_the_reserve_refuses_new_chunks_only() {
    let mut node = Node::new(Settings {
        capacity: "4M",
        reserve: "1M",
        scrub: false,
    });
    let t = node.client(Role::Chunkserver, "tester");
    node.start_ready(&t).await;
    for e in 0..3 {
        t.create(chunk(2, e, 0), MIB, 1).await.unwrap();
    }
    let err = t.create(chunk(2, 3, 0), MIB, 1).await.unwrap_err();
    assert_eq!(app_code(&err), Some(chunk_error::FULL), "{err}");
    let text = err.to_string();
    for n in ["3145728", "4194304", "1048576"] {
        assert!(text.contains(n), "{n} not in {text}");
    }
    let s = t.stats().await;
    assert!(s.full);
    assert_eq!(
        (s.capacity_bytes, s.used_bytes, s.reserve_bytes, s.chunks),
        (4 * MIB, 3 * MIB, MIB, 3)
    );
    // Streaming a new chunk in is a new chunk too.
    let err = t
        .call::<ChunkPut>(
            &ChunkPutRequest {
                chunk: chunk(2, 9, 0),
                size_bytes: MIB,
                epoch: 1,
                durability: Durability::Stable,
            },
            Bytes::from(vec![7u8; BLOCK as usize]),
        )
        .await
        .unwrap_err();
    assert_eq!(app_code(&err), Some(chunk_error::FULL), "{err}");
    // Existing chunks stay writable and readable, across a restart too.
    let data = Bytes::from(block_pattern(9, 9).repeat(8));
    for e in 0..3 {
        t.write(
            chunk(2, e, 0),
            1,
            64 * BLOCK,
            data.clone(),
            Durability::Stable,
        )
        .await
        .unwrap();
    }
    node.terminate();
    node.start_ready(&t).await;
    for e in 0..3 {
        let got = t
            .read(chunk(2, e, 0), 1, 64 * BLOCK, 8 * BLOCK as u32)
            .await;
        assert_eq!(got.unwrap(), data);
    }
    // Deleting one makes room again.
    t.call::<ChunkDelete>(
        &ChunkDeleteRequest {
            chunk: chunk(2, 0, 0),
            epoch: 1,
        },
        Bytes::new(),
    )
    .await
    .unwrap();
    t.create(chunk(2, 3, 0), MIB, 1).await.unwrap();
    node.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_typed_errors_and_the_server_keeps_serving() {
    let mut node = Node::new(Settings::default());
    let t = node.client(Role::Chunkserver, "tester");
    node.start_ready(&t).await;
    let c = chunk(3, 0, 1);
    t.create(c, MIB, 5).await.unwrap();
    let blk = Bytes::from(vec![1u8; BLOCK as usize]);
    let code = |r: Result<Bytes, RpcError>| match r {
        Ok(_) => panic!("accepted"),
        Err(e) => app_code(&e).unwrap_or_else(|| panic!("not a chunk error: {e}")),
    };
    use chunk_error::*;
    // Bad ranges.
    assert_eq!(code(t.read(c, 5, 1, BLOCK as u32).await), MISALIGNED);
    assert_eq!(code(t.read(c, 5, 0, 100).await), MISALIGNED);
    assert_eq!(code(t.read(c, 5, MIB, BLOCK as u32).await), OUT_OF_RANGE);
    assert_eq!(
        code(t.read(c, 5, u64::MAX - 4095, BLOCK as u32).await),
        OUT_OF_RANGE
    );
    assert_eq!(
        code(
            t.write(
                c,
                5,
                MIB - BLOCK,
                blk.repeat(2).into(),
                Durability::Buffered
            )
            .await
        ),
        OUT_OF_RANGE
    );
    assert_eq!(
        code(
            t.write(c, 5, 0, Bytes::from(vec![0u8; 100]), Durability::Buffered)
                .await
        ),
        MISALIGNED
    );
    // Huge lengths.
    assert_eq!(code(t.read(c, 5, 0, u32::MAX).await), TOO_LARGE);
    let e = t.punch(c, 5, 0, u64::MAX - 4095).await.unwrap_err();
    assert_eq!(app_code(&e), Some(OUT_OF_RANGE), "{e}");
    let e = t.create(chunk(3, 1, 0), 1 << 40, 1).await.unwrap_err();
    assert_eq!(app_code(&e), Some(TOO_LARGE), "{e}");
    let e = t.create(chunk(3, 1, 0), 1000, 1).await.unwrap_err();
    assert_eq!(app_code(&e), Some(MISALIGNED), "{e}");
    // Unknown chunks.
    assert_eq!(
        code(t.read(chunk(9, 9, 9), 5, 0, BLOCK as u32).await),
        NOT_FOUND
    );
    assert_eq!(
        code(
            t.write(chunk(9, 9, 9), 5, 0, blk.clone(), Durability::Buffered)
                .await
        ),
        NOT_FOUND
    );
    let e = t.create(c, MIB, 5).await.unwrap_err();
    assert_eq!(app_code(&e), Some(EXISTS), "{e}");
    // Stale epochs: raise to 7, then 6 is refused with both numbers named.
    t.call::<ChunkSetEpoch>(&ChunkSetEpochRequest { chunk: c, epoch: 7 }, Bytes::new())
        .await
        .unwrap();
    let e = t
        .write(c, 6, 0, blk.clone(), Durability::Stable)
        .await
        .unwrap_err();
    assert_eq!(app_code(&e), Some(STALE_EPOCH), "{e}");
    assert!(
        e.to_string().contains("stale epoch 6, chunk is at 7"),
        "{e}"
    );
    assert_eq!(code(t.read(c, 6, 0, BLOCK as u32).await), STALE_EPOCH);
    let e = t
        .call::<ChunkDelete>(&ChunkDeleteRequest { chunk: c, epoch: 6 }, Bytes::new())
        .await
        .unwrap_err();
    assert_eq!(app_code(&e), Some(STALE_EPOCH), "{e}");
    // Payload where none belongs; more data than the chunk holds.
    let e = t
        .call::<ChunkRead>(
            &ChunkReadRequest {
                chunk: c,
                epoch: 7,
                offset: 0,
                len: 4096,
            },
            blk.clone(),
        )
        .await
        .unwrap_err();
    assert_eq!(app_code(&e), Some(INVALID), "{e}");
    let e = t
        .call::<ChunkPut>(
            &ChunkPutRequest {
                chunk: c,
                size_bytes: BLOCK,
                epoch: 7,
                durability: Durability::Stable,
            },
            blk.repeat(2).into(),
        )
        .await
        .unwrap_err();
    assert_eq!(app_code(&e), Some(INVALID), "{e}");
    // A header that does not decode.
    let e = t
        .client
        .call_raw(
            t.addr,
            &t.server,
            Kind::CHUNK_WRITE,
            Bytes::from_static(&[0xff; 9]),
            blk.clone(),
            tokio::time::Instant::now() + std::time::Duration::from_secs(5),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, RpcError::BadRequest(_)), "{e}");
    // Roles: a gateway may read, but writes go through the extent primary
    // (never straight to a chunk), and it may not apply deltas or delete.
    let gw = node.client(Role::Gateway, "gw-1");
    gw.read(c, 7, 0, BLOCK as u32).await.unwrap();
    let e = gw
        .write(c, 7, 0, blk.clone(), Durability::Stable)
        .await
        .unwrap_err();
    assert!(matches!(e, RpcError::Forbidden(_)), "{e}");
    let e = gw
        .call::<ChunkApplyDelta>(
            &ChunkApplyDeltaRequest {
                chunk: c,
                epoch: 7,
                offset: 0,
                durability: Durability::Stable,
            },
            blk.clone(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, RpcError::Forbidden(_)), "{e}");
    let e = gw
        .call::<ChunkDelete>(&ChunkDeleteRequest { chunk: c, epoch: 7 }, Bytes::new())
        .await
        .unwrap_err();
    assert!(matches!(e, RpcError::Forbidden(_)), "{e}");

    // Still serving: write returns old ⊕ new, a delta XORs in, list and
    // fetch/put round-trip.
    let d = t
        .write(c, 7, 0, blk.clone(), Durability::Stable)
        .await
        .unwrap();
    assert_eq!(d, blk, "old was zeros, so old ⊕ new = new");
    let two = Bytes::from(vec![3u8; BLOCK as usize]);
    let d = t
        .write(c, 7, 0, two.clone(), Durability::Buffered)
        .await
        .unwrap();
    assert_eq!(d, Bytes::from(vec![1 ^ 3; BLOCK as usize]));
    t.call::<ChunkApplyDelta>(
        &ChunkApplyDeltaRequest {
            chunk: c,
            epoch: 7,
            offset: 0,
            durability: Durability::Stable,
        },
        d,
    )
    .await
    .unwrap();
    assert_eq!(t.read(c, 7, 0, BLOCK as u32).await.unwrap(), blk);
    t.punch(c, 7, 0, BLOCK).await.unwrap();
    assert_eq!(
        t.read(c, 7, 0, BLOCK as u32).await.unwrap(),
        Bytes::from(vec![0u8; BLOCK as usize])
    );
    t.write(c, 7, 8 * BLOCK, two.clone(), Durability::Stable)
        .await
        .unwrap();
    let (fetched, whole) = t
        .call::<ChunkFetch>(&ChunkFetchRequest { chunk: c, epoch: 7 }, Bytes::new())
        .await
        .unwrap();
    assert_eq!(fetched.descriptor.epoch, 7);
    assert_eq!(whole.len() as u64, MIB);
    let other = chunk(3, 5, 0);
    t.call::<ChunkPut>(
        &ChunkPutRequest {
            chunk: other,
            size_bytes: MIB,
            epoch: 7,
            durability: Durability::Stable,
        },
        whole.clone(),
    )
    .await
    .unwrap();
    assert_eq!(t.read(other, 7, 0, MIB as u32).await.unwrap(), whole);
    let (list, _) = t
        .call::<ChunkList>(
            &ChunkListRequest {
                after: None,
                limit: 1,
            },
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(list.chunks.len(), 1);
    assert!(list.more);
    let (rest, _) = t
        .call::<ChunkList>(
            &ChunkListRequest {
                after: Some(list.chunks[0].chunk),
                limit: 0,
            },
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(rest.chunks.len(), 1);
    assert!(!rest.more);
    t.call::<ChunkFlush>(&ChunkFlushRequest {}, Bytes::new())
        .await
        .unwrap();
    t.ping().await.unwrap();
    node.terminate();
    let log = std::fs::read_to_string(node.log_path()).unwrap();
    assert!(log.contains("stopped cleanly"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn bad_config_is_a_clear_error_and_help_has_an_example() {
    let node = Node::new(Settings::default());
    let text = std::fs::read_to_string(&node.config).unwrap();
    std::fs::write(&node.config, text.replace("reserve", "reserv")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weft-chunkserver"))
        .arg("--config")
        .arg(&node.config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field `reserv`"), "{err}");
    assert!(err.contains("chunkserver.toml"), "{err}");
    let help = Command::new(env!("CARGO_BIN_EXE_weft-chunkserver"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("Example:") && help.contains("--config"),
        "{help}"
    );
}
