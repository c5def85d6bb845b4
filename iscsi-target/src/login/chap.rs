//! CHAP with MD5 (RFC 1994 as used by RFC 7143 §12.1.3), target side, one-way
//! and mutual.

use super::text::{encode_hex, parse_binary, parse_number};
use md5::{Digest, Md5};

/// A CHAP name and secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChapCredentials {
    pub user: String,
    pub secret: String,
}

/// CHAP settings of a target or of discovery.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChapConfig {
    /// What initiators must prove; `None` means no CHAP is required.
    pub initiator: Option<ChapCredentials>,
    /// What the target answers with when the initiator asks for mutual CHAP.
    pub target: Option<ChapCredentials>,
}

/// CHAP_A value for MD5.
pub const CHAP_ALGORITHM_MD5: u64 = 5;
/// Challenge length we send.
pub const CHALLENGE_BYTES: usize = 16;
/// Shortest initiator challenge accepted for mutual CHAP.
pub const CHALLENGE_BYTES_MIN: usize = 1;

pub fn md5_response(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().into()
}

/// Target side of one CHAP exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChapState {
    AwaitAlgorithm,
    AwaitResponse { id: u8, challenge: Vec<u8> },
    Done,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChapError {
    #[error("initiator offers no CHAP algorithm we support (MD5)")]
    NoAlgorithm,
    #[error("CHAP_N or CHAP_R missing")]
    MissingResponse,
    #[error("CHAP name or response is wrong")]
    BadResponse,
    #[error("malformed CHAP value")]
    Malformed,
    #[error("mutual CHAP requested but the target has no credentials for it")]
    NoTargetSecret,
    #[error("initiator's challenge is our own (reflection)")]
    Reflection,
    #[error("CHAP keys out of order")]
    OutOfOrder,
}

fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

