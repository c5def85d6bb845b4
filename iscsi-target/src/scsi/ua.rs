//! Unit attention conditions, queued per I_T nexus of one logical unit.
//!
//! SAM-5 5.14: a condition is reported once to each I_T nexus it concerns,
//! by the first command that is not INQUIRY, REPORT LUNS or REQUEST SENSE
//! (REQUEST SENSE reports and clears it as parameter data instead).

use super::ItNexus;
use std::collections::HashMap;

/// Conditions queued per nexus before the oldest are dropped; SAM lets a
/// device server coalesce them, and the newest says the most.
pub const UA_QUEUE_MAX: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UaKind {
    /// POWER ON, RESET, OR BUS DEVICE RESET OCCURRED.
    PowerOnReset,
    /// BUS DEVICE RESET FUNCTION OCCURRED (LOGICAL UNIT RESET).
    BusDeviceReset,
    ModeParametersChanged,
    ReservationsPreempted,
    ReservationsReleased,
    RegistrationsPreempted,
    AsymmetricAccessStateChanged,
    CapacityDataChanged,
    ReportedLunsDataChanged,
}

impl UaKind {
    pub fn asc_ascq(self) -> (u8, u8) {
        match self {
            UaKind::PowerOnReset => (0x29, 0x00),
            UaKind::BusDeviceReset => (0x29, 0x03),
            UaKind::ModeParametersChanged => (0x2a, 0x01),
            UaKind::ReservationsPreempted => (0x2a, 0x03),
            UaKind::ReservationsReleased => (0x2a, 0x04),
            UaKind::RegistrationsPreempted => (0x2a, 0x05),
            UaKind::AsymmetricAccessStateChanged => (0x2a, 0x06),
            UaKind::CapacityDataChanged => (0x2a, 0x09),
            UaKind::ReportedLunsDataChanged => (0x3f, 0x0e),
        }
    }
}

/// Pending conditions of one logical unit. A nexus is known (present as a
/// key) from its first command until `forget`, so that conditions raised
/// "for every nexus" reach those that are idle.
#[derive(Debug, Default)]
pub struct UaQueues {
    queues: HashMap<ItNexus, Vec<UaKind>>,
}

impl UaQueues {
    /// Records that `nexus` exists.
    pub fn touch(&mut self, nexus: &ItNexus) {
        if !self.queues.contains_key(nexus) {
            self.queues.insert(nexus.clone(), Vec::new());
        }
    }

    pub fn push(&mut self, nexus: &ItNexus, kind: UaKind) {
        let q = self.queues.entry(nexus.clone()).or_default();
        if q.contains(&kind) {
            return;
        }
        if q.len() >= UA_QUEUE_MAX {
            q.remove(0);
        }
        q.push(kind);
    }

    /// Raises `kind` for every known nexus for which `pred` holds.
    pub fn push_where(&mut self, kind: UaKind, pred: impl Fn(&ItNexus) -> bool) {
        let targets: Vec<ItNexus> = self.queues.keys().filter(|n| pred(n)).cloned().collect();
        for n in targets {
            self.push(&n, kind);
        }
    }

    /// Takes the oldest pending condition of `nexus`.
    pub fn pop(&mut self, nexus: &ItNexus) -> Option<UaKind> {
        let q = self.queues.get_mut(nexus)?;
        if q.is_empty() {
            None
        } else {
            Some(q.remove(0))
        }
    }

    pub fn forget(&mut self, nexus: &ItNexus) {
        self.queues.remove(nexus);
    }
}
