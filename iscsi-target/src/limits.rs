//! Every bound of the iSCSI layer, in one place, with its unit in its name.

/// Largest data segment accepted during login (RFC 7143 §6.1: 8192 bytes).
pub const LOGIN_DATA_SEGMENT_BYTES_MAX: usize = 8192;
/// Largest login or text negotiation, summed over `C`-continued PDUs.
pub const TEXT_NEGOTIATION_BYTES_MAX: usize = 64 * 1024;
/// Longest key name (RFC 7143 §6.1: 63 bytes).
pub const KEY_NAME_BYTES_MAX: usize = 63;
/// Longest value of an ordinary key (RFC 7143 §6.1: 255 bytes).
pub const KEY_VALUE_BYTES_MAX: usize = 255;
/// Longest value of a CHAP key, whose binary values may be large.
pub const CHAP_VALUE_BYTES_MAX: usize = 8192;
/// Login request/response exchanges before the target gives up.
pub const LOGIN_EXCHANGES_MAX: u32 = 64;
/// Time a login may take from the first PDU to full feature phase.
pub const LOGIN_TIMEOUT_MS: u64 = 15_000;

/// Our MaxRecvDataSegmentLength: large, for open-iscsi's big writes.
pub const MAX_RECV_DATA_SEGMENT_BYTES: u32 = 256 * 1024;
/// Our MaxBurstLength offer.
pub const MAX_BURST_BYTES: u32 = 1024 * 1024;
/// Our FirstBurstLength offer.
pub const FIRST_BURST_BYTES: u32 = 256 * 1024;
/// Our MaxOutstandingR2T offer.
pub const MAX_OUTSTANDING_R2T: u32 = 8;
/// Largest Expected Data Transfer Length buffered for one command; must be
/// at least the SCSI layer's maximum transfer length.
pub const TASK_DATA_BYTES_MAX: u32 = 16 * 1024 * 1024;

/// Command window (MaxCmdSN - ExpCmdSN + 1) bounds per session; the window
/// adapts between them.
pub const CMD_WINDOW_MIN: u32 = 4;
pub const CMD_WINDOW_MAX: u32 = 128;
pub const CMD_WINDOW_INITIAL: u32 = 32;
/// Completion latency above which the window shrinks.
pub const CMD_LATENCY_TARGET_MS: u64 = 50;
/// Commands received ahead of ExpCmdSN (a CmdSN gap) that are kept waiting.
pub const CMDS_AHEAD_MAX: usize = CMD_WINDOW_MAX as usize;

/// Idle time after which the target sends a NOP-In ping.
pub const NOP_IN_INTERVAL_MS: u64 = 5_000;
/// Time the initiator has to answer a NOP-In ping before the connection drops.
pub const NOP_IN_TIMEOUT_MS: u64 = 30_000;

/// PDUs queued for sending before the driver stops reading new commands.
pub const TX_QUEUE_PDUS_MAX: usize = 4096;
/// Sessions the gateway holds at once.
pub const SESSIONS_MAX: usize = 1024;
/// SendTargets text response bytes.
pub const SEND_TARGETS_BYTES_MAX: usize = 64 * 1024;
/// ITTs of ended commands whose late Data-Out is silently dropped.
pub const DISCARDED_TASKS_MAX: usize = 1024;
/// Data-Out bytes one session may have asked for (R2T) and not yet
/// received; with FirstBurstLength × the command window it bounds what one
/// session makes the gateway buffer.
pub const SESSION_SOLICITED_BYTES_MAX: u64 = 32 * 1024 * 1024;
