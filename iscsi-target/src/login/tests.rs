//! Scripted logins: each case is a list of (request keys, flags) and the
//! expected answer, driven through the state machine without sockets.

use super::chap::{md5_response, ChapCredentials};
use super::text::{encode_hex, parse, parse_binary};
use super::*;

struct Dir {
    chap: ChapConfig,
    acl: Vec<String>,
}

impl Directory for Dir {
    fn target(&self, name: &str) -> Option<TargetAuth> {
        (name == "iqn.t").then(|| TargetAuth {
            name: name.into(),
            alias: None,
            chap: self.chap.clone(),
            allowed_initiators: self.acl.clone(),
        })
    }
    fn discovery_chap(&self) -> ChapConfig {
        ChapConfig::default()
    }
    fn send_targets(&self, _: &str) -> Vec<(String, Vec<String>)> {
        vec![]
    }
    fn session_exists(&self, _: &str, _: [u8; 6], tsih: u16) -> bool {
        tsih == 77
    }
}

struct FixedRng;
impl ChallengeSource for FixedRng {
    fn challenge(&mut self) -> (u8, [u8; 16]) {
        (7, [0x55; 16])
    }
}

fn login(dir: Dir) -> Login {
    Login::new(Arc::new(dir), 1, 42, TargetOffer::default())
}

fn req(csg: u8, nsg: u8, transit: bool, keys: &[(&str, &str)]) -> Pdu {
    let mut p = Pdu::new(Opcode::LoginRequest);
    p.bhs[0] |= 0x40;
    p.bhs[1] = (csg << 2) | nsg | if transit { 0x80 } else { 0 };
    p.bhs[8..14].copy_from_slice(&[0x80, 0, 0, 0, 0, 1]);
    p.set_itt(5);
    p.set_data(text::encode(keys));
    p
}

fn keys_of(p: &Pdu) -> Vec<(String, String)> {
    parse(&p.data).unwrap()
}

fn get_key(p: &Pdu, k: &str) -> Option<String> {
    keys_of(p)
        .into_iter()
        .find(|(kk, _)| kk == k)
        .map(|(_, v)| v)
}

const FIRST: &[(&str, &str)] = &[
    ("InitiatorName", "iqn.i"),
    ("TargetName", "iqn.t"),
    ("AuthMethod", "None"),
];

#[test]
fn plain_login_to_full_feature() {
    let mut l = login(Dir {
        chap: ChapConfig::default(),
        acl: vec![],
    });
    let step = l.handle(&req(0, 1, true, FIRST), &mut FixedRng);
    let LoginStep::Continue(r) = step else {
        panic!("{step:?}")
    };
    assert_eq!(r.bhs[1], 0x80 | 1);
    assert_eq!(get_key(&r, "AuthMethod").as_deref(), Some("None"));
    assert_eq!(get_key(&r, "TargetPortalGroupTag").as_deref(), Some("1"));
    let step = l.handle(
        &req(
            1,
            3,
            true,
            &[
                ("HeaderDigest", "CRC32C,None"),
                ("MaxRecvDataSegmentLength", "65536"),
            ],
        ),
        &mut FixedRng,
    );
    let LoginStep::Complete(r, outcome) = step else {
        panic!("{step:?}")
    };
    assert_eq!(r.bhs[1], 0x80 | (1 << 2) | 3);
    assert_eq!(u16::from_be_bytes([r.bhs[14], r.bhs[15]]), 42);
    assert!(get_key(&r, "MaxRecvDataSegmentLength").is_some());
    assert!(outcome.params.header_digest);
    assert_eq!(outcome.params.initiator_max_recv_data_segment_len, 65536);
    assert_eq!(outcome.target_name, "iqn.t");
}

#[test]
fn straight_to_operational_without_chap() {
    let mut l = login(Dir {
        chap: ChapConfig::default(),
        acl: vec![],
    });
    let step = l.handle(
        &req(
            1,
            3,
            true,
            &[("InitiatorName", "iqn.i"), ("TargetName", "iqn.t")],
        ),
        &mut FixedRng,
    );
    assert!(matches!(step, LoginStep::Complete(..)), "{step:?}");
}

fn chap_dir(mutual: bool) -> Dir {
    Dir {
        chap: ChapConfig {
            initiator: Some(ChapCredentials {
                user: "u".into(),
                secret: "secretsecret".into(),
            }),
            target: mutual.then(|| ChapCredentials {
                user: "t".into(),
                secret: "tsecrettsecret".into(),
            }),
        },
        acl: vec![],
    }
}

#[test]
fn chap_login_and_mutual() {
    for mutual in [false, true] {
        let mut l = login(chap_dir(mutual));
        let first = [
            ("InitiatorName", "iqn.i"),
            ("TargetName", "iqn.t"),
            ("AuthMethod", "CHAP,None"),
        ];
        let LoginStep::Continue(r) = l.handle(&req(0, 1, false, &first), &mut FixedRng) else {
            panic!()
        };
        assert_eq!(get_key(&r, "AuthMethod").as_deref(), Some("CHAP"));
        let LoginStep::Continue(r) = l.handle(&req(0, 1, false, &[("CHAP_A", "5")]), &mut FixedRng)
        else {
            panic!()
        };
        let id: u8 = get_key(&r, "CHAP_I").unwrap().parse().unwrap();
        let c = parse_binary(&get_key(&r, "CHAP_C").unwrap()).unwrap();
        let resp = encode_hex(&md5_response(id, b"secretsecret", &c));
        let ichal = encode_hex(&[1, 2, 3, 4]);
        let mut keys = vec![("CHAP_N", "u"), ("CHAP_R", resp.as_str())];
        if mutual {
            keys.extend([("CHAP_I", "9"), ("CHAP_C", ichal.as_str())]);
        }
        let step = l.handle(&req(0, 1, true, &keys), &mut FixedRng);
        let LoginStep::Continue(r) = step else {
            panic!("{step:?}")
        };
        assert_eq!(r.bhs[1] & 0x80, 0x80, "transits after CHAP");
        if mutual {
            let want = encode_hex(&md5_response(9, b"tsecrettsecret", &[1, 2, 3, 4]));
            assert_eq!(get_key(&r, "CHAP_R"), Some(want));
        }
        let step = l.handle(&req(1, 3, true, &[]), &mut FixedRng);
        assert!(matches!(step, LoginStep::Complete(..)));
    }
}

