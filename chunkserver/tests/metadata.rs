//! The metadata Raft group as real processes on loopback: leader killed
//! during a stream of changes (3 and 5 voters), a minority partition (real
//! cut TCP links through proxies), all voters restarted, and bad requests.

mod meta_cluster;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fabric::metadata::client::MetaClientError;
use fabric::metadata::rpc::MetaError;
use fabric::metadata::{CatalogueError, Command, Outcome};
use fabric::placement::{EcProfile, Policy};
use meta_cluster::Cluster;

/// A new leader must serve within this after the old one is killed:
/// election timeout 1–2 s, plus the client noticing and retrying, with
/// room for a loaded 2-core CI machine.
const FAILOVER_BOUND: Duration = Duration::from_secs(10);

fn create(name: &str) -> Command {
    Command::CreateLun {
        name: name.to_string(),
        size_bytes: 1 << 30,
        block_size: 512,
        policy: Policy::new(EcProfile { k: 2, m: 1 }),
        naa: [0; 16],
        serial: String::new(),
        now_ms: 0,
    }
}

/// Streams LUN creations, kills the leader after `kill_after` of them,
/// and checks that every acknowledged creation is there exactly once.
async fn leader_killed_during_creations(voters: usize) {
    let mut c = Cluster::new(voters, false);
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(30)).await;
    c.wait_registered(voters).await;
    let admin = c.admin(None, Duration::from_secs(20));
    let total = 40;
    let kill_after = 15;
    let mut acked = Vec::new();
    let mut failed = Vec::new();
    let mut killed_at = None;
    let mut failover = None;
    for i in 0..total {
        if i == kill_after {
            c.nodes[leader].kill();
            killed_at = Some(Instant::now());
        }
        let name = format!("lun-{i:03}");
        match admin.admin(create(&name)).await {
            Ok(r) => {
                assert!(matches!(r.outcome, Outcome::Lun(_)), "{:?}", r.outcome);
                if let (Some(k), None) = (killed_at, failover) {
                    failover = Some(k.elapsed());
                }
                acked.push(name);
            }
            // Applied by the old leader, answer lost, retried: fine, it is
            // there once (checked below).
            Err(MetaClientError::Meta(MetaError::Catalogue(CatalogueError::LunExists(_)))) => {
                acked.push(name)
            }
            Err(e) => failed.push((name, e.to_string())),
        }
    }
    let failover = failover.expect("no creation succeeded after the kill");
    eprintln!("{voters} voters: new leader served {failover:?} after the kill; failed: {failed:?}");
    assert!(
        failover < FAILOVER_BOUND,
        "failover took {failover:?}\n{}",
        c.logs()
    );
    assert!(failed.len() <= 1, "creations failed: {failed:?}");

    let s = c.summary(&admin).await;
    let mut by_name: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for l in &s.luns {
        by_name.entry(l.name.as_str()).or_default().push(l.id);
    }
    for name in &acked {
        let ids = by_name.get(name.as_str()).cloned().unwrap_or_default();
        assert_eq!(ids.len(), 1, "{name}: ids {ids:?} (lost or applied twice)");
    }
    // Ids are handed out in apply order: no gap, no repeat means no
    // creation was applied twice or half-applied.
    let mut ids: Vec<u64> = s.luns.iter().map(|l| l.id).collect();
    ids.sort();
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>());

    // The killed node comes back and catches up with the same catalogue.
    c.nodes[leader].start();
    let end = Instant::now() + Duration::from_secs(30);
    let newest = c
        .cluster_info(c.wait_leader(Duration::from_secs(10)).await)
        .await;
    let target = newest.map_or(0, |ci| ci.last_applied);
    loop {
        if let Some(ci) = c.cluster_info(leader).await {
            if ci.last_applied >= target {
                break;
            }
        }
        assert!(
            Instant::now() < end,
            "restarted node did not catch up\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_during_creations_3_voters() {
    leader_killed_during_creations(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_during_creations_5_voters() {
    leader_killed_during_creations(5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minority_partition_cannot_change_anything() {
    let mut c = Cluster::new(3, true);
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(30)).await;
    c.wait_registered(3).await;
    let all = c.admin(None, Duration::from_secs(20));
    all.admin(create("before")).await.unwrap();

    // Cut the leader off from both followers.
    c.proxies.as_ref().unwrap().isolate(leader, 3);
    let alone = c.admin(Some(&[leader]), Duration::from_secs(6));
    let r = alone.admin(create("from-the-minority")).await;
    assert!(r.is_err(), "the isolated leader accepted a change: {r:?}");

    // The majority elects a new leader and goes on.
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let majority = c.admin(Some(&others), Duration::from_secs(20));
    majority.admin(create("from-the-majority")).await.unwrap();

    // Heal; the old leader's unacknowledged change never appears.
    c.proxies.as_ref().unwrap().heal();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = c.summary(&all).await;
    let names: Vec<&str> = s.luns.iter().map(|l| l.name.as_str()).collect();
    assert!(
        names.contains(&"before") && names.contains(&"from-the-majority"),
        "{names:?}"
    );
    assert!(!names.contains(&"from-the-minority"), "{names:?}");
    // And the old leader, now a follower, agrees.
    let back = c.admin(Some(&[leader]), Duration::from_secs(20));
    let s2 = c.summary(&back).await;
    assert_eq!(s2.luns, s.luns);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_all_voters_keeps_the_catalogue() {
    let mut c = Cluster::new(3, false);
    c.start_all();
    c.wait_leader(Duration::from_secs(30)).await;
    c.wait_registered(3).await;
    let admin = c.admin(None, Duration::from_secs(20));
    for i in 0..5 {
        admin.admin(create(&format!("keep-{i}"))).await.unwrap();
    }
    let iqn = "iqn.2026-11.org.weft:keep".to_string();
    admin
        .admin(Command::CreateTarget {
            iqn: iqn.clone(),
            now_ms: 0,
        })
        .await
        .unwrap();
    admin
        .admin(Command::MapLun {
            iqn: iqn.clone(),
            lun: 0,
            name: "keep-0".into(),
        })
        .await
        .unwrap();
    let before = c.summary(&admin).await;
    // Half of them killed, half stopped cleanly.
    for (i, n) in c.nodes.iter_mut().enumerate() {
        if i % 2 == 0 {
            n.kill();
        } else {
            n.terminate();
        }
    }
    c.start_all();
    c.wait_leader(Duration::from_secs(30)).await;
    let after = c.summary(&admin).await;
    assert_eq!(after.luns, before.luns);
    assert_eq!(after.targets, before.targets);
    // And it still takes changes, with the next id.
    match admin.admin(create("after-restart")).await.unwrap().outcome {
        Outcome::Lun(l) => assert_eq!(l.id, 6),
        o => panic!("{o:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors() {
    let mut c = Cluster::new(3, false);
    c.start_all();
    c.wait_leader(Duration::from_secs(30)).await;
    let admin = c.admin(None, Duration::from_secs(20));
    c.wait_registered(3).await;
    let err = |r: Result<_, MetaClientError>| match r {
        Err(MetaClientError::Meta(MetaError::Catalogue(e))) => e,
        other => panic!("expected a catalogue error, got {other:?}"),
    };
    admin.admin(create("dup")).await.unwrap();
    assert!(matches!(
        err(admin.admin(create("dup")).await),
        CatalogueError::LunExists(_)
    ));

    let mut wide = create("wide");
    if let Command::CreateLun { policy, .. } = &mut wide {
        policy.ec = EcProfile { k: 3, m: 1 };
    }
    let e = err(admin.admin(wide).await);
    assert!(
        matches!(
            e,
            CatalogueError::TooWide {
                need: 4,
                have: 3,
                ..
            }
        ),
        "{e}"
    );

    // 3 × 4 GiB raw at 2+1 holds 8 GiB at most.
    let mut huge = create("huge");
    if let Command::CreateLun { size_bytes, .. } = &mut huge {
        *size_bytes = 64 << 30;
    }
    let e = err(admin.admin(huge).await);
    assert!(matches!(e, CatalogueError::LunTooLarge { .. }), "{e}");
    eprintln!("{e}");

    let e = err(admin
        .admin(Command::CreateTarget {
            iqn: "not-an-iqn".into(),
            now_ms: 0,
        })
        .await);
    assert!(matches!(e, CatalogueError::Iqn { .. }), "{e}");
    let mut odd = create("odd");
    if let Command::CreateLun { size_bytes, .. } = &mut odd {
        *size_bytes = 1000;
    }
    assert!(matches!(
        err(admin.admin(odd).await),
        CatalogueError::LunSize { .. }
    ));
    assert!(matches!(
        err(admin
            .admin(Command::DeleteLun {
                name: "nope".into()
            })
            .await),
        CatalogueError::NoSuchLun(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voters_can_be_added_and_removed() {
    let mut c = Cluster::with_voters(4, false, 3);
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(30)).await;
    let admin = c.admin(None, Duration::from_secs(20));
    c.wait_registered(3).await;
    admin.admin(create("one")).await.unwrap();
    let voters = |ci: fabric::metadata::rpc::ClusterInfo| {
        let mut v: Vec<String> = ci.voters.iter().map(|n| n.to_string()).collect();
        v.sort();
        v
    };
    let n4 = meta_cluster::id("m-4");
    admin.add_voter(n4, c.nodes[3].addr).await.unwrap();
    let ci = c.cluster_info(leader).await.unwrap();
    assert_eq!(voters(ci), ["m-1", "m-2", "m-3", "m-4"]);
    // Remove the first voter; then the group is m-2, m-3, m-4 and loses
    // m-2 too: only with m-4 a real voter can m-3 and m-4 still commit.
    admin.remove_voter(meta_cluster::id("m-1")).await.unwrap();
    let l = c.wait_leader(Duration::from_secs(20)).await;
    let ci = c.cluster_info(l).await.unwrap();
    assert_eq!(voters(ci), ["m-2", "m-3", "m-4"]);
    c.nodes[0].kill();
    c.nodes[1].kill();
    let rest = c.admin(Some(&[2, 3]), Duration::from_secs(20));
    rest.admin(create("two")).await.unwrap();
    let s = c.summary(&rest).await;
    let names: Vec<&str> = s.luns.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["one", "two"]);
    let e = rest.remove_voter(meta_cluster::id("m-9")).await;
    assert!(e.is_err(), "{e:?}");
}
