//! What a gateway serves: its targets (names, CHAP, ACLs, SCSI logical
//! units), its portals, and the live sessions (for TSIH allocation, session
//! reinstatement and resets that reach across sessions).

use crate::login::chap::ChapConfig;
use crate::login::{Directory, TargetAuth};
use crate::scsi::{ItNexus, ScsiTarget, TaskAborter};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// One iSCSI target: its login settings and its logical units.
pub struct Target {
    pub auth: TargetAuth,
    pub scsi: Arc<ScsiTarget>,
}

/// Orders a session's driver can receive from elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionControl {
    /// Close the connection (reinstatement, cold reset, shutdown).
    Close,
    /// Abort tasks on one LUN, or on all with `None` (another session's reset).
    AbortTasks(Option<u64>),
}

struct SessionEntry {
    nexus: ItNexus,
    tsih: u16,
    control: mpsc::UnboundedSender<SessionControl>,
}

/// The gateway's targets, portals and live sessions.
pub struct Gateway {
    /// By name; a cluster gateway adds and removes targets as the
    /// catalogue changes (sessions keep the target they logged in to).
    targets: parking_lot::RwLock<HashMap<String, Arc<Target>>>,
    /// Portals advertised in SendTargets (`ip:port`), with our TPGT.
    pub portals: Vec<String>,
    pub tpgt: u16,
    pub discovery_chap: ChapConfig,
    sessions: Mutex<HashMap<u64, SessionEntry>>,
    next_session_id: AtomicU64,
    next_tsih: AtomicU16,
}

impl Gateway {
    /// The gateway, shared; its targets ask it to abort other sessions'
    /// tasks (PREEMPT AND ABORT).
    pub fn new(
        targets: Vec<Target>,
        portals: Vec<String>,
        tpgt: u16,
        discovery_chap: ChapConfig,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me: &std::sync::Weak<Gateway>| {
            for t in &targets {
                let aborter: std::sync::Weak<dyn TaskAborter> = me.clone();
                t.scsi.set_task_aborter(aborter);
            }
            Gateway::unshared(targets, portals, tpgt, discovery_chap)
        })
    }

    fn unshared(
        targets: Vec<Target>,
        portals: Vec<String>,
        tpgt: u16,
        discovery_chap: ChapConfig,
    ) -> Self {
        Gateway {
            targets: parking_lot::RwLock::new(
                targets
                    .into_iter()
                    .map(|t| (t.auth.name.clone(), Arc::new(t)))
                    .collect(),
            ),
            portals,
            tpgt,
            discovery_chap,
            sessions: Mutex::new(HashMap::new()),
            next_session_id: AtomicU64::new(1),
            next_tsih: AtomicU16::new(1),
        }
    }

    pub fn target(&self, name: &str) -> Option<Arc<Target>> {
        self.targets.read().get(name).cloned()
    }

    pub fn targets(&self) -> Vec<Arc<Target>> {
        self.targets.read().values().cloned().collect()
    }

    /// Serves a new target (or replaces one of the same name: sessions
    /// already logged in keep the old one until they log in again).
    pub fn add_target(self: &Arc<Self>, t: Target) {
        let me: std::sync::Weak<Gateway> = Arc::downgrade(self);
        let aborter: std::sync::Weak<dyn TaskAborter> = me;
        t.scsi.set_task_aborter(aborter);
        self.targets
            .write()
            .insert(t.auth.name.clone(), Arc::new(t));
    }

    /// Stops offering a target to new logins.
    pub fn remove_target(&self, name: &str) {
        self.targets.write().remove(name);
    }

    /// A fresh non-zero TSIH.
    pub fn allocate_tsih(&self) -> u16 {
        loop {
            let t = self.next_tsih.fetch_add(1, Ordering::Relaxed);
            if t != 0 {
                return t;
            }
        }
    }

    pub fn session_count(&self) -> usize {
        self.sessions.lock().len()
    }

    /// Registers a session that reached full feature phase, closing any older
    /// session of the same I_T nexus (session reinstatement, RFC 7143 §6.3.5).
    pub fn register(
        &self,
        nexus: ItNexus,
        tsih: u16,
        control: mpsc::UnboundedSender<SessionControl>,
    ) -> u64 {
        let id = self.next_session_id.fetch_add(1, Ordering::Relaxed);
        let mut sessions = self.sessions.lock();
        let old: Vec<u64> = sessions
            .iter()
            .filter(|(_, e)| e.nexus == nexus)
            .map(|(id, _)| *id)
            .collect();
        for old_id in old {
            if let Some(e) = sessions.remove(&old_id) {
                tracing::info!(initiator = %nexus.initiator_name, "session reinstated; closing the old one");
                let _ = e.control.send(SessionControl::Close);
            }
        }
        sessions.insert(
            id,
            SessionEntry {
                nexus,
                tsih,
                control,
            },
        );
        id
    }

    pub fn unregister(&self, id: u64) {
        self.sessions.lock().remove(&id);
    }

    /// Sends `ctl` to every other session of `target`.
    pub fn broadcast(&self, target: &str, except: u64, ctl: SessionControl) {
        for (id, e) in self.sessions.lock().iter() {
            if *id != except && e.nexus.target_name == target {
                let _ = e.control.send(ctl);
            }
        }
    }

    /// Closes every session (shutdown).
    pub fn close_all(&self) {
        for e in self.sessions.lock().values() {
            let _ = e.control.send(SessionControl::Close);
        }
    }
}

impl TaskAborter for Gateway {
    fn abort_tasks(&self, target_name: &str, lun: u64, nexus_matches: &dyn Fn(&ItNexus) -> bool) {
        for e in self.sessions.lock().values() {
            if e.nexus.target_name == target_name && nexus_matches(&e.nexus) {
                let _ = e.control.send(SessionControl::AbortTasks(Some(lun)));
            }
        }
    }
}

impl Directory for Gateway {
    fn session_exists(&self, initiator: &str, isid: [u8; 6], tsih: u16) -> bool {
        self.sessions
            .lock()
            .values()
            .any(|e| e.tsih == tsih && e.nexus.isid == isid && e.nexus.initiator_name == initiator)
    }

    fn target(&self, name: &str) -> Option<TargetAuth> {
        self.targets.read().get(name).map(|t| t.auth.clone())
    }

    fn discovery_chap(&self) -> ChapConfig {
        self.discovery_chap.clone()
    }

    fn send_targets(&self, initiator: &str) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = self
            .targets
            .read()
            .values()
            .filter(|t| t.auth.allows(initiator))
            .map(|t| {
                let addrs = self
                    .portals
                    .iter()
                    .map(|p| format!("{p},{}", self.tpgt))
                    .collect();
                (t.auth.name.clone(), addrs)
            })
            .collect();
        out.sort();
        out
    }
}
