//! One iSCSI connection (and, with MaxConnections=1, its session) as a state
//! machine: PDUs and command completions in, PDUs and events out. The tokio
//! driver in `server` feeds it; tests feed it scripted PDUs on a virtual
//! clock. All protocol timers (login, NOP-In) live here.

mod task;
pub mod window;

#[cfg(test)]
mod tests;

use crate::limits;
use crate::login::keys::{Negotiator, Phase, SessionParams, TargetOffer};
use crate::login::text::{self, ResponseSplitter, TextAssembler};
use crate::login::{ChallengeSource, Directory, Login, LoginOutcome, LoginStep, SessionType};
use crate::pdu::{DigestConfig, Opcode, Pdu, PduError, RejectReason, RESERVED_TAG};
use crate::scsi::{ScsiRequest, ScsiResponse, ScsiStatus, TaskAttr};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use task::{DataOutcome, Task};
use window::{sn_le, sn_lt, CommandWindow};

/// Task management functions (RFC 7143 §11.5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmfFunction {
    AbortTask,
    AbortTaskSet,
    ClearAca,
    ClearTaskSet,
    LogicalUnitReset,
    TargetWarmReset,
    TargetColdReset,
    TaskReassign,
    QueryTask,
    QueryTaskSet,
    ItNexusReset,
    QueryAsyncEvent,
}

impl TmfFunction {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::AbortTask,
            2 => Self::AbortTaskSet,
            3 => Self::ClearAca,
            4 => Self::ClearTaskSet,
            5 => Self::LogicalUnitReset,
            6 => Self::TargetWarmReset,
            7 => Self::TargetColdReset,
            8 => Self::TaskReassign,
            9 => Self::QueryTask,
            10 => Self::QueryTaskSet,
            11 => Self::ItNexusReset,
            12 => Self::QueryAsyncEvent,
            _ => return None,
        })
    }
}

/// TMF response codes (RFC 7143 §11.6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TmfResponse {
    FunctionComplete = 0,
    TaskDoesNotExist = 1,
    LunDoesNotExist = 2,
    AllegianceReassignmentNotSupported = 4,
    NotSupported = 5,
    Rejected = 255,
}

/// Work for the driver.
#[derive(Debug)]
pub enum Event {
    /// Login succeeded; the driver registers the session (replacing an older
    /// one with the same initiator and ISID) and attaches its SCSI target.
    LoggedIn(Box<LoginOutcome>),
    /// Run this SCSI command and report back with [`Connection::complete`].
    Execute { itt: u32, request: ScsiRequest },
    /// Stop these running commands; their results must not be reported.
    Abort(Vec<u32>),
    /// A reset reaching beyond this connection; the driver applies it to the
    /// logical units and other sessions, then calls [`Connection::tmf_done`].
    Reset {
        itt: u32,
        function: TmfFunction,
        lun: u64,
    },
    /// Send what is queued, then close the connection.
    Close,
}

/// Static settings of a connection.
#[derive(Clone)]
pub struct ConnectionConfig {
    pub directory: Arc<dyn Directory>,
    pub tpgt: u16,
    pub offer: TargetOffer,
    /// TSIH the session gets if its login succeeds.
    pub tsih: u16,
}

enum State {
    Login(Box<Login>),
    FullFeature,
    /// Logout answered or connection failed: nothing more is read.
    Closing,
}

pub struct Connection {
    state: State,
    cfg: ConnectionConfig,
    session_type: SessionType,
    initiator_name: String,
    target_name: String,
    params: SessionParams,
    digests: DigestConfig,
    /// Next StatSN to send; stamped on PDUs as they leave.
    stat_sn: u32,
    exp_cmd_sn: u32,
    max_cmd_sn: u32,
    window: CommandWindow,
    /// Control PDUs (NOP-In, TMF, text, login, reject) jump ahead of data.
    control_tx: VecDeque<Pdu>,
    data_tx: VecDeque<Pdu>,
    events: VecDeque<Event>,
    tasks: HashMap<u32, Task>,
    /// Commands that arrived ahead of ExpCmdSN, waiting for the gap to fill.
    ahead: BTreeMap<u32, Pdu>,
    /// ITTs of commands answered early whose remaining Data-Out is dropped.
    discarding: HashSet<u32>,
    next_ttt: u32,
    /// Bytes asked for by R2T and not yet received, over all tasks: bounds
    /// the memory one session can make us hold for Data-Out.
    solicited_bytes: u64,
    /// Tasks waiting for room under that bound before their next R2T.
    r2t_waiting: VecDeque<u32>,
    text_in: TextAssembler,
    text_out: ResponseSplitter,
    text_ttt: u32,
    text_negotiator: Option<Negotiator>,
    last_rx: Instant,
    login_deadline: Option<Instant>,
    /// Our outstanding NOP-In ping: its TTT and when we give up.
    ping: Option<(u32, Instant)>,
}