impl ChapState {
    /// Handles the CHAP keys of one login request; returns the keys to send.
    /// `challenge` supplies fresh random bytes (the environment's RNG).
    pub fn step(
        &mut self,
        cfg: &ChapConfig,
        pairs: &[(String, String)],
        id: u8,
        challenge: [u8; CHALLENGE_BYTES],
    ) -> Result<Vec<(String, String)>, ChapError> {
        match self {
            ChapState::AwaitAlgorithm => {
                let Some(algs) = get(pairs, "CHAP_A") else {
                    return Ok(Vec::new());
                };
                if !algs
                    .split(',')
                    .any(|a| parse_number(a) == Some(CHAP_ALGORITHM_MD5))
                {
                    return Err(ChapError::NoAlgorithm);
                }
                *self = ChapState::AwaitResponse {
                    id,
                    challenge: challenge.to_vec(),
                };
                Ok(vec![
                    ("CHAP_A".into(), CHAP_ALGORITHM_MD5.to_string()),
                    ("CHAP_I".into(), id.to_string()),
                    ("CHAP_C".into(), encode_hex(&challenge)),
                ])
            }
            ChapState::AwaitResponse { id, challenge } => {
                let (Some(name), Some(resp)) = (get(pairs, "CHAP_N"), get(pairs, "CHAP_R")) else {
                    return Err(ChapError::MissingResponse);
                };
                let resp = parse_binary(resp).ok_or(ChapError::Malformed)?;
                let creds = cfg.initiator.as_ref().ok_or(ChapError::BadResponse)?;
                let want = md5_response(*id, creds.secret.as_bytes(), challenge);
                if name != creds.user || resp != want {
                    return Err(ChapError::BadResponse);
                }
                let mut out = Vec::new();
                match (get(pairs, "CHAP_I"), get(pairs, "CHAP_C")) {
                    (None, None) => {}
                    (Some(i), Some(c)) => {
                        let i = parse_number(i)
                            .and_then(|i| u8::try_from(i).ok())
                            .ok_or(ChapError::Malformed)?;
                        let c = parse_binary(c).ok_or(ChapError::Malformed)?;
                        if c.len() < CHALLENGE_BYTES_MIN {
                            return Err(ChapError::Malformed);
                        }
                        if c == *challenge {
                            return Err(ChapError::Reflection);
                        }
                        let t = cfg.target.as_ref().ok_or(ChapError::NoTargetSecret)?;
                        out.push(("CHAP_N".into(), t.user.clone()));
                        out.push((
                            "CHAP_R".into(),
                            encode_hex(&md5_response(i, t.secret.as_bytes(), &c)),
                        ));
                    }
                    _ => return Err(ChapError::Malformed),
                }
                *self = ChapState::Done;
                Ok(out)
            }
            ChapState::Done => {
                if pairs.iter().any(|(k, _)| k.starts_with("CHAP_")) {
                    return Err(ChapError::OutOfOrder);
                }
                Ok(Vec::new())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn cfg(mutual: bool) -> ChapConfig {
        ChapConfig {
            initiator: Some(ChapCredentials {
                user: "alice".into(),
                secret: "alicesecret1".into(),
            }),
            target: mutual.then(|| ChapCredentials {
                user: "tgt".into(),
                secret: "targetsecret".into(),
            }),
        }
    }

    #[test]
    fn rfc1994_md5_vector() {
        // md5(0x01 || "secret" || 16 zero bytes), computed independently.
        let r = md5_response(1, b"secret", &[0u8; 16]);
        let mut h = Md5::new();
        h.update([1u8]);
        h.update(b"secret");
        h.update([0u8; 16]);
        assert_eq!(r.to_vec(), h.finalize().to_vec());
    }

    #[test]
    fn one_way_and_mutual() {
        for mutual in [false, true] {
            let c = cfg(mutual);
            let mut st = ChapState::AwaitAlgorithm;
            let out = st.step(&c, &kv(&[("CHAP_A", "7,5")]), 9, [3; 16]).unwrap();
            assert_eq!(out[0], ("CHAP_A".into(), "5".into()));
            let resp = encode_hex(&md5_response(9, b"alicesecret1", &[3; 16]));
            let mut req = vec![("CHAP_N", "alice"), ("CHAP_R", resp.as_str())];
            let ichal = encode_hex(&[7; 16]);
            if mutual {
                req.push(("CHAP_I", "4"));
                req.push(("CHAP_C", ichal.as_str()));
            }
            let out = st.step(&c, &kv(&req), 0, [0; 16]).unwrap();
            assert_eq!(st, ChapState::Done);
            if mutual {
                let want = encode_hex(&md5_response(4, b"targetsecret", &[7; 16]));
                assert_eq!(out, kv(&[("CHAP_N", "tgt"), ("CHAP_R", want.as_str())]));
            } else {
                assert!(out.is_empty());
            }
        }
    }

    #[test]
    fn failures() {
        let c = cfg(false);
        let mut st = ChapState::AwaitAlgorithm;
        assert_eq!(
            st.step(&c, &kv(&[("CHAP_A", "7")]), 1, [0; 16]),
            Err(ChapError::NoAlgorithm)
        );
        let mut st = ChapState::AwaitAlgorithm;
        st.step(&c, &kv(&[("CHAP_A", "5")]), 1, [5; 16]).unwrap();
        let wrong = encode_hex(&md5_response(1, b"wrong", &[5; 16]));
        assert_eq!(
            st.clone().step(
                &c,
                &kv(&[("CHAP_N", "alice"), ("CHAP_R", &wrong)]),
                0,
                [0; 16]
            ),
            Err(ChapError::BadResponse)
        );
        let right = encode_hex(&md5_response(1, b"alicesecret1", &[5; 16]));
        assert_eq!(
            st.clone().step(
                &c,
                &kv(&[("CHAP_N", "bob"), ("CHAP_R", &right)]),
                0,
                [0; 16]
            ),
            Err(ChapError::BadResponse)
        );
        // Mutual without target credentials, and reflection of our challenge.
        let ours = encode_hex(&[5; 16]);
        let req = kv(&[
            ("CHAP_N", "alice"),
            ("CHAP_R", &right),
            ("CHAP_I", "1"),
            ("CHAP_C", &ours),
        ]);
        assert_eq!(
            st.clone().step(&c, &req, 0, [0; 16]),
            Err(ChapError::Reflection)
        );
        let other = encode_hex(&[6; 16]);
        let req = kv(&[
            ("CHAP_N", "alice"),
            ("CHAP_R", &right),
            ("CHAP_I", "1"),
            ("CHAP_C", &other),
        ]);
        assert_eq!(
            st.step(&c, &req, 0, [0; 16]),
            Err(ChapError::NoTargetSecret)
        );
    }
}
