use super::*;
use crate::metadata::command::{Command, Outcome};
use crate::placement::{EcProfile, Policy};

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn lun(name: &str, size: u64) -> Command {
    Command::CreateLun {
        name: name.into(),
        size_bytes: size,
        block_size: 512,
        policy: Policy::new(EcProfile { k: 2, m: 1 }),
        naa: [6; 16],
        serial: "s".into(),
        now_ms: 1,
    }
}

/// A catalogue with nodes n1..n4 and LUN "a" (2+1, 1 GiB).
fn setup() -> (Catalogue, u64) {
    let mut c = Catalogue::default();
    let mut i = 0;
    let mut ap = |c: &mut Catalogue, cmd: Command| {
        i += 1;
        c.apply(i, &cmd).0.unwrap()
    };
    for n in ["n1", "n2", "n3", "n4"] {
        ap(
            &mut c,
            Command::RegisterNode {
                node: id(n),
                now_ms: 0,
            },
        );
    }
    ap(&mut c, lun("a", 1 << 30));
    (c, 10)
}

fn nodes(v: &[&str]) -> Vec<NodeId> {
    v.iter().map(|s| id(s)).collect()
}

#[test]
fn luns_grow_never_shrink_and_mapped_ones_stay() {
    let (mut c, i) = setup();
    let (r, _) = c.apply(
        i,
        &Command::ResizeLun {
            name: "a".into(),
            size_bytes: 1 << 20,
        },
    );
    assert!(matches!(r, Err(CatalogueError::ShrinkRefused { .. })));
    let (r, _) = c.apply(
        i + 1,
        &Command::ResizeLun {
            name: "a".into(),
            size_bytes: 2 << 30,
        },
    );
    assert!(matches!(r, Ok(Outcome::Lun(l)) if l.size_bytes == 2 << 30));
    let iqn = "iqn.2026-11.org.weft:t".to_string();
    c.apply(
        i + 2,
        &Command::CreateTarget {
            iqn: iqn.clone(),
            now_ms: 0,
        },
    )
    .0
    .unwrap();
    c.apply(
        i + 3,
        &Command::MapLun {
            iqn: iqn.clone(),
            lun: 0,
            name: "a".into(),
        },
    )
    .0
    .unwrap();
    let (r, _) = c.apply(i + 4, &Command::DeleteLun { name: "a".into() });
    assert!(
        matches!(r, Err(CatalogueError::LunMapped { lun: 0, .. })),
        "{r:?}"
    );
    let lun_id = c.lun_by_name("a").unwrap().id;
    c.apply(
        i + 5,
        &Command::AllocateExtent {
            lun: lun_id,
            index: 0,
            nodes: nodes(&["n1", "n2", "n3"]),
        },
    )
    .0
    .unwrap();
    c.apply(i + 6, &Command::UnmapLun { iqn, lun: 0 })
        .0
        .unwrap();
    let (r, changed) = c.apply(i + 7, &Command::DeleteLun { name: "a".into() });
    match r {
        Ok(Outcome::Deleted { freed }) => assert_eq!(freed.len(), 1),
        other => panic!("{other:?}"),
    }
    assert!(changed.contains(&Change::Extent(lun_id, 0)));
    assert!(c.extents.is_empty() && c.luns.is_empty());
}

