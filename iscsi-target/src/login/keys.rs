//! Operational key negotiation (RFC 7143 §6.2, §13): one table names every
//! key the target knows, how its result is computed, and where it applies.

use super::text::parse_number;
use crate::limits;

/// How a key's result follows from the two offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// Each side states its own value; no answer is owed.
    Declarative,
    /// The first value of the initiator's list that we support.
    List,
    /// Boolean AND of both values.
    And,
    /// Boolean OR of both values.
    Or,
    /// Numeric minimum within `lo..=hi`.
    Min(u64, u64),
    /// Numeric maximum within `lo..=hi`.
    Max(u64, u64),
    /// A number each side declares within `lo..=hi`.
    DeclaredNumber(u64, u64),
}

/// Where a key may appear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Only in login (leading connection or connection-only keys).
    LoginOnly,
    /// In login, normal sessions only: "Irrelevant" in a discovery session.
    LoginNormalOnly,
    /// In login and in the full feature phase (Text Request).
    Anytime,
}

struct KeyDef {
    name: &'static str,
    rule: Rule,
    scope: Scope,
}

const fn key(name: &'static str, rule: Rule, scope: Scope) -> KeyDef {
    KeyDef { name, rule, scope }
}

/// 2^24 - 1, the upper bound of the length keys.
const LEN_MAX: u64 = 16_777_215;

const KEYS: &[KeyDef] = &[
    key("HeaderDigest", Rule::List, Scope::LoginOnly),
    key("DataDigest", Rule::List, Scope::LoginOnly),
    key(
        "MaxConnections",
        Rule::Min(1, 65535),
        Scope::LoginNormalOnly,
    ),
    key("InitiatorName", Rule::Declarative, Scope::LoginOnly),
    key("TargetName", Rule::Declarative, Scope::LoginOnly),
    key("InitiatorAlias", Rule::Declarative, Scope::LoginOnly),
    key("SessionType", Rule::Declarative, Scope::LoginOnly),
    key("InitialR2T", Rule::Or, Scope::LoginNormalOnly),
    key("ImmediateData", Rule::And, Scope::LoginNormalOnly),
    key(
        "MaxRecvDataSegmentLength",
        Rule::DeclaredNumber(512, LEN_MAX),
        Scope::Anytime,
    ),
    key(
        "MaxBurstLength",
        Rule::Min(512, LEN_MAX),
        Scope::LoginNormalOnly,
    ),
    key(
        "FirstBurstLength",
        Rule::Min(512, LEN_MAX),
        Scope::LoginNormalOnly,
    ),
    key("DefaultTime2Wait", Rule::Max(0, 3600), Scope::LoginOnly),
    key("DefaultTime2Retain", Rule::Min(0, 3600), Scope::LoginOnly),
    key(
        "MaxOutstandingR2T",
        Rule::Min(1, 65535),
        Scope::LoginNormalOnly,
    ),
    key("DataPDUInOrder", Rule::Or, Scope::LoginNormalOnly),
    key("DataSequenceInOrder", Rule::Or, Scope::LoginNormalOnly),
    key("ErrorRecoveryLevel", Rule::Min(0, 2), Scope::LoginOnly),
    key("IFMarker", Rule::And, Scope::LoginOnly),
    key("OFMarker", Rule::And, Scope::LoginOnly),
    key("OFMarkInt", Rule::Declarative, Scope::LoginOnly),
    key("IFMarkInt", Rule::Declarative, Scope::LoginOnly),
    key("iSCSIProtocolLevel", Rule::Min(0, 31), Scope::LoginOnly),
    key("TaskReporting", Rule::List, Scope::LoginNormalOnly),
];

/// Parameters in force after negotiation. Defaults are RFC 7143's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionParams {
    pub header_digest: bool,
    pub data_digest: bool,
    /// The initiator's MaxRecvDataSegmentLength: the largest data segment we send.
    pub initiator_max_recv_data_segment_len: u32,
    /// Ours: the largest data segment we accept.
    pub target_max_recv_data_segment_len: u32,
    pub max_burst_len: u32,
    pub first_burst_len: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub max_outstanding_r2t: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
    pub error_recovery_level: u32,
    pub max_connections: u32,
}

impl Default for SessionParams {
    fn default() -> Self {
        SessionParams {
            header_digest: false,
            data_digest: false,
            initiator_max_recv_data_segment_len: 8192,
            target_max_recv_data_segment_len: 8192,
            max_burst_len: 262_144,
            first_burst_len: 65_536,
            initial_r2t: true,
            immediate_data: true,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            default_time2wait: 2,
            default_time2retain: 20,
            error_recovery_level: 0,
            max_connections: 1,
        }
    }
}