impl Connection {
    pub fn new(cfg: ConnectionConfig, now: Instant) -> Self {
        let login = Login::new(cfg.directory.clone(), cfg.tpgt, cfg.tsih, cfg.offer.clone());
        Connection {
            state: State::Login(Box::new(login)),
            cfg,
            session_type: SessionType::Normal,
            initiator_name: String::new(),
            target_name: String::new(),
            params: SessionParams::default(),
            digests: DigestConfig::default(),
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
            window: CommandWindow::default(),
            control_tx: VecDeque::new(),
            data_tx: VecDeque::new(),
            events: VecDeque::new(),
            tasks: HashMap::new(),
            ahead: BTreeMap::new(),
            discarding: HashSet::new(),
            next_ttt: 1,
            solicited_bytes: 0,
            r2t_waiting: VecDeque::new(),
            text_in: TextAssembler::default(),
            text_out: ResponseSplitter::default(),
            text_ttt: RESERVED_TAG,
            text_negotiator: None,
            last_rx: now,
            login_deadline: Some(now + Duration::from_millis(limits::LOGIN_TIMEOUT_MS)),
            ping: None,
        }
    }

    /// Digest and size settings for the wire codec, in force now.
    pub fn digests(&self) -> DigestConfig {
        self.digests
    }

    pub fn params(&self) -> &SessionParams {
        &self.params
    }

    pub fn is_closing(&self) -> bool {
        matches!(self.state, State::Closing)
    }

