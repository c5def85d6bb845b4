//! One SCSI task while its Data-Out arrives: which bytes came, which R2Ts
//! are outstanding, and when it is ready to run.

use crate::scsi::ScsiRequest;
use bytes::{Bytes, BytesMut};
use std::time::Instant;

use crate::pdu::RESERVED_TAG;

#[derive(Debug)]
struct R2t {
    ttt: u32,
    offset: u32,
    len: u32,
    received: u32,
    next_data_sn: u32,
}

#[derive(Debug)]
pub struct Task {
    pub lun_field: u64,
    pub started: Instant,
    request: Option<ScsiRequest>,
    expected: u32,
    buf: BytesMut,
    /// Bytes received so far (Data-Out is in order: DataPDUInOrder=Yes).
    received: u32,
    /// Bytes the initiator may send without an R2T.
    unsolicited_len: u32,
    unsolicited_open: bool,
    unsolicited_data_sn: u32,
    /// Offset up to which R2Ts have been sent.
    solicited_to: u32,
    r2ts: Vec<R2t>,
    r2t_sn: u32,
}

#[derive(Debug, PartialEq, Eq)]
pub enum DataOutcome {
    Accepted,
    /// A Data-Out that breaks the sequence: wrong TTT, offset or length.
    Protocol,
}

impl Task {
    pub fn new(lun_field: u64, request: ScsiRequest, unsolicited_len: u32, now: Instant) -> Self {
        let expected = if request.write {
            request.expected_len
        } else {
            0
        };
        // Room for what may come unasked now; for the rest when it is asked
        // for (R2T), so memory follows what the session has solicited.
        Task {
            lun_field,
            started: now,
            request: Some(request),
            expected,
            buf: BytesMut::with_capacity(unsolicited_len as usize),
            received: 0,
            unsolicited_len,
            unsolicited_open: unsolicited_len > 0,
            unsolicited_data_sn: 0,
            solicited_to: 0,
            r2ts: Vec::new(),
            r2t_sn: 0,
        }
    }

    pub fn lun(&self) -> u64 {
        self.request.as_ref().map(|r| r.lun).unwrap_or(u64::MAX)
    }

    fn put(&mut self, offset: u32, data: &[u8]) -> bool {
        let Some(end) = offset.checked_add(data.len() as u32) else {
            return false;
        };
        // In-order data only: each PDU continues where the last one ended.
        if offset != self.received || end > self.expected {
            return false;
        }
        self.buf.extend_from_slice(data);
        self.received = end;
        true
    }

    pub fn accept_immediate(&mut self, data: &[u8]) {
        // The caller checked the length against FirstBurstLength and EDTL.
        let ok = self.put(0, data);
        debug_assert!(ok);
        if self.received >= self.unsolicited_len {
            self.unsolicited_open = false;
        }
        self.solicited_to = self.received.max(if self.unsolicited_open {
            self.unsolicited_len
        } else {
            0
        });
    }

    /// The command's F bit: no unsolicited Data-Out will follow.
    pub fn end_unsolicited(&mut self) {
        self.unsolicited_open = false;
        self.solicited_to = self.received;
    }

    pub fn data_complete(&self) -> bool {
        self.received >= self.expected
    }

    /// Takes the request (with its data) to run; `None` if already taken.
    pub fn start(&mut self) -> Option<ScsiRequest> {
        let mut req = self.request.take()?;
        req.data_out = std::mem::take(&mut self.buf).freeze();
        if req.data_out.is_empty() {
            req.data_out = Bytes::new();
        }
        Some(req)
    }

    /// Whether the task runs now (its request was taken).
    pub fn running(&self) -> bool {
        self.request.is_none()
    }

    pub fn r2t_count(&self) -> u32 {
        self.r2t_sn
    }

    /// The next range to solicit, if R2Ts may be sent now.
    pub fn next_r2t(&self, max_burst: u32, max_outstanding: u32) -> Option<(u32, u32)> {
        if self.unsolicited_open || self.solicited_to >= self.expected {
            return None;
        }
        if self.r2ts.len() as u32 >= max_outstanding.max(1) {
            return None;
        }
        let len = (self.expected - self.solicited_to).min(max_burst.max(512));
        Some((self.solicited_to, len))
    }

    /// Solicited bytes not yet received.
    pub fn solicited_outstanding(&self) -> u64 {
        self.r2ts
            .iter()
            .map(|r| u64::from(r.len - r.received))
            .sum()
    }

    pub fn add_r2t(&mut self, ttt: u32, offset: u32, len: u32) -> u32 {
        self.buf.reserve(len as usize);
        self.r2ts.push(R2t {
            ttt,
            offset,
            len,
            received: 0,
            next_data_sn: 0,
        });
        self.solicited_to = offset + len;
        let sn = self.r2t_sn;
        self.r2t_sn += 1;
        sn
    }

    /// One Data-Out PDU.
    pub fn data_out(
        &mut self,
        ttt: u32,
        offset: u32,
        data_sn: u32,
        data: &[u8],
        final_bit: bool,
    ) -> DataOutcome {
        if self.running() {
            return DataOutcome::Protocol;
        }
        if ttt == RESERVED_TAG {
            let Some(end) = offset.checked_add(data.len() as u32) else {
                return DataOutcome::Protocol;
            };
            if !self.unsolicited_open
                || end > self.unsolicited_len
                || data_sn != self.unsolicited_data_sn
            {
                return DataOutcome::Protocol;
            }
            if !self.put(offset, data) {
                return DataOutcome::Protocol;
            }
            self.unsolicited_data_sn += 1;
            if final_bit || self.received >= self.unsolicited_len {
                self.unsolicited_open = false;
                self.solicited_to = self.received;
            }
            return DataOutcome::Accepted;
        }
        let Some(i) = self.r2ts.iter().position(|r| r.ttt == ttt) else {
            return DataOutcome::Protocol;
        };
        let r = &self.r2ts[i];
        let end = offset as u64 + data.len() as u64;
        if offset < r.offset
            || end > u64::from(r.offset) + u64::from(r.len)
            || data_sn != r.next_data_sn
        {
            return DataOutcome::Protocol;
        }
        if !self.put(offset, data) {
            return DataOutcome::Protocol;
        }
        let r = &mut self.r2ts[i];
        r.received += data.len() as u32;
        r.next_data_sn += 1;
        if r.received >= r.len {
            self.r2ts.remove(i);
        } else if final_bit {
            // F before the burst is complete: the sequence is broken.
            return DataOutcome::Protocol;
        }
        DataOutcome::Accepted
    }
}