/// What the target offers where the rules let it choose.
#[derive(Debug, Clone)]
pub struct TargetOffer {
    /// Digests we accept, in preference order ("CRC32C", "None").
    pub digests: Vec<&'static str>,
    pub max_recv_data_segment_len: u32,
    pub max_burst_len: u32,
    pub first_burst_len: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub max_outstanding_r2t: u32,
}

impl Default for TargetOffer {
    fn default() -> Self {
        TargetOffer {
            digests: vec!["CRC32C", "None"],
            max_recv_data_segment_len: limits::MAX_RECV_DATA_SEGMENT_BYTES,
            max_burst_len: limits::MAX_BURST_BYTES,
            first_burst_len: limits::FIRST_BURST_BYTES,
            initial_r2t: false,
            immediate_data: true,
            max_outstanding_r2t: limits::MAX_OUTSTANDING_R2T,
        }
    }
}

/// A negotiation that cannot go on: the login fails with an initiator error.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NegotiationError {
    #[error("key {0} offered twice in one negotiation")]
    Duplicate(String),
}

/// Where the negotiation happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    LoginNormal,
    LoginDiscovery,
    FullFeature,
}

/// Negotiation state of one session: what has been agreed so far.
#[derive(Debug, Clone)]
pub struct Negotiator {
    pub params: SessionParams,
    offer: TargetOffer,
    /// Keys already negotiated: offering one again is a protocol error.
    seen: Vec<String>,
    declared_mrdsl: bool,
}

impl Negotiator {
    pub fn new(offer: TargetOffer) -> Self {
        let params = SessionParams {
            target_max_recv_data_segment_len: offer.max_recv_data_segment_len,
            ..SessionParams::default()
        };
        Negotiator {
            params,
            offer,
            seen: Vec::new(),
            declared_mrdsl: false,
        }
    }

    /// Whether `name` is a key of this table (security and declarative login
    /// keys such as AuthMethod are handled by the login state machine).
    pub fn knows(name: &str) -> bool {
        KEYS.iter().any(|k| k.name == name)
    }

    /// Answers the operational keys of one request. Keys this table does not
    /// know get `NotUnderstood`.
    pub fn respond(
        &mut self,
        pairs: &[(String, String)],
        phase: Phase,
    ) -> Result<Vec<(String, String)>, NegotiationError> {
        let mut out = Vec::new();
        for (name, value) in pairs {
            let Some(def) = KEYS.iter().find(|k| k.name == name) else {
                out.push((name.clone(), "NotUnderstood".to_string()));
                continue;
            };
            // An answer to a key of ours: nothing to say back.
            if matches!(value.as_str(), "NotUnderstood" | "Irrelevant" | "Reject") {
                continue;
            }
            let allowed = match (def.scope, phase) {
                (Scope::Anytime, _) => true,
                (Scope::LoginOnly, Phase::FullFeature) => false,
                (Scope::LoginOnly, _) => true,
                (Scope::LoginNormalOnly, Phase::LoginNormal) => true,
                (Scope::LoginNormalOnly, _) => false,
            };
            if !allowed {
                if phase == Phase::FullFeature {
                    out.push((name.clone(), "Reject".to_string()));
                } else {
                    out.push((name.clone(), "Irrelevant".to_string()));
                }
                continue;
            }
            if def.rule != Rule::Declarative || name == "SessionType" {
                if self.seen.iter().any(|s| s == name) && phase != Phase::FullFeature {
                    return Err(NegotiationError::Duplicate(name.clone()));
                }
                self.seen.push(name.clone());
            }
            if let Some(answer) = self.negotiate(def, value)? {
                out.push((name.clone(), answer));
            }
        }
        Ok(out)
    }

    /// Our declarations that must reach the initiator once per login.
    pub fn declarations(&mut self, phase: Phase) -> Vec<(String, String)> {
        if self.declared_mrdsl || phase == Phase::FullFeature {
            return Vec::new();
        }
        self.declared_mrdsl = true;
        vec![(
            "MaxRecvDataSegmentLength".to_string(),
            self.offer.max_recv_data_segment_len.to_string(),
        )]
    }

    /// FirstBurstLength may not exceed MaxBurstLength (RFC 7143 §13.14).
    pub fn finish(&mut self) {
        let p = &mut self.params;
        p.first_burst_len = p.first_burst_len.min(p.max_burst_len);
    }