    /// Commands received and not yet answered.
    pub fn tasks_in_flight(&self) -> usize {
        self.tasks.len()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next PDU to send, with StatSN, ExpCmdSN and MaxCmdSN stamped now
    /// so that they are always current and in order.
    pub fn poll_transmit(&mut self) -> Option<Pdu> {
        let mut pdu = self
            .control_tx
            .pop_front()
            .or_else(|| self.data_tx.pop_front())?;
        let op = pdu.opcode();
        let advances = match op {
            Some(Opcode::DataIn) => pdu.flags() & 0x01 != 0,
            Some(Opcode::NopIn) => pdu.itt() != RESERVED_TAG,
            Some(o) => o.advances_stat_sn(),
            None => false,
        };
        let carries_stat_sn = advances
            || matches!(
                op,
                Some(Opcode::NopIn | Opcode::ReadyToTransfer | Opcode::AsyncMessage)
            );
        if carries_stat_sn {
            pdu.set_word24(self.stat_sn);
        }
        if advances {
            self.stat_sn = self.stat_sn.wrapping_add(1);
        }
        self.update_max_cmd_sn();
        pdu.set_word28(self.exp_cmd_sn);
        pdu.set_word32(self.max_cmd_sn);
        Some(pdu)
    }

    /// How many PDUs wait to be sent.
    pub fn tx_queue_len(&self) -> usize {
        self.control_tx.len() + self.data_tx.len()
    }

    fn update_max_cmd_sn(&mut self) {
        let in_flight = (self.tasks.len() + self.ahead.len()) as u32;
        let avail = self.window.size().saturating_sub(in_flight);
        let candidate = self.exp_cmd_sn.wrapping_add(avail).wrapping_sub(1);
        // MaxCmdSN never moves backwards (RFC 7143 §4.2.2.1).
        if sn_lt(self.max_cmd_sn, candidate) {
            self.max_cmd_sn = candidate;
        }
    }

    /// When [`Connection::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Login(_) => self.login_deadline,
            State::FullFeature => Some(match self.ping {
                Some((_, deadline)) => deadline,
                None => self.last_rx + Duration::from_millis(limits::NOP_IN_INTERVAL_MS),
            }),
            State::Closing => None,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Login(_) => {
                if self.login_deadline.is_some_and(|d| now >= d) {
                    tracing::info!("login timed out");
                    self.close();
                }
            }
            State::FullFeature => match self.ping {
                Some((_, deadline)) if now >= deadline => {
                    tracing::warn!(initiator = %self.initiator_name, "NOP-In ping unanswered; dropping connection");
                    self.close();
                }
                Some(_) => {}
                None if now >= self.last_rx + Duration::from_millis(limits::NOP_IN_INTERVAL_MS) => {
                    let ttt = self.alloc_ttt();
                    let mut p = Pdu::new(Opcode::NopIn);
                    p.set_flags(0x80).set_itt(RESERVED_TAG).set_word20(ttt);
                    self.control_tx.push_back(p);
                    self.ping = Some((ttt, now + Duration::from_millis(limits::NOP_IN_TIMEOUT_MS)));
                }
                None => {}
            },
            State::Closing => {}
        }
    }

    /// Handles a codec error: a Reject where the RFC asks for one, then close.
    pub fn handle_decode_error(&mut self, err: &PduError) {
        tracing::info!(error = %err, "bad PDU; closing connection");
        match err {
            PduError::DataDigest { header, .. } => {
                self.reject_header(header, RejectReason::DataDigestError)
            }
            PduError::DataSegmentTooLong { header, .. } => {
                self.reject_header(header, RejectReason::ProtocolError)
            }
            PduError::HeaderDigest { .. } => {}
        }
        self.close();
    }

    fn close(&mut self) {
        if !matches!(self.state, State::Closing) {
            self.state = State::Closing;
            let itts: Vec<u32> = self.tasks.keys().copied().collect();
            if !itts.is_empty() {
                self.events.push_back(Event::Abort(itts));
            }
            self.tasks.clear();
            self.events.push_back(Event::Close);
        }
    }

    /// Remembers that Data-Out for `itt` is to be dropped from now on.
    fn discard(&mut self, itt: u32) {
        if self.discarding.len() >= limits::DISCARDED_TASKS_MAX {
            self.discarding.clear();
        }
        self.discarding.insert(itt);
    }

    fn alloc_ttt(&mut self) -> u32 {
        let t = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == RESERVED_TAG {
            self.next_ttt = 1;
        }
        t
    }

    fn reject_header(&mut self, header: &[u8; crate::pdu::BHS_LEN], reason: RejectReason) {
        let mut p = Pdu::new(Opcode::Reject);
        p.set_flags(0x80).set_itt(RESERVED_TAG);
        p.bhs[2] = reason as u8;
        p.set_data(Bytes::copy_from_slice(header));
        self.control_tx.push_back(p);
    }

    fn reject(&mut self, pdu: &Pdu, reason: RejectReason) {
        tracing::debug!(?pdu, ?reason, "rejecting PDU");
        self.reject_header(&pdu.bhs, reason);
    }

    /// Handles one PDU from the initiator.
    pub fn handle_pdu(&mut self, pdu: Pdu, now: Instant, rng: &mut dyn ChallengeSource) {
        self.last_rx = now;
        match &mut self.state {
            State::Closing => {}
            State::Login(login) => {
                if pdu.opcode() == Some(Opcode::LoginRequest)
                    && self.stat_sn == 0
                    && self.exp_cmd_sn == 0
                {
                    // The first login request sets the sequence numbers.
                    self.stat_sn = pdu.exp_stat_sn();
                    self.exp_cmd_sn = pdu.cmd_sn();
                    self.max_cmd_sn = pdu.cmd_sn();
                }
                match login.handle(&pdu, rng) {
                    LoginStep::Continue(resp) => self.control_tx.push_back(resp),
                    LoginStep::Fail(resp, _) => {
                        self.control_tx.push_back(resp);
                        self.close();
                    }
                    LoginStep::Complete(resp, outcome) => {
                        self.control_tx.push_back(resp);
                        self.enter_full_feature(&outcome);
                        self.events.push_back(Event::LoggedIn(outcome));
                    }
                }
            }
            State::FullFeature => self.handle_full_feature(pdu, now),
        }
    }

    fn enter_full_feature(&mut self, outcome: &LoginOutcome) {
        self.state = State::FullFeature;
        self.session_type = outcome.session_type;
        self.initiator_name = outcome.initiator_name.clone();
        self.target_name = outcome.target_name.clone();
        self.params = outcome.params.clone();
        // Digests start with the first PDU after the final login response.
        self.digests = DigestConfig {
            header_digest: self.params.header_digest,
            data_digest: self.params.data_digest,
            max_data_segment_len: self.params.target_max_recv_data_segment_len as usize,
        };
        self.login_deadline = None;
        self.text_negotiator = Some(Negotiator::new(self.cfg.offer.clone()));
    }

    fn handle_full_feature(&mut self, pdu: Pdu, now: Instant) {
        let Some(op) = pdu.opcode() else {
            return self.reject(&pdu, RejectReason::CommandNotSupported);
        };
        if !op.is_initiator() {
            return self.reject(&pdu, RejectReason::ProtocolError);
        }
        match op {
            Opcode::DataOut => return self.handle_data_out(pdu, now),
            Opcode::SnackRequest => return self.reject(&pdu, RejectReason::ProtocolError),
            Opcode::LoginRequest => return self.reject(&pdu, RejectReason::ProtocolError),
            _ => {}
        }
        if self.session_type == SessionType::Discovery
            && matches!(op, Opcode::ScsiCommand | Opcode::TaskMgmtRequest)
        {
            return self.reject(&pdu, RejectReason::ProtocolError);
        }
        // NOP-Out answering our ping carries no CmdSN of its own.
        if op == Opcode::NopOut && pdu.itt() == RESERVED_TAG {
            if self.ping.is_some_and(|(ttt, _)| ttt == pdu.ttt()) {
                self.ping = None;
            }
            return;
        }
        if pdu.immediate() {
            return self.dispatch(pdu, now);
        }
        let sn = pdu.cmd_sn();
        if sn == self.exp_cmd_sn {
            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
            self.dispatch(pdu, now);
            // Commands that were waiting for this one.
            while let Some(next) = self.ahead.remove(&self.exp_cmd_sn) {
                self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
                self.dispatch(next, now);
            }
        } else if sn_lt(self.exp_cmd_sn, sn)
            && sn_le(sn, self.max_cmd_sn)
            && self.ahead.len() < limits::CMDS_AHEAD_MAX
        {
            self.ahead.insert(sn, pdu);
        } else {
            // Outside the window: silently ignored (RFC 7143 §3.2.2.1).
            tracing::debug!(
                cmd_sn = sn,
                exp = self.exp_cmd_sn,
                max = self.max_cmd_sn,
                "CmdSN outside window; ignored"
            );
        }
    }

    fn dispatch(&mut self, pdu: Pdu, now: Instant) {
        match pdu.opcode() {
            Some(Opcode::ScsiCommand) => self.handle_scsi_command(pdu, now),
            Some(Opcode::NopOut) => self.handle_nop_out(pdu),
            Some(Opcode::TaskMgmtRequest) => self.handle_tmf(pdu),
            Some(Opcode::TextRequest) => self.handle_text(pdu),
            Some(Opcode::LogoutRequest) => self.handle_logout(pdu),
            _ => self.reject(&pdu, RejectReason::ProtocolError),
        }
    }

    fn handle_nop_out(&mut self, pdu: Pdu) {
        if pdu.ttt() != RESERVED_TAG {
            // Only an answer to our ping may carry a TTT, and it has ITT 0xffffffff.
            return self.reject(&pdu, RejectReason::ProtocolError);
        }
        let mut p = Pdu::new(Opcode::NopIn);
        p.set_flags(0x80)
            .set_lun_field(pdu.lun_field())
            .set_itt(pdu.itt())
            .set_word20(RESERVED_TAG);
        let max = self.params.initiator_max_recv_data_segment_len as usize;
        p.set_data(pdu.data.slice(..pdu.data.len().min(max)));
        self.control_tx.push_back(p);
    }

    fn handle_scsi_command(&mut self, pdu: Pdu, now: Instant) {
        let itt = pdu.itt();
        if itt == RESERVED_TAG || self.tasks.contains_key(&itt) {
            return self.reject(&pdu, RejectReason::TaskInProgress);
        }
        self.discarding.remove(&itt);
        let flags = pdu.flags();
        let read = flags & 0x40 != 0;
        let write = flags & 0x20 != 0;
        let attr = match flags & 0x07 {
            0 => TaskAttr::Untagged,
            1 => TaskAttr::Simple,
            2 => TaskAttr::Ordered,
            3 => TaskAttr::HeadOfQueue,
            4 => TaskAttr::Aca,
            _ => TaskAttr::Simple,
        };
        let edtl = pdu.expected_data_transfer_length();
        let Some(cdb) = extended_cdb(&pdu) else {
            return self.reject(&pdu, RejectReason::ProtocolError);
        };
        let lun = decode_lun(pdu.lun_field());
        let immediate_len = pdu.data.len() as u32;
        if immediate_len > 0
            && (!write
                || !self.params.immediate_data
                || immediate_len > edtl.min(self.params.first_burst_len))
        {
            return self.reject(&pdu, RejectReason::ProtocolError);
        }
        if !pdu.final_bit() && (!write || self.params.initial_r2t) {
            return self.reject(&pdu, RejectReason::ProtocolError);
        }
        let request = ScsiRequest {
            lun,
            cdb,
            data_out: Bytes::new(),
            expected_len: edtl,
            read,
            write,
            attr,
        };
        let wants_data = write && edtl > 0;
        if wants_data && edtl > limits::TASK_DATA_BYTES_MAX {
            // Too large to buffer: answer now and drop whatever data follows.
            self.discard(itt);
            let resp = crate::scsi::check_condition(0x05, 0x24, 0x00); // ILLEGAL REQUEST, INVALID FIELD IN CDB
            return self.send_response(itt, pdu.lun_field(), &resp, 0);
        }
        let unsolicited_len = if !wants_data {
            0
        } else if self.params.initial_r2t {
            immediate_len
        } else {
            edtl.min(self.params.first_burst_len)
        };
        let mut task = Task::new(pdu.lun_field(), request, unsolicited_len, now);
        if wants_data {
            task.accept_immediate(&pdu.data);
            // With F set no unsolicited Data-Out follows the command.
            if pdu.final_bit() {
                task.end_unsolicited();
            }
        }
        self.tasks.insert(itt, task);
        self.advance_task(itt);
    }

    /// Sends R2Ts or starts execution once a task has all its data.
    fn advance_task(&mut self, itt: u32) {
        let Some(task) = self.tasks.get_mut(&itt) else {
            return;
        };
        if task.data_complete() {
            if let Some(request) = task.start() {
                self.events.push_back(Event::Execute { itt, request });
            }
            return;
        }
        let max_burst = self.params.max_burst_len;
        let max_r2t = self.params.max_outstanding_r2t;
        while let Some((offset, len)) = task.next_r2t(max_burst, max_r2t) {
            // Over the session's bound, wait for data to arrive; with nothing
            // outstanding one R2T always goes, so no task waits forever.
            if self.solicited_bytes > 0
                && self.solicited_bytes + u64::from(len) > limits::SESSION_SOLICITED_BYTES_MAX
            {
                if !self.r2t_waiting.contains(&itt) {
                    self.r2t_waiting.push_back(itt);
                }
                break;
            }
            self.solicited_bytes += u64::from(len);
            let ttt = self.next_ttt;
            self.next_ttt = self.next_ttt.wrapping_add(1);
            if self.next_ttt == RESERVED_TAG {
                self.next_ttt = 1;
            }
            let r2t_sn = task.add_r2t(ttt, offset, len);
            let mut p = Pdu::new(Opcode::ReadyToTransfer);
            p.set_flags(0x80)
                .set_lun_field(task.lun_field)
                .set_itt(itt)
                .set_word20(ttt)
                .set_word36(r2t_sn)
                .set_word40(offset)
                .set_word44(len);
            self.data_tx.push_back(p);
        }
    }

    fn handle_data_out(&mut self, pdu: Pdu, _now: Instant) {
        let itt = pdu.itt();
        if self.discarding.contains(&itt) {
            if pdu.final_bit() && pdu.ttt() == RESERVED_TAG {
                self.discarding.remove(&itt);
            }
            return;
        }
        let Some(task) = self.tasks.get_mut(&itt) else {
            return self.reject(&pdu, RejectReason::InvalidPduField);
        };
        let outcome = task.data_out(
            pdu.ttt(),
            pdu.buffer_offset(),
            pdu.data_sn(),
            &pdu.data,
            pdu.final_bit(),
        );
        match outcome {
            DataOutcome::Accepted => {
                if pdu.ttt() != RESERVED_TAG {
                    self.release_solicited(pdu.data.len() as u64);
                }
                self.advance_task(itt);
                self.wake_r2t_waiters();
            }
            DataOutcome::Protocol => {
                // ERL 0 cannot recover the sequence, but the connection can
                // live on: reject the PDU and end the command with an error.
                self.reject(&pdu, RejectReason::ProtocolError);
                if let Some(task) = self.remove_task(itt) {
                    self.discard(itt);
                    let resp = crate::scsi::check_condition(0x0b, 0x4b, 0x00); // ABORTED COMMAND, DATA PHASE ERROR
                    self.send_response(itt, task.lun_field, &resp, task.r2t_count());
                }
            }
        }
    }

    /// Removes a task and gives back the solicited bytes it still held.
    fn remove_task(&mut self, itt: u32) -> Option<Task> {
        let task = self.tasks.remove(&itt)?;
        self.release_solicited(task.solicited_outstanding());
        self.r2t_waiting.retain(|i| *i != itt);
        self.wake_r2t_waiters();
        Some(task)
    }

    fn release_solicited(&mut self, bytes: u64) {
        self.solicited_bytes = self.solicited_bytes.saturating_sub(bytes);
    }

    /// Lets tasks that waited for room under the solicited-bytes bound send
    /// their next R2Ts.
    fn wake_r2t_waiters(&mut self) {
        for _ in 0..self.r2t_waiting.len() {
            let Some(itt) = self.r2t_waiting.pop_front() else {
                break;
            };
            self.advance_task(itt);
            if self.r2t_waiting.back() == Some(&itt) {
                // Still no room: the rest wait too.
                break;
            }
        }
    }

    /// Reports the result of an [`Event::Execute`]. Results for tasks that
    /// were aborted meanwhile are dropped.
    pub fn complete(&mut self, itt: u32, resp: ScsiResponse, now: Instant) {
        let Some(task) = self.remove_task(itt) else {
            return;
        };
        self.window
            .completed(now.saturating_duration_since(task.started));
        let r2ts = task.r2t_count();
        self.send_response(itt, task.lun_field, &resp, r2ts);
    }

    /// Data-In PDUs and the status, collapsed into the last Data-In when the
    /// command succeeded (RFC 7143 §11.7.4).
    fn send_response(&mut self, itt: u32, lun_field: u64, resp: &ScsiResponse, r2ts: u32) {
        let (residual_flags, residual) = match resp.residual {
            crate::scsi::Residual::None => (0u8, 0u32),
            crate::scsi::Residual::Underflow(n) => (0x02, n),
            crate::scsi::Residual::Overflow(n) => (0x04, n),
        };
        let data = &resp.data_in;
        let collapse = resp.sense.is_none() && resp.status == ScsiStatus::Good && !data.is_empty();
        let seg = (self.params.initiator_max_recv_data_segment_len as usize).max(512);
        let burst = (self.params.max_burst_len as usize).max(seg);
        let mut data_sn = 0u32;
        let mut offset = 0usize;
        while offset < data.len() {
            // A PDU never crosses a burst boundary; the last of a burst has F.
            let burst_end = (offset / burst + 1) * burst;
            let end = (offset + seg).min(data.len()).min(burst_end);
            let last = end == data.len();
            let mut p = Pdu::new(Opcode::DataIn);
            let mut flags = if last || end == burst_end { 0x80 } else { 0 };
            if last && collapse {
                flags |= 0x01 | residual_flags;
                p.bhs[3] = resp.status as u8;
                p.set_word44(residual);
            }
            p.set_flags(flags)
                .set_lun_field(lun_field)
                .set_itt(itt)
                .set_word20(RESERVED_TAG)
                .set_word36(data_sn)
                .set_word40(offset as u32);
            p.set_data(data.slice(offset..end));
            self.data_tx.push_back(p);
            data_sn += 1;
            offset = end;
        }
        if collapse {
            return;
        }
        let mut p = Pdu::new(Opcode::ScsiResponse);
        p.set_flags(0x80 | residual_flags).set_itt(itt);
        p.bhs[2] = 0; // command completed at target
        p.bhs[3] = resp.status as u8;
        p.set_word36(data_sn + r2ts).set_word44(residual);
        if let Some(sense) = &resp.sense {
            let mut d = Vec::with_capacity(2 + sense.len());
            d.extend_from_slice(&(sense.len() as u16).to_be_bytes());
            d.extend_from_slice(sense);
            p.set_data(Bytes::from(d));
        }
        self.data_tx.push_back(p);
    }

    fn tmf_response(&mut self, itt: u32, response: TmfResponse) {
        let mut p = Pdu::new(Opcode::TaskMgmtResponse);
        p.set_flags(0x80).set_itt(itt);
        p.bhs[2] = response as u8;
        self.control_tx.push_back(p);
    }

    /// Finishes an [`Event::Reset`] with the driver's verdict.
    pub fn tmf_done(&mut self, itt: u32, response: TmfResponse, function: TmfFunction) {
        self.tmf_response(itt, response);
        if function == TmfFunction::TargetColdReset && response == TmfResponse::FunctionComplete {
            self.close();
        }
    }

    /// Aborts this connection's tasks on `lun` (all LUNs with `None`) because
    /// of a reset or task-set clear that came from elsewhere.
    pub fn abort_tasks(&mut self, lun: Option<u64>) {
        let itts: Vec<u32> = self
            .tasks
            .iter()
            .filter(|(_, t)| lun.is_none_or(|l| t.lun() == l))
            .map(|(i, _)| *i)
            .collect();
        for itt in &itts {
            self.remove_task(*itt);
            self.discard(*itt);
        }
        if !itts.is_empty() {
            self.events.push_back(Event::Abort(itts));
        }
        let keep_ahead = |p: &Pdu| {
            p.opcode() != Some(Opcode::ScsiCommand)
                || lun.is_some_and(|l| decode_lun(p.lun_field()) != l)
        };
        let drop: Vec<u32> = self
            .ahead
            .iter()
            .filter(|(_, p)| !keep_ahead(p))
            .map(|(sn, _)| *sn)
            .collect();
        for sn in drop {
            self.ahead.remove(&sn);
        }
    }

    fn handle_tmf(&mut self, pdu: Pdu) {
        let itt = pdu.itt();
        let lun = decode_lun(pdu.lun_field());
        let Some(function) = TmfFunction::from_u8(pdu.flags() & 0x7f) else {
            return self.tmf_response(itt, TmfResponse::NotSupported);
        };
        match function {
            TmfFunction::AbortTask => {
                let rtt = pdu.referenced_task_tag();
                if self.remove_task(rtt).is_some() {
                    self.discard(rtt);
                    self.events.push_back(Event::Abort(vec![rtt]));
                    self.tmf_response(itt, TmfResponse::FunctionComplete);
                } else {
                    let ref_sn = pdu.word32();
                    let queued = self
                        .ahead
                        .iter()
                        .find(|(_, p)| p.itt() == rtt)
                        .map(|(sn, _)| *sn);
                    if let Some(sn) = queued {
                        self.ahead.remove(&sn);
                        self.tmf_response(itt, TmfResponse::FunctionComplete);
                    } else if sn_le(self.exp_cmd_sn, ref_sn) && sn_le(ref_sn, self.max_cmd_sn) {
                        // Not received yet: it counts as aborted when it arrives.
                        self.tmf_response(itt, TmfResponse::FunctionComplete);
                    } else {
                        self.tmf_response(itt, TmfResponse::TaskDoesNotExist);
                    }
                }
            }
            TmfFunction::AbortTaskSet => {
                self.abort_tasks(Some(lun));
                self.tmf_response(itt, TmfResponse::FunctionComplete);
            }
            TmfFunction::ClearTaskSet
            | TmfFunction::LogicalUnitReset
            | TmfFunction::TargetWarmReset
            | TmfFunction::TargetColdReset => {
                let scope = matches!(
                    function,
                    TmfFunction::ClearTaskSet | TmfFunction::LogicalUnitReset
                )
                .then_some(lun);
                self.abort_tasks(scope);
                self.events.push_back(Event::Reset { itt, function, lun });
            }
            TmfFunction::ItNexusReset => {
                self.abort_tasks(None);
                self.tmf_response(itt, TmfResponse::FunctionComplete);
            }
            TmfFunction::TaskReassign => {
                self.tmf_response(itt, TmfResponse::AllegianceReassignmentNotSupported)
            }
            TmfFunction::ClearAca
            | TmfFunction::QueryTask
            | TmfFunction::QueryTaskSet
            | TmfFunction::QueryAsyncEvent => self.tmf_response(itt, TmfResponse::NotSupported),
        }
    }

    fn handle_text(&mut self, pdu: Pdu) {
        let itt = pdu.itt();
        let cont = pdu.flags() & 0x40 != 0;
        if pdu.ttt() != RESERVED_TAG && pdu.ttt() != self.text_ttt {
            return self.reject(&pdu, RejectReason::InvalidPduField);
        }
        // An empty request with our TTT asks for the next piece of a long answer.
        if self.text_out.pending() && pdu.ttt() == self.text_ttt && pdu.data.is_empty() {
            return self.send_text_piece(itt, pdu.lun_field());
        }
        let whole = match self.text_in.push(&pdu.data, cont) {
            Ok(Some(t)) => t,
            Ok(None) => {
                let ttt = self.alloc_ttt();
                self.text_ttt = ttt;
                let mut p = Pdu::new(Opcode::TextResponse);
                p.set_flags(0)
                    .set_lun_field(pdu.lun_field())
                    .set_itt(itt)
                    .set_word20(ttt);
                self.control_tx.push_back(p);
                return;
            }
            Err(_) => return self.reject(&pdu, RejectReason::ProtocolError),
        };
        let pairs = match text::parse(&whole) {
            Ok(p) => p,
            Err(_) => return self.reject(&pdu, RejectReason::ProtocolError),
        };
        let mut out: Vec<(String, String)> = Vec::new();
        let mut rest = Vec::new();
        for (k, v) in pairs {
            if k == "SendTargets" {
                out.extend(self.send_targets(&v));
            } else {
                rest.push((k, v));
            }
        }
        if let Some(neg) = self.text_negotiator.as_mut() {
            match neg.respond(&rest, Phase::FullFeature) {
                Ok(keys) => {
                    out.extend(keys);
                    self.params.initiator_max_recv_data_segment_len =
                        neg.params.initiator_max_recv_data_segment_len;
                }
                Err(_) => return self.reject(&pdu, RejectReason::ProtocolError),
            }
        }
        let body = text::encode(&out);
        if body.len() > limits::SEND_TARGETS_BYTES_MAX {
            return self.reject(&pdu, RejectReason::OutOfResources);
        }
        self.text_out.start(body);
        self.text_ttt = self.alloc_ttt();
        self.send_text_piece(itt, pdu.lun_field());
    }

    fn send_text_piece(&mut self, itt: u32, lun_field: u64) {
        let max = self.params.initiator_max_recv_data_segment_len as usize;
        let (piece, more) = self.text_out.next_piece(max);
        let mut p = Pdu::new(Opcode::TextResponse);
        if more {
            p.set_flags(0x40).set_word20(self.text_ttt);
        } else {
            p.set_flags(0x80).set_word20(RESERVED_TAG);
            self.text_ttt = RESERVED_TAG;
        }
        p.set_lun_field(lun_field).set_itt(itt);
        p.set_data(piece);
        self.control_tx.push_back(p);
    }

    fn send_targets(&self, which: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (name, portals) in self.cfg.directory.send_targets(&self.initiator_name) {
            let wanted = match self.session_type {
                SessionType::Discovery => which == "All" || which == name,
                // A normal session learns only about its own target.
                SessionType::Normal => {
                    (which.is_empty() || which == name) && name == self.target_name
                }
            };
            if wanted {
                out.push(("TargetName".to_string(), name));
                out.extend(
                    portals
                        .into_iter()
                        .map(|a| ("TargetAddress".to_string(), a)),
                );
            }
        }
        out
    }

    fn handle_logout(&mut self, pdu: Pdu) {
        let reason = pdu.flags() & 0x7f;
        let mut p = Pdu::new(Opcode::LogoutResponse);
        p.set_flags(0x80).set_itt(pdu.itt());
        // 0: close session, 1: close connection; 2 (recovery) needs ERL 2.
        p.bhs[2] = match reason {
            0 | 1 => 0,
            2 => 2,
            _ => {
                return self.reject(&pdu, RejectReason::InvalidPduField);
            }
        };
        self.control_tx.push_back(p);
        if reason != 2 {
            self.close();
        }
    }
}

