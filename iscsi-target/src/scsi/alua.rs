//! Asymmetric logical unit access: which target port groups exist, in
//! which state, and the REPORT TARGET PORT GROUPS answer built from them.
//!
//! Every gateway is one port group with its own relative port ids, and all
//! of them are active/optimized (DESIGN.md "Gateways"); the cluster
//! provides that view, a standalone gateway uses [`StandaloneAlua`].

use super::cdb::put_be;
use super::sense::SenseReason;
use super::target::{CmdResult, Ctx, Xfer};
use super::ItNexus;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AsymmetricAccessState {
    ActiveOptimized = 0x0,
    ActiveNonOptimized = 0x1,
    Standby = 0x2,
    Unavailable = 0x3,
    Transitioning = 0xf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetPortGroup {
    pub id: u16,
    pub state: AsymmetricAccessState,
    pub relative_port_ids: Vec<u16>,
}

pub trait AluaProvider: Send + Sync {
    /// Relative target port identifier of the port `nexus` came through;
    /// unique across every gateway of the cluster, never 0.
    fn relative_port_id(&self, nexus: &ItNexus) -> u16;
    /// Port group of that port.
    fn port_group_id(&self, nexus: &ItNexus) -> u16;
    /// Every port group that reaches `lun`, through every gateway.
    fn port_groups(&self, lun: u64, nexus: &ItNexus) -> Vec<TargetPortGroup>;
}

/// One gateway: port group 1, active/optimized, and the relative port id is
/// the portal group tag (0 is reserved, so it becomes 1).
#[derive(Debug, Default, Clone, Copy)]
pub struct StandaloneAlua;

const STANDALONE_GROUP_ID: u16 = 1;

impl AluaProvider for StandaloneAlua {
    fn relative_port_id(&self, nexus: &ItNexus) -> u16 {
        nexus.tpgt.max(1)
    }

    fn port_group_id(&self, _nexus: &ItNexus) -> u16 {
        STANDALONE_GROUP_ID
    }

    fn port_groups(&self, _lun: u64, nexus: &ItNexus) -> Vec<TargetPortGroup> {
        vec![TargetPortGroup {
            id: STANDALONE_GROUP_ID,
            state: AsymmetricAccessState::ActiveOptimized,
            relative_port_ids: vec![self.relative_port_id(nexus)],
        }]
    }
}

pub fn report_target_port_groups(ctx: &Ctx) -> CmdResult {
    const EXTENDED_FORMAT: u8 = 0x01;
    /// Supported states: T_SUP, U_SUP, S_SUP, AN_SUP, AO_SUP.
    const SUPPORTED_STATES: u8 = 0x80 | 0x08 | 0x04 | 0x02 | 0x01;
    let lu = ctx.lu()?;
    let format = ctx.cdb.u8(1) >> 5;
    if format > EXTENDED_FORMAT {
        return Err(SenseReason::InvalidFieldInCdb {
            byte: 1,
            bit: Some(7),
        });
    }
    let mut body = Vec::new();
    for g in ctx.target.alua.port_groups(lu.cfg.lun, ctx.nexus) {
        body.push(g.state as u8);
        body.push(SUPPORTED_STATES);
        put_be(&mut body, u64::from(g.id), 2);
        body.push(0);
        body.push(0); // status code: no change
        body.push(0);
        let ports = &g.relative_port_ids[..g.relative_port_ids.len().min(255)];
        body.push(ports.len() as u8);
        for p in ports {
            put_be(&mut body, u64::from(*p), 4);
        }
    }
    let mut out = Vec::new();
    if format == EXTENDED_FORMAT {
        put_be(&mut out, (body.len() + 4) as u64, 4);
        out.push(0x10); // format type 001b
        out.push(0); // implicit transition time: none needed
        out.extend_from_slice(&[0, 0]);
    } else {
        put_be(&mut out, body.len() as u64, 4);
    }
    out.extend_from_slice(&body);
    Ok(Xfer::data(out))
}