    fn negotiate(&mut self, def: &KeyDef, value: &str) -> Result<Option<String>, NegotiationError> {
        let yes_no = |v: &str| match v {
            "Yes" => Some(true),
            "No" => Some(false),
            _ => None,
        };
        let p = &mut self.params;
        let answer = match def.rule {
            Rule::Declarative => {
                if matches!(def.name, "OFMarkInt" | "IFMarkInt") {
                    // Markers are never used, so their interval is irrelevant.
                    return Ok(Some("Irrelevant".into()));
                }
                return Ok(None);
            }
            Rule::DeclaredNumber(lo, hi) => {
                let Some(n) = parse_number(value) else {
                    return Ok(Some("Reject".into()));
                };
                if n < lo || n > hi {
                    return Ok(Some("Reject".into()));
                }
                // Only MaxRecvDataSegmentLength: the initiator's limit for our sends.
                p.initiator_max_recv_data_segment_len = n as u32;
                return Ok(None);
            }
            Rule::List => {
                let ours: Vec<&str> = match def.name {
                    "HeaderDigest" | "DataDigest" => self.offer.digests.clone(),
                    "TaskReporting" => vec!["RFC3720"],
                    _ => vec![],
                };
                let Some(choice) = value.split(',').find(|v| ours.contains(v)) else {
                    return Ok(Some("Reject".into()));
                };
                match def.name {
                    "HeaderDigest" => p.header_digest = choice == "CRC32C",
                    "DataDigest" => p.data_digest = choice == "CRC32C",
                    _ => {}
                }
                choice.to_string()
            }
            Rule::And | Rule::Or => {
                let Some(theirs) = yes_no(value) else {
                    return Ok(Some("Reject".into()));
                };
                let ours = match def.name {
                    "InitialR2T" => self.offer.initial_r2t,
                    "ImmediateData" => self.offer.immediate_data,
                    "DataPDUInOrder" | "DataSequenceInOrder" => true,
                    _ => false, // IFMarker, OFMarker
                };
                let result = if def.rule == Rule::And {
                    theirs && ours
                } else {
                    theirs || ours
                };
                match def.name {
                    "InitialR2T" => p.initial_r2t = result,
                    "ImmediateData" => p.immediate_data = result,
                    "DataPDUInOrder" => p.data_pdu_in_order = result,
                    "DataSequenceInOrder" => p.data_sequence_in_order = result,
                    _ => {}
                }
                if result { "Yes" } else { "No" }.to_string()
            }
            Rule::Min(lo, hi) | Rule::Max(lo, hi) => {
                let Some(n) = parse_number(value) else {
                    return Ok(Some("Reject".into()));
                };
                if n < lo || n > hi {
                    return Ok(Some("Reject".into()));
                }
                let ours: u64 = match def.name {
                    "MaxConnections" => 1,
                    "MaxBurstLength" => self.offer.max_burst_len.into(),
                    "FirstBurstLength" => self.offer.first_burst_len.into(),
                    "DefaultTime2Wait" => 2,
                    "DefaultTime2Retain" => 0,
                    "MaxOutstandingR2T" => self.offer.max_outstanding_r2t.into(),
                    "ErrorRecoveryLevel" => 0,
                    "iSCSIProtocolLevel" => 1,
                    _ => n,
                };
                let result = if matches!(def.rule, Rule::Min(..)) {
                    n.min(ours)
                } else {
                    n.max(ours)
                } as u32;
                match def.name {
                    "MaxConnections" => p.max_connections = result,
                    "MaxBurstLength" => p.max_burst_len = result,
                    "FirstBurstLength" => p.first_burst_len = result,
                    "DefaultTime2Wait" => p.default_time2wait = result,
                    "DefaultTime2Retain" => p.default_time2retain = result,
                    "MaxOutstandingR2T" => p.max_outstanding_r2t = result,
                    "ErrorRecoveryLevel" => p.error_recovery_level = result,
                    _ => {}
                }
                result.to_string()
            }
        };
        Ok(Some(answer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        pairs: &[(&str, &str)],
        phase: Phase,
    ) -> (
        Result<Vec<(String, String)>, NegotiationError>,
        SessionParams,
    ) {
        let mut n = Negotiator::new(TargetOffer::default());
        let pairs: Vec<_> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let r = n.respond(&pairs, phase);
        n.finish();
        (r, n.params)
    }

    fn answers(pairs: &[(&str, &str)], phase: Phase) -> Vec<(String, String)> {
        run(pairs, phase).0.unwrap()
    }

    fn kv(k: &str, v: &str) -> (String, String) {
        (k.to_string(), v.to_string())
    }

    #[test]
    fn rules_table() {
        use Phase::*;
        type Case<'a> = (&'a [(&'a str, &'a str)], Phase, &'a [(&'a str, &'a str)]);
        let cases: &[Case] = &[
            (
                &[("HeaderDigest", "None,CRC32C")],
                LoginNormal,
                &[("HeaderDigest", "None")],
            ),
            (
                &[("HeaderDigest", "CRC32C,None")],
                LoginNormal,
                &[("HeaderDigest", "CRC32C")],
            ),
            (
                &[("DataDigest", "MD5")],
                LoginNormal,
                &[("DataDigest", "Reject")],
            ),
            (
                &[("InitialR2T", "Yes")],
                LoginNormal,
                &[("InitialR2T", "Yes")],
            ),
            (
                &[("InitialR2T", "No")],
                LoginNormal,
                &[("InitialR2T", "No")],
            ),
            (
                &[("ImmediateData", "No")],
                LoginNormal,
                &[("ImmediateData", "No")],
            ),
            (
                &[("ImmediateData", "Maybe")],
                LoginNormal,
                &[("ImmediateData", "Reject")],
            ),
            (
                &[("MaxBurstLength", "16776192")],
                LoginNormal,
                &[("MaxBurstLength", "1048576")],
            ),
            (
                &[("MaxBurstLength", "100")],
                LoginNormal,
                &[("MaxBurstLength", "Reject")],
            ),
            (
                &[("MaxBurstLength", "abc")],
                LoginNormal,
                &[("MaxBurstLength", "Reject")],
            ),
            (
                &[("DefaultTime2Wait", "0")],
                LoginNormal,
                &[("DefaultTime2Wait", "2")],
            ),
            (
                &[("ErrorRecoveryLevel", "2")],
                LoginNormal,
                &[("ErrorRecoveryLevel", "0")],
            ),
            (
                &[("MaxConnections", "8")],
                LoginNormal,
                &[("MaxConnections", "1")],
            ),
            (&[("OFMarker", "Yes")], LoginNormal, &[("OFMarker", "No")]),
            (
                &[("OFMarkInt", "2048~8192")],
                LoginNormal,
                &[("OFMarkInt", "Irrelevant")],
            ),
            (
                &[("X-com.example.foo", "1")],
                LoginNormal,
                &[("X-com.example.foo", "NotUnderstood")],
            ),
            (
                &[("Bogus", "1")],
                LoginNormal,
                &[("Bogus", "NotUnderstood")],
            ),
            (
                &[("MaxBurstLength", "65536")],
                LoginDiscovery,
                &[("MaxBurstLength", "Irrelevant")],
            ),
            (&[("MaxRecvDataSegmentLength", "65536")], LoginNormal, &[]),
            (
                &[("MaxRecvDataSegmentLength", "1")],
                LoginNormal,
                &[("MaxRecvDataSegmentLength", "Reject")],
            ),
            (&[("InitiatorName", "iqn.x")], LoginNormal, &[]),
            (
                &[("HeaderDigest", "None")],
                FullFeature,
                &[("HeaderDigest", "Reject")],
            ),
        ];
        for (input, phase, want) in cases {
            let want: Vec<_> = want.iter().map(|(k, v)| kv(k, v)).collect();
            assert_eq!(answers(input, *phase), want, "{input:?}");
        }
    }

    #[test]
    fn results_land_in_params() {
        let (_, p) = run(
            &[
                ("HeaderDigest", "CRC32C"),
                ("DataDigest", "CRC32C"),
                ("MaxRecvDataSegmentLength", "65536"),
                ("MaxBurstLength", "262144"),
                ("FirstBurstLength", "16776192"),
                ("InitialR2T", "No"),
                ("MaxOutstandingR2T", "1"),
            ],
            Phase::LoginNormal,
        );
        assert!(p.header_digest && p.data_digest && !p.initial_r2t);
        assert_eq!(p.initiator_max_recv_data_segment_len, 65536);
        assert_eq!(p.max_burst_len, 262144);
        assert_eq!(
            p.first_burst_len, 262144,
            "FirstBurstLength is capped by MaxBurstLength"
        );
        assert_eq!(p.max_outstanding_r2t, 1);
    }

    #[test]
    fn duplicate_key_fails() {
        let (r, _) = run(
            &[("MaxBurstLength", "512"), ("MaxBurstLength", "1024")],
            Phase::LoginNormal,
        );
        assert_eq!(r, Err(NegotiationError::Duplicate("MaxBurstLength".into())));
    }
}