/// The CDB of a SCSI Command PDU, with an extended-CDB AHS appended (RFC 7143 §11.3.6).
fn extended_cdb(pdu: &Pdu) -> Option<Bytes> {
    let mut cdb = pdu.bhs[32..48].to_vec();
    let mut ahs = &pdu.ahs[..];
    while ahs.len() >= 4 {
        let len = usize::from(u16::from_be_bytes([ahs[0], ahs[1]]));
        let kind = ahs[2];
        let body = ahs.get(4..4 + len.saturating_sub(1))?;
        match kind {
            // Extended CDB: the bytes beyond the first 16 (its length counts a reserved byte).
            1 => cdb.extend_from_slice(body),
            // Expected bidirectional read length: bidirectional commands are not supported.
            2 => {}
            _ => return None,
        }
        let padded = (3 + len).div_ceil(4) * 4;
        ahs = ahs.get(padded.min(ahs.len())..)?;
        if padded == 0 {
            break;
        }
    }
    Some(Bytes::from(cdb))
}

/// Decodes the 8-byte LUN field (SAM-5 §4.7): peripheral and flat addressing.
/// Other forms map to a number no LU has.
pub fn decode_lun(field: u64) -> u64 {
    let b = field.to_be_bytes();
    let rest_zero = b[2..].iter().all(|&x| x == 0);
    match b[0] >> 6 {
        0b00 if b[0] == 0 && rest_zero => u64::from(b[1]),
        0b01 if rest_zero => (u64::from(b[0] & 0x3f) << 8) | u64::from(b[1]),
        _ => u64::MAX,
    }
}

/// Encodes a LUN number into the 8-byte field (peripheral below 256, else flat).
pub fn encode_lun(lun: u64) -> u64 {
    if lun < 256 {
        lun << 48
    } else {
        (0x4000 | (lun & 0x3fff)) << 48
    }
}