#[test]
fn extents_are_placed_once_and_checked() {
    let (mut c, i) = setup();
    let l = c.lun_by_name("a").unwrap().id;
    let first = c
        .apply(
            i,
            &Command::AllocateExtent {
                lun: l,
                index: 3,
                nodes: nodes(&["n1", "n2", "n3"]),
            },
        )
        .0
        .unwrap();
    // A racing allocation gets the first placement.
    let second = c
        .apply(
            i + 1,
            &Command::AllocateExtent {
                lun: l,
                index: 3,
                nodes: nodes(&["n2", "n3", "n4"]),
            },
        )
        .0
        .unwrap();
    assert_eq!(first, second);
    match first {
        Outcome::Extent(e) => {
            assert_eq!(e.primary, 2, "the first parity chunk's holder leads");
            assert_eq!(e.epoch, 1);
        }
        o => panic!("{o:?}"),
    }
    for bad in [
        nodes(&["n1", "n2"]),
        nodes(&["n1", "n1", "n2"]),
        nodes(&["n1", "n2", "zz"]),
    ] {
        let (r, ch) = c.apply(
            i + 2,
            &Command::AllocateExtent {
                lun: l,
                index: 4,
                nodes: bad,
            },
        );
        assert!(r.is_err() && ch.is_empty());
    }
    // 1 GiB at 2 × 16 MiB per extent = 32 extents.
    let (r, _) = c.apply(
        i + 3,
        &Command::AllocateExtent {
            lun: l,
            index: 32,
            nodes: nodes(&["n1", "n2", "n3"]),
        },
    );
    assert!(
        matches!(r, Err(CatalogueError::ExtentOutOfRange { extents: 32, .. })),
        "{r:?}"
    );
}

#[test]
fn a_chunk_is_declared_missing_only_after_its_lease() {
    let (mut c, i) = setup();
    let l = c.lun_by_name("a").unwrap().id;
    c.apply(
        i,
        &Command::AllocateExtent {
            lun: l,
            index: 0,
            nodes: nodes(&["n1", "n2", "n3"]),
        },
    )
    .0
    .unwrap();
    c.apply(
        i + 1,
        &Command::RenewLease {
            node: id("n2"),
            expires_ms: 5_000,
        },
    )
    .0
    .unwrap();
    // Never shortened.
    let (r, _) = c.apply(
        i + 2,
        &Command::RenewLease {
            node: id("n2"),
            expires_ms: 10,
        },
    );
    assert!(matches!(r, Ok(Outcome::Lease(ref g)) if g.expires_ms == 5_000));
    let missing = |now_ms, expected_epoch| Command::UpdateExtent {
        lun: l,
        index: 0,
        expected_epoch,
        nodes: nodes(&["n1", "n2", "n3"]),
        primary: 2,
        chunks: vec![
            ChunkState::Ok,
            ChunkState::Missing { since_epoch: 2 },
            ChunkState::Ok,
        ],
        now_ms,
    };
    let (r, _) = c.apply(i + 3, &missing(4_000, 1));
    assert!(
        matches!(
            r,
            Err(CatalogueError::LeaseStillValid { for_ms: 1_000, .. })
        ),
        "{r:?}"
    );
    let (r, _) = c.apply(i + 4, &missing(5_000, 1));
    assert!(
        matches!(r, Ok(Outcome::Extent(ref e)) if e.epoch == 2),
        "{r:?}"
    );
    // A stale epoch is refused.
    let (r, _) = c.apply(i + 5, &missing(6_000, 1));
    assert!(matches!(
        r,
        Err(CatalogueError::EpochMismatch {
            have: 2,
            expected: 1
        })
    ));
}

