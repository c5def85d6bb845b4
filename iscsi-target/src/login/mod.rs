//! The login phase (RFC 7143 §6.3, §11.12–11.13) as a state machine: login
//! requests in, login responses out, and at the end either a session's
//! parameters or a failure status. No I/O, no clock, no global state.

pub mod chap;
pub mod keys;
pub mod text;

use crate::pdu::{Opcode, Pdu};
use chap::{ChapConfig, ChapState, CHALLENGE_BYTES};
use keys::{Negotiator, Phase, SessionParams, TargetOffer};
use std::sync::Arc;
use text::TextAssembler;

/// What login needs to know about one target.
#[derive(Debug, Clone)]
pub struct TargetAuth {
    pub name: String,
    pub alias: Option<String>,
    pub chap: ChapConfig,
    /// Initiator names allowed to log in; empty allows every initiator.
    pub allowed_initiators: Vec<String>,
}

impl TargetAuth {
    pub fn allows(&self, initiator: &str) -> bool {
        self.allowed_initiators.is_empty() || self.allowed_initiators.iter().any(|i| i == initiator)
    }
}

/// The targets a portal serves, as login and discovery see them.
pub trait Directory: Send + Sync {
    fn target(&self, name: &str) -> Option<TargetAuth>;
    fn discovery_chap(&self) -> ChapConfig;
    /// Targets `initiator` may see, each with its portals as
    /// `TargetAddress` values (`ip:port,tpgt`).
    fn send_targets(&self, initiator: &str) -> Vec<(String, Vec<String>)>;
    /// Whether a session with this TSIH exists for this initiator port (a
    /// login with a non-zero TSIH continues an existing session).
    fn session_exists(&self, initiator: &str, isid: [u8; 6], tsih: u16) -> bool;
}

/// Login status classes and details (RFC 7143 §11.13.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum LoginStatus {
    Success = 0x0000,
    InitiatorError = 0x0200,
    AuthenticationFailure = 0x0201,
    AuthorizationFailure = 0x0202,
    NotFound = 0x0203,
    UnsupportedVersion = 0x0205,
    MissingParameter = 0x0207,
    SessionTypeNotSupported = 0x0209,
    SessionDoesNotExist = 0x020a,
    InvalidDuringLogin = 0x020b,
    TargetError = 0x0300,
    OutOfResources = 0x0302,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionType {
    Normal,
    Discovery,
}

/// A login that reached the full feature phase.
#[derive(Debug, Clone)]
pub struct LoginOutcome {
    pub session_type: SessionType,
    pub initiator_name: String,
    pub initiator_alias: Option<String>,
    /// Empty for a discovery session.
    pub target_name: String,
    pub isid: [u8; 6],
    pub tsih: u16,
    /// The TSIH the initiator asked for (non-zero: reinstating a session).
    pub requested_tsih: u16,
    pub cid: u16,
    pub params: SessionParams,
}

/// What one login request leads to.
#[derive(Debug)]
pub enum LoginStep {
    /// Send this response and wait for the next request.
    Continue(Pdu),
    /// Send this final response; the session enters full feature phase.
    Complete(Pdu, Box<LoginOutcome>),
    /// Send this failure response and close the connection.
    Fail(Pdu, LoginStatus),
}

const STAGE_SECURITY: u8 = 0;
const STAGE_OPERATIONAL: u8 = 1;
const STAGE_FULL_FEATURE: u8 = 3;

pub struct Login {
    directory: Arc<dyn Directory>,
    tpgt: u16,
    /// The TSIH this session gets if the login succeeds.
    tsih: u16,
    negotiator: Negotiator,
    text: TextAssembler,
    stage: u8,
    first: Option<FirstRequest>,
    session_type: SessionType,
    target: Option<TargetAuth>,
    initiator_alias: Option<String>,
    chap_required: bool,
    chap: ChapState,
    authenticated: bool,
    exchanges: u32,
    sent_tpgt: bool,
}

/// Fields fixed by the first login request.
#[derive(Debug, Clone)]
struct FirstRequest {
    isid: [u8; 6],
    tsih: u16,
    cid: u16,
    initiator_name: String,
}

/// Randomness for CHAP challenges, supplied by the environment.
pub trait ChallengeSource {
    fn challenge(&mut self) -> (u8, [u8; CHALLENGE_BYTES]);
}

impl<R: rand::RngCore> ChallengeSource for R {
    fn challenge(&mut self) -> (u8, [u8; CHALLENGE_BYTES]) {
        let mut c = [0u8; CHALLENGE_BYTES];
        self.fill_bytes(&mut c);
        let mut id = [0u8; 1];
        self.fill_bytes(&mut id);
        (id[0], c)
    }
}

fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

impl Login {
    pub fn new(directory: Arc<dyn Directory>, tpgt: u16, tsih: u16, offer: TargetOffer) -> Self {
        Login {
            directory,
            tpgt,
            tsih,
            negotiator: Negotiator::new(offer),
            text: TextAssembler::default(),
            stage: STAGE_SECURITY,
            first: None,
            session_type: SessionType::Normal,
            target: None,
            initiator_alias: None,
            chap_required: false,
            chap: ChapState::AwaitAlgorithm,
            authenticated: false,
            exchanges: 0,
            sent_tpgt: false,
        }
    }