fn expect_fail(l: &mut Login, p: Pdu, want: LoginStatus) {
    match l.handle(&p, &mut FixedRng) {
        LoginStep::Fail(r, s) => {
            assert_eq!(s, want);
            assert_eq!(u16::from_be_bytes([r.bhs[36], r.bhs[37]]), want as u16);
        }
        other => panic!("expected {want:?}, got {other:?}"),
    }
}

#[test]
fn failures() {
    let plain = || {
        login(Dir {
            chap: ChapConfig::default(),
            acl: vec![],
        })
    };
    expect_fail(
        &mut plain(),
        req(0, 1, true, &[("TargetName", "iqn.t")]),
        LoginStatus::MissingParameter,
    );
    expect_fail(
        &mut plain(),
        req(
            0,
            1,
            true,
            &[("InitiatorName", "iqn.i"), ("TargetName", "iqn.nope")],
        ),
        LoginStatus::NotFound,
    );
    expect_fail(
        &mut login(Dir {
            chap: ChapConfig::default(),
            acl: vec!["iqn.other".into()],
        }),
        req(0, 1, true, FIRST),
        LoginStatus::AuthorizationFailure,
    );
    // Skipping CHAP when it is required.
    expect_fail(
        &mut login(chap_dir(false)),
        req(
            1,
            3,
            true,
            &[("InitiatorName", "iqn.i"), ("TargetName", "iqn.t")],
        ),
        LoginStatus::AuthenticationFailure,
    );
    expect_fail(
        &mut login(chap_dir(false)),
        req(0, 1, true, FIRST),
        LoginStatus::AuthenticationFailure,
    );
    // Wrong CHAP response.
    let mut l = login(chap_dir(false));
    let first = [
        ("InitiatorName", "iqn.i"),
        ("TargetName", "iqn.t"),
        ("AuthMethod", "CHAP"),
    ];
    l.handle(&req(0, 1, false, &first), &mut FixedRng);
    l.handle(&req(0, 1, false, &[("CHAP_A", "5")]), &mut FixedRng);
    expect_fail(
        &mut l,
        req(
            0,
            1,
            true,
            &[
                ("CHAP_N", "u"),
                ("CHAP_R", "0x00112233445566778899aabbccddeeff"),
            ],
        ),
        LoginStatus::AuthenticationFailure,
    );
    // T and C together; illegal stages; a version we do not speak.
    let mut p = req(0, 1, true, FIRST);
    p.bhs[1] |= 0x40;
    expect_fail(&mut plain(), p, LoginStatus::InitiatorError);
    expect_fail(
        &mut plain(),
        req(1, 0, true, FIRST),
        LoginStatus::InitiatorError,
    );
    let mut p = req(0, 1, true, FIRST);
    p.bhs[3] = 1;
    expect_fail(&mut plain(), p, LoginStatus::UnsupportedVersion);
    // Not a login PDU.
    expect_fail(
        &mut plain(),
        Pdu::new(Opcode::ScsiCommand),
        LoginStatus::InvalidDuringLogin,
    );
    // Garbage text.
    let mut p = req(0, 1, true, &[]);
    p.set_data(bytes::Bytes::from_static(b"InitiatorName\0"));
    expect_fail(&mut plain(), p, LoginStatus::InitiatorError);
}

#[test]
fn non_zero_tsih_must_name_a_live_session() {
    let plain = || {
        login(Dir {
            chap: ChapConfig::default(),
            acl: vec![],
        })
    };
    let mut p = req(0, 1, true, FIRST);
    p.bhs[14..16].copy_from_slice(&5u16.to_be_bytes());
    expect_fail(&mut plain(), p, LoginStatus::SessionDoesNotExist);
    let mut l = plain();
    let mut p = req(0, 3, true, FIRST);
    p.bhs[14..16].copy_from_slice(&77u16.to_be_bytes());
    let LoginStep::Complete(r, outcome) = l.handle(&p, &mut FixedRng) else {
        panic!()
    };
    assert_eq!(outcome.tsih, 77, "the session keeps its TSIH");
    assert_eq!(u16::from_be_bytes([r.bhs[14], r.bhs[15]]), 77);
}

#[test]
fn continued_text_is_assembled() {
    let mut l = login(Dir {
        chap: ChapConfig::default(),
        acl: vec![],
    });
    let whole = text::encode(FIRST);
    let (a, b) = whole.split_at(10);
    let mut p1 = req(0, 1, false, &[]);
    p1.bhs[1] |= 0x40;
    p1.set_data(bytes::Bytes::copy_from_slice(a));
    let LoginStep::Continue(r) = l.handle(&p1, &mut FixedRng) else {
        panic!()
    };
    assert!(r.data.is_empty());
    let mut p2 = req(0, 1, true, &[]);
    p2.set_data(bytes::Bytes::copy_from_slice(b));
    let LoginStep::Continue(r) = l.handle(&p2, &mut FixedRng) else {
        panic!()
    };
    assert_eq!(get_key(&r, "AuthMethod").as_deref(), Some("None"));
}