#[test]
fn a_chunk_moves_once_its_holder_lease_lapsed_and_only_to_a_node_in_service() {
    let (mut c, i) = setup();
    let l = c.lun_by_name("a").unwrap().id;
    c.apply(
        i,
        &Command::AllocateExtent {
            lun: l,
            index: 0,
            nodes: nodes(&["n1", "n2", "n3"]),
        },
    )
    .0
    .unwrap();
    let replace = |epoch, slot, node: Option<&str>| Command::ReplaceChunk {
        lun: l,
        index: 0,
        expected_epoch: epoch,
        slot,
        node: node.map(id),
        now_ms: 1_000,
    };
    c.apply(
        i + 1,
        &Command::RenewLease {
            node: id("n1"),
            expires_ms: 5_000,
        },
    )
    .0
    .unwrap();
    // In service, its holder's lease still valid: it stays where it is.
    let (r, ch) = c.apply(i + 1, &replace(1, 0, Some("n4")));
    assert!(
        matches!(r, Err(CatalogueError::LeaseStillValid { .. })),
        "{r:?}"
    );
    assert!(ch.is_empty());
    let (r, _) = c.apply(
        i + 2,
        &Command::UpdateExtent {
            lun: l,
            index: 0,
            expected_epoch: 1,
            nodes: nodes(&["n1", "n2", "n3"]),
            primary: 2,
            chunks: vec![
                ChunkState::Ok,
                ChunkState::Missing { since_epoch: 2 },
                ChunkState::Ok,
            ],
            now_ms: 1,
        },
    );
    assert!(r.is_ok(), "{r:?}");
    for bad in [
        replace(1, 1, Some("n4")), // stale epoch
        replace(2, 1, None),       // no node chosen
        replace(2, 1, Some("n3")), // holds a chunk already
        replace(2, 1, Some("zz")), // unknown
        replace(2, 7, Some("n4")), // beyond the width
        replace(2, 2, Some("n4")), // the primary's
        Command::ReplaceChunk {
            lun: l,
            index: 0,
            expected_epoch: 2,
            slot: 0,
            node: Some(id("n4")),
            now_ms: 6_000, // n1's lease lapsed, but two out of a 2+1 extent
        },
    ] {
        let (r, ch) = c.apply(i + 3, &bad);
        assert!(r.is_err() && ch.is_empty(), "{bad:?}: {r:?}");
    }
    let (r, ch) = c.apply(i + 4, &replace(2, 1, Some("n4")));
    let Ok(Outcome::Extent(e)) = r else {
        panic!("{r:?}")
    };
    assert_eq!(e.nodes, nodes(&["n1", "n4", "n3"]));
    assert_eq!(e.epoch, 3);
    assert_eq!(e.chunks[1], ChunkState::Missing { since_epoch: 0 });
    assert_eq!(ch, vec![Change::Extent(l, 0)]);
    // An extent with nothing out moves a chunk in service once its
    // holder's lease has lapsed.
    let (r, _) = c.apply(
        i + 5,
        &Command::AllocateExtent {
            lun: l,
            index: 1,
            nodes: nodes(&["n1", "n2", "n3"]),
        },
    );
    assert!(r.is_ok(), "{r:?}");
    let (r, _) = c.apply(
        i + 6,
        &Command::ReplaceChunk {
            lun: l,
            index: 1,
            expected_epoch: 1,
            slot: 0,
            node: Some(id("n4")),
            now_ms: 6_000,
        },
    );
    let Ok(Outcome::Extent(e)) = r else {
        panic!("{r:?}")
    };
    assert_eq!(e.nodes, nodes(&["n4", "n2", "n3"]));
    assert_eq!(e.chunks[0], ChunkState::Missing { since_epoch: 0 });
}

#[test]
fn a_parity_chunk_is_marked_missing_at_once_but_a_takeover_waits_for_the_lease() {
    let (mut c, i) = setup();
    let l = c.lun_by_name("a").unwrap().id;
    c.apply(
        i,
        &Command::AllocateExtent {
            lun: l,
            index: 0,
            nodes: nodes(&["n1", "n2", "n3"]),
        },
    )
    .0
    .unwrap();
    c.apply(
        i + 1,
        &Command::RenewLease {
            node: id("n3"),
            expires_ms: 5_000,
        },
    )
    .0
    .unwrap();
    let parity_out = |primary, epoch| Command::UpdateExtent {
        lun: l,
        index: 0,
        expected_epoch: epoch,
        nodes: nodes(&["n1", "n2", "n3"]),
        primary,
        chunks: vec![
            ChunkState::Ok,
            ChunkState::Ok,
            ChunkState::Missing { since_epoch: 2 },
        ],
        now_ms: 1_000,
    };
    // A takeover (primary 2 to 0) waits for the old primary's lease.
    let (r, _) = c.apply(i + 2, &parity_out(0, 1));
    assert!(
        matches!(r, Err(CatalogueError::LeaseStillValid { .. })),
        "{r:?}"
    );
    // The primary marking its own parity chunk missing does not.
    let (r, _) = c.apply(i + 3, &parity_out(2, 1));
    assert!(
        matches!(r, Ok(Outcome::Extent(ref e)) if e.epoch == 2),
        "{r:?}"
    );
}