    fn response(&self, req: &Pdu, status: LoginStatus) -> Pdu {
        let mut p = Pdu::new(Opcode::LoginResponse);
        p.bhs[8..14].copy_from_slice(&req.bhs[8..14]); // ISID
        p.bhs[14..16].copy_from_slice(&req.bhs[14..16]); // TSIH as asked
        p.set_itt(req.itt());
        let s = status as u16;
        p.bhs[36] = (s >> 8) as u8;
        p.bhs[37] = s as u8;
        // CSG echoes the request's stage.
        p.bhs[1] = req.bhs[1] & 0x0c;
        p
    }

    fn fail(&self, req: &Pdu, status: LoginStatus) -> LoginStep {
        tracing::info!(?status, "login failed");
        LoginStep::Fail(self.response(req, status), status)
    }

    /// Handles one PDU received during login.
    pub fn handle(&mut self, req: &Pdu, rng: &mut dyn ChallengeSource) -> LoginStep {
        if req.opcode() != Some(Opcode::LoginRequest) {
            return self.fail(req, LoginStatus::InvalidDuringLogin);
        }
        self.exchanges += 1;
        if self.exchanges > crate::limits::LOGIN_EXCHANGES_MAX {
            return self.fail(req, LoginStatus::InitiatorError);
        }
        let transit = req.bhs[1] & 0x80 != 0;
        let cont = req.bhs[1] & 0x40 != 0;
        let csg = (req.bhs[1] >> 2) & 0x3;
        let nsg = req.bhs[1] & 0x3;
        // Version-min must be 0 (RFC 7143 §11.12.4).
        if req.bhs[3] != 0 {
            return self.fail(req, LoginStatus::UnsupportedVersion);
        }
        if (transit && cont)
            || csg == 2
            || csg == STAGE_FULL_FEATURE
            || (transit && (nsg == 2 || nsg <= csg))
        {
            return self.fail(req, LoginStatus::InitiatorError);
        }
        if csg < self.stage {
            return self.fail(req, LoginStatus::InitiatorError);
        }
        let mut isid = [0u8; 6];
        isid.copy_from_slice(&req.bhs[8..14]);
        let tsih = u16::from_be_bytes([req.bhs[14], req.bhs[15]]);
        let cid = u16::from_be_bytes([req.bhs[20], req.bhs[21]]);
        if let Some(f) = &self.first {
            if f.isid != isid || f.tsih != tsih || f.cid != cid {
                return self.fail(req, LoginStatus::InitiatorError);
            }
        }

        let text = match self.text.push(&req.data, cont) {
            Ok(Some(t)) => t,
            Ok(None) => {
                // Acknowledge a continued request with an empty response.
                let mut p = self.response(req, LoginStatus::Success);
                p.bhs[1] = (csg << 2) | nsg;
                return LoginStep::Continue(p);
            }
            Err(_) => return self.fail(req, LoginStatus::InitiatorError),
        };
        let pairs = match text::parse(&text) {
            Ok(p) => p,
            Err(e) => {
                tracing::info!(error = %e, "bad login text");
                return self.fail(req, LoginStatus::InitiatorError);
            }
        };

        let mut out: Vec<(String, String)> = Vec::new();
        if self.first.is_none() {
            match self.first_request(&pairs, isid, tsih, cid) {
                Ok(()) => {}
                Err(status) => return self.fail(req, status),
            }
        } else if pairs
            .iter()
            .any(|(k, _)| matches!(k.as_str(), "InitiatorName" | "TargetName" | "SessionType"))
        {
            // These are declared once, in the first request.
            let changed = pairs.iter().any(|(k, v)| match k.as_str() {
                "InitiatorName" => self.first.as_ref().is_some_and(|f| &f.initiator_name != v),
                "TargetName" => self.target.as_ref().is_some_and(|t| &t.name != v),
                _ => false,
            });
            if changed {
                return self.fail(req, LoginStatus::InitiatorError);
            }
        }
        if !self.sent_tpgt && self.session_type == SessionType::Normal {
            out.push(("TargetPortalGroupTag".into(), self.tpgt.to_string()));
            if let Some(alias) = self.target.as_ref().and_then(|t| t.alias.clone()) {
                out.push(("TargetAlias".into(), alias));
            }
            self.sent_tpgt = true;
        }
        if let Some(a) = get(&pairs, "InitiatorAlias") {
            self.initiator_alias = Some(a.to_string());
        }

        // Security keys.
        if !self.chap_required {
            self.authenticated = true;
        }
        if csg != STAGE_SECURITY && !self.authenticated {
            return self.fail(req, LoginStatus::AuthenticationFailure);
        }
        let chap_cfg = match &self.target {
            Some(t) => t.chap.clone(),
            None => self.directory.discovery_chap(),
        };
        let has_chap_keys = pairs.iter().any(|(k, _)| k.starts_with("CHAP_"));
        if (has_chap_keys || get(&pairs, "AuthMethod").is_some()) && csg != STAGE_SECURITY {
            return self.fail(req, LoginStatus::InitiatorError);
        }
        if let Some(methods) = get(&pairs, "AuthMethod") {
            let offered: Vec<&str> = methods.split(',').collect();
            if self.chap_required {
                if !offered.contains(&"CHAP") || has_chap_keys {
                    return self.fail(req, LoginStatus::AuthenticationFailure);
                }
                out.push(("AuthMethod".into(), "CHAP".into()));
            } else if offered.contains(&"None") {
                out.push(("AuthMethod".into(), "None".into()));
            } else {
                return self.fail(req, LoginStatus::AuthenticationFailure);
            }
        } else if has_chap_keys {
            if !self.chap_required {
                return self.fail(req, LoginStatus::InitiatorError);
            }
            let (id, challenge) = rng.challenge();
            match self.chap.step(&chap_cfg, &pairs, id, challenge) {
                Ok(keys) => out.extend(keys),
                Err(e) => {
                    tracing::info!(error = %e, "CHAP failed");
                    return self.fail(req, LoginStatus::AuthenticationFailure);
                }
            }
            self.authenticated = self.chap == ChapState::Done;
        }

        // Operational keys (accepted in the security stage too, as LIO does).
        let phase = match self.session_type {
            SessionType::Normal => Phase::LoginNormal,
            SessionType::Discovery => Phase::LoginDiscovery,
        };
        let operational: Vec<(String, String)> = pairs
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "AuthMethod" | "InitiatorAlias" | "TargetAlias" | "TargetPortalGroupTag"
                ) && !k.starts_with("CHAP_")
            })
            .cloned()
            .collect();
        match self.negotiator.respond(&operational, phase) {
            Ok(keys) => out.extend(keys.into_iter().filter(|(k, _)| {
                !matches!(k.as_str(), "InitiatorName" | "TargetName" | "SessionType")
            })),
            Err(e) => {
                tracing::info!(error = %e, "login negotiation failed");
                return self.fail(req, LoginStatus::InitiatorError);
            }
        }

        // Stage transition: out of security only once authenticated.
        let mut resp = self.response(req, LoginStatus::Success);
        let goes = transit && self.authenticated;
        if csg == STAGE_OPERATIONAL || (goes && nsg == STAGE_FULL_FEATURE) {
            out.extend(self.negotiator.declarations(phase));
        }
        resp.set_data(text::encode(&out));
        resp.bhs[1] = (csg << 2) | if goes { 0x80 | nsg } else { 0 };
        if goes {
            self.stage = nsg;
        } else {
            self.stage = csg;
        }
        if goes && nsg == STAGE_FULL_FEATURE {
            self.negotiator.finish();
            let Some(first) = self.first.clone() else {
                return self.fail(req, LoginStatus::TargetError);
            };
            resp.bhs[14..16].copy_from_slice(&self.tsih.to_be_bytes());
            let outcome = LoginOutcome {
                session_type: self.session_type,
                initiator_name: first.initiator_name,
                initiator_alias: self.initiator_alias.clone(),
                target_name: self
                    .target
                    .as_ref()
                    .map(|t| t.name.clone())
                    .unwrap_or_default(),
                isid: first.isid,
                tsih: self.tsih,
                requested_tsih: first.tsih,
                cid: first.cid,
                params: self.negotiator.params.clone(),
            };
            return LoginStep::Complete(resp, Box::new(outcome));
        }
        LoginStep::Continue(resp)
    }

    fn first_request(
        &mut self,
        pairs: &[(String, String)],
        isid: [u8; 6],
        tsih: u16,
        cid: u16,
    ) -> Result<(), LoginStatus> {
        let initiator_name = get(pairs, "InitiatorName").ok_or(LoginStatus::MissingParameter)?;
        if initiator_name.is_empty() {
            return Err(LoginStatus::MissingParameter);
        }
        if tsih != 0 {
            // With one connection per session, a non-zero TSIH can only
            // reinstate the connection of a session that still exists.
            if !self.directory.session_exists(initiator_name, isid, tsih) {
                return Err(LoginStatus::SessionDoesNotExist);
            }
            self.tsih = tsih;
        }
        self.session_type = match get(pairs, "SessionType").unwrap_or("Normal") {
            "Normal" => SessionType::Normal,
            "Discovery" => SessionType::Discovery,
            _ => return Err(LoginStatus::SessionTypeNotSupported),
        };
        if self.session_type == SessionType::Normal {
            let name = get(pairs, "TargetName").ok_or(LoginStatus::MissingParameter)?;
            let target = self.directory.target(name).ok_or(LoginStatus::NotFound)?;
            if !target.allows(initiator_name) {
                return Err(LoginStatus::AuthorizationFailure);
            }
            self.chap_required = target.chap.initiator.is_some();
            self.target = Some(target);
        } else {
            self.chap_required = self.directory.discovery_chap().initiator.is_some();
        }
        self.first = Some(FirstRequest {
            isid,
            tsih,
            cid,
            initiator_name: initiator_name.to_string(),
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests;