#[test]
fn pr_state_is_compare_and_set() {
    let (mut c, i) = setup();
    let l = c.lun_by_name("a").unwrap().id;
    let set = |v, b: &[u8]| Command::SetPr {
        lun: l,
        expected_version: v,
        bytes: b.to_vec(),
    };
    assert!(c.apply(i, &set(0, b"x")).0.is_ok());
    assert!(matches!(
        c.apply(i + 1, &set(0, b"y")).0,
        Err(CatalogueError::PrVersion {
            have: 1,
            expected: 0
        })
    ));
    assert!(matches!(c.apply(i + 2, &set(1, b"y")).0, Ok(Outcome::Pr(p)) if p.version == 2));
}

#[test]
fn watchers_get_changes_or_a_resync() {
    let (mut c, i) = setup();
    let rev = c.revision;
    c.apply(
        i,
        &Command::CreateTarget {
            iqn: "iqn.2026-11.org.weft:w".into(),
            now_ms: 0,
        },
    )
    .0
    .unwrap();
    let ch = c.changes_since(rev).unwrap();
    assert_eq!(
        ch,
        vec![(i, Change::Target("iqn.2026-11.org.weft:w".into()))]
    );
    assert_eq!(c.changes_since(c.revision).unwrap(), vec![]);
    // A failed command changes nothing and bumps nothing.
    let before = c.revision;
    assert!(c.apply(i + 1, &lun("a", 1 << 30)).0.is_err());
    assert_eq!(c.revision, before);
    for k in 0..(CHANGES_KEPT as u64 + 10) {
        c.apply(
            i + 2 + k,
            &Command::RenewLease {
                node: id("n1"),
                expires_ms: k,
            },
        )
        .0
        .unwrap();
    }
    assert_eq!(c.changes_since(rev), None, "too old: resync");
}

#[test]
fn replicas_applying_the_same_log_agree_and_snapshots_round_trip() {
    let (mut a, i) = setup();
    let (mut b, _) = setup();
    let cmds = [
        lun("b", 4 << 30),
        lun("a", 1),
        Command::CreateTarget {
            iqn: "iqn.2026-11.org.weft:x".into(),
            now_ms: 3,
        },
        Command::MapLun {
            iqn: "iqn.2026-11.org.weft:x".into(),
            lun: 1,
            name: "b".into(),
        },
        Command::AclAdd {
            iqn: "iqn.2026-11.org.weft:x".into(),
            initiator: "iqn.1993-08.org.debian:01:abc".into(),
        },
        Command::SetNodeAdmin {
            node: id("n4"),
            admin: AdminState::Draining,
        },
        Command::DeleteLun { name: "a".into() },
    ];
    for (k, cmd) in cmds.iter().enumerate() {
        let ra = a.apply(i + k as u64, cmd);
        let rb = b.apply(i + k as u64, cmd);
        assert_eq!(ra, rb);
    }
    assert_eq!(a, b);
    let bytes = postcard::to_stdvec(&a).unwrap();
    let mut back: Catalogue = postcard::from_bytes(&bytes).unwrap();
    back.changes = a.changes.clone();
    assert_eq!(back, a);
}

#[test]
fn chap_secrets_are_checked() {
    let (mut c, i) = setup();
    let iqn = "iqn.2026-11.org.weft:c".to_string();
    c.apply(
        i,
        &Command::CreateTarget {
            iqn: iqn.clone(),
            now_ms: 0,
        },
    )
    .0
    .unwrap();
    let chap = |s: &str, m: Option<(&str, &str)>| Command::SetChap {
        iqn: iqn.clone(),
        chap: Some(ChapSecrets {
            user: "u".into(),
            secret: s.into(),
            mutual: m.map(|(a, b)| (a.into(), b.into())),
        }),
    };
    assert!(matches!(
        c.apply(i + 1, &chap("short", None)).0,
        Err(CatalogueError::Chap(_))
    ));
    assert!(matches!(
        c.apply(i + 2, &chap("twelve-bytes", Some(("t", "twelve-bytes"))))
            .0,
        Err(CatalogueError::Chap(_))
    ));
    assert!(c
        .apply(i + 3, &chap("twelve-bytes", Some(("t", "other-secret"))))
        .0
        .is_ok());
}
