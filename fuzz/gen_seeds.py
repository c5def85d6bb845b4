#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets into fuzz/seeds/<target>/.

The seeds are committed; rerun this only to change them. Input formats are
described at the top of each fuzz_targets/*.rs file.
"""
import hashlib
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
TARGET = b"iqn.2024-01.test:target"
INITIATOR = b"iqn.2024-01.test:init"


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def text(*pairs):
    return b"".join(k + b"=" + v + b"\0" for k, v in pairs)


def pdu(op, flags=0, itt=0, word20=0, cmd_sn=0, exp_stat_sn=0, lun=0, tail=b"",
        data=b"", ahs=b"", byte2=0, byte3=0, hd=False, dd=False):
    """One PDU on the wire. `tail` fills bytes 32..48 (the CDB of a command)."""
    bhs = bytearray(48)
    bhs[0] = op
    bhs[1] = flags
    bhs[2] = byte2
    bhs[3] = byte3
    bhs[4] = len(ahs) // 4
    bhs[5:8] = len(data).to_bytes(3, "big")
    bhs[8:16] = lun.to_bytes(8, "big")
    struct.pack_into(">IIII", bhs, 16, itt, word20, cmd_sn, exp_stat_sn)
    bhs[32:32 + len(tail)] = tail
    out = bytes(bhs) + ahs
    if hd:
        out += struct.pack("<I", crc32c(out))
    pad = b"\0" * ((4 - len(data) % 4) % 4)
    out += data + pad
    if dd and data:
        out += struct.pack("<I", crc32c(data + pad))
    return out


def login_req(flags, keys, cmd_sn=1, itt=0, isid=b"\x80\0\0\0\0\x01"):
    p = bytearray(pdu(0x43, flags, itt=itt, cmd_sn=cmd_sn, data=keys))
    p[8:14] = isid
    return bytes(p)


FIRST = text((b"InitiatorName", INITIATOR), (b"TargetName", TARGET), (b"AuthMethod", b"None"))
OPERATIONAL = text(
    (b"HeaderDigest", b"CRC32C,None"), (b"DataDigest", b"None"),
    (b"MaxRecvDataSegmentLength", b"65536"), (b"MaxBurstLength", b"262144"),
    (b"FirstBurstLength", b"65536"), (b"InitialR2T", b"No"), (b"ImmediateData", b"Yes"),
    (b"MaxOutstandingR2T", b"1"), (b"ErrorRecoveryLevel", b"0"),
    (b"DefaultTime2Wait", b"2"), (b"DefaultTime2Retain", b"0"),
    (b"DataPDUInOrder", b"Yes"), (b"DataSequenceInOrder", b"Yes"),
    (b"MaxConnections", b"1"), (b"IFMarker", b"No"), (b"OFMarker", b"No"),
    (b"iSCSIProtocolLevel", b"1"), (b"X-com.example.Foo", b"0x1f"),
)
# Direct to full feature: plain text, no digests, immediate data, no initial R2T.
LOGIN_ONE_STEP = text(
    (b"InitiatorName", INITIATOR), (b"TargetName", TARGET),
    (b"HeaderDigest", b"None"), (b"DataDigest", b"None"),
    (b"MaxRecvDataSegmentLength", b"8192"), (b"MaxBurstLength", b"262144"),
    (b"FirstBurstLength", b"65536"), (b"InitialR2T", b"No"), (b"ImmediateData", b"Yes"),
)
INQUIRY = bytes.fromhex("120000006000")
READ10 = bytes.fromhex("28000000000000000800")
WRITE10_1 = bytes.fromhex("2a000000001000000100")
WRITE10_16 = bytes.fromhex("2a000000002000001000")
WRITE16 = bytes.fromhex("8a000000000000000010000000010000")
PR_OUT_REGISTER = bytes.fromhex("5f000000000000001800")
PR_OUT_RESERVE = bytes.fromhex("5f010300000000001800")
PR_IN_READ_KEYS = bytes.fromhex("5e000000000000010000")
PR_IN_READ_RES = bytes.fromhex("5e010000000000010000")
REPORT_LUNS = bytes.fromhex("a000000000000000100000")
READ_CAP16 = bytes.fromhex("9e100000000000000000000000200000")
MODE_SENSE6 = bytes.fromhex("1a003f00ff00")
TUR = bytes(6)
UNMAP = bytes.fromhex("42000000000000001800")
COMPARE_AND_WRITE = bytes.fromhex("89000000000000000030000000010000")
REPORT_OPCODES = bytes.fromhex("a30c0000000000001000000000")[:12]
WRITE_SAME16 = bytes.fromhex("93080000000000000040000000080000")


def pr_params(key, sa_key, flags=0):
    return struct.pack(">QQ", key, sa_key) + bytes(4) + bytes([flags, 0, 0, 0])


def write(target, name, data):
    d = os.path.join(HERE, "seeds", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def pdu_decode():
    # Selector: bits 0-1 digests, bits 2-4 max segment (7 = 8192), bits 5-7 chunk.
    login = login_req(0x81, FIRST)
    read10 = pdu(0x01, 0xC1, itt=3, word20=4096, cmd_sn=1, tail=READ10)
    nop = pdu(0x40, 0x80, itt=2, word20=0xFFFFFFFF, cmd_sn=1, data=b"ping")
    write10 = pdu(0x01, 0xA1, itt=4, word20=512, cmd_sn=2, tail=WRITE10_1, data=bytes(range(256)) * 2)
    ext_cdb = pdu(0x01, 0xC1, itt=5, word20=512, cmd_sn=3, tail=READ10,
                  ahs=struct.pack(">HBB", 5, 1, 0) + bytes(4))
    sel = 7 << 2
    write("pdu_decode", "login", bytes([sel]) + login)
    write("pdu_decode", "read10", bytes([sel]) + read10)
    write("pdu_decode", "nop_out", bytes([sel]) + nop)
    write("pdu_decode", "stream", bytes([sel | 0x20]) + login + read10 + nop + write10 + ext_cdb)
    for h, d in [(True, False), (False, True), (True, True)]:
        s = sel | int(h) | int(d) << 1 | 0x60
        wire = b"".join([
            login_req(0x81, FIRST) if not (h or d) else pdu(0x43, 0x81, data=FIRST, hd=h, dd=d),
            pdu(0x01, 0xC1, itt=3, word20=4096, cmd_sn=1, tail=READ10, hd=h, dd=d),
            pdu(0x40, 0x80, itt=2, word20=0xFFFFFFFF, cmd_sn=1, data=b"ping", hd=h, dd=d),
            pdu(0x01, 0xA1, itt=4, word20=512, cmd_sn=2, tail=WRITE10_1, data=bytes(512), hd=h, dd=d),
        ])
        write("pdu_decode", f"digests_h{int(h)}_d{int(d)}", bytes([s]) + wire)
    # Too long for the limit (max segment 64).
    write("pdu_decode", "too_long", bytes([4 << 2]) + write10)


def chap_response(secret, ident=7, challenge=b"\x55" * 16):
    return b"0x" + hashlib.md5(bytes([ident]) + secret + challenge).hexdigest().encode()


def login_text():
    sep = b"\xff"

    def chunk(flags, data, odd=0):
        return bytes([flags, odd]) + data

    # Login mode: selector bit 7 clear; bits 0-1 target CHAP.
    write("login_text", "plain", bytes([0]) + sep.join([
        chunk(0x81, FIRST), chunk(0x87, OPERATIONAL)]))
    write("login_text", "straight_to_ffp", bytes([0]) + chunk(0x87, LOGIN_ONE_STEP))
    write("login_text", "discovery", bytes([0]) + sep.join([
        chunk(0x81, text((b"InitiatorName", INITIATOR), (b"SessionType", b"Discovery"),
                         (b"AuthMethod", b"None"))),
        chunk(0x87, text((b"MaxRecvDataSegmentLength", b"32768"), (b"HeaderDigest", b"None"),
                         (b"MaxBurstLength", b"65536")))]))
    first_chap = text((b"InitiatorName", INITIATOR), (b"TargetName", TARGET),
                      (b"AuthMethod", b"CHAP,None"))
    resp = chap_response(b"secretsecret")
    write("login_text", "chap", bytes([1]) + sep.join([
        chunk(0x01, first_chap),
        chunk(0x01, text((b"CHAP_A", b"5"))),
        chunk(0x81, text((b"CHAP_N", b"u"), (b"CHAP_R", resp))),
        chunk(0x87, OPERATIONAL)]))
    write("login_text", "chap_mutual", bytes([2]) + sep.join([
        chunk(0x01, first_chap),
        chunk(0x01, text((b"CHAP_A", b"7,5"))),
        chunk(0x81, text((b"CHAP_N", b"u"), (b"CHAP_R", resp), (b"CHAP_I", b"9"),
                         (b"CHAP_C", b"0bAQIDBAUGBwg="))),
        chunk(0x87, OPERATIONAL)]))
    whole = FIRST
    write("login_text", "continued", bytes([0]) + sep.join([
        chunk(0x41, whole[:10]), chunk(0x81, whole[10:]), chunk(0x87, OPERATIONAL)]))
    write("login_text", "text_only", bytes([0]) + sep.join([
        text((b"MaxBurstLength", b"0x10000"), (b"CHAP_C", b"0x0a0b0c"), (b"K", b"0bAQI=")),
        b"262144", b"0xdeadbeef", b"0bAQID"]))

    # Connection mode: selector bit 7 set; then k, k control bytes, PDU stream.
    login = login_req(0x87, LOGIN_ONE_STEP, cmd_sn=1)
    nop = pdu(0x00, 0x80, itt=2, word20=0xFFFFFFFF, cmd_sn=1, data=b"ping")
    read10 = pdu(0x01, 0xC1, itt=3, word20=4096, cmd_sn=2, tail=READ10)
    write_imm = pdu(0x01, 0xA1, itt=4, word20=512, cmd_sn=3, tail=WRITE10_1, data=bytes(512))
    # 8 KiB write with 512 bytes immediate, F set: an R2T (TTT 1) for the rest.
    write_r2t = pdu(0x01, 0xA1, itt=5, word20=8192, cmd_sn=4, tail=WRITE10_16, data=bytes(512))
    data_out = bytearray(pdu(0x05, 0x80, itt=5, word20=1, data=bytes(7680)))
    struct.pack_into(">III", data_out, 36, 0, 512, 0)
    tmf = pdu(0x42, 0x81, itt=6, word20=3, cmd_sn=5)
    text_req = pdu(0x04, 0x80, itt=7, word20=0xFFFFFFFF, cmd_sn=5,
                   data=text((b"SendTargets", b""), (b"MaxRecvDataSegmentLength", b"4096")))
    logout = pdu(0x06, 0x80, itt=8, cmd_sn=6)
    stream = login + nop + read10 + write_imm + write_r2t + bytes(data_out) + tmf + text_req + logout
    write("login_text", "conn_session", bytes([0x80, 3, 0x00, 0x01, 0x03]) + stream)
    write("login_text", "conn_timeouts", bytes([0x80, 4, 0x00, 0x14, 0x1C, 0x9F]) + login + nop + read10 + tmf)
    disc = login_req(0x87, text((b"InitiatorName", INITIATOR), (b"SessionType", b"Discovery")))
    send_all = pdu(0x04, 0x80, itt=2, word20=0xFFFFFFFF, cmd_sn=1,
                   data=text((b"SendTargets", b"All")))
    write("login_text", "conn_discovery", bytes([0x80, 0]) + disc + send_all
          + pdu(0x06, 0x80, itt=3, cmd_sn=2))


def cdb_parse():
    def rec(cdb, expected=0, dout=b"", lun=0, who=0, flags=0):
        h0 = lun | who << 2 | flags
        return bytes([h0, len(cdb)]) + struct.pack(">HH", expected, len(dout)) + cdb + dout

    write("cdb_parse", "inquiry", rec(INQUIRY, 96))
    write("cdb_parse", "inquiry_vpd83", rec(bytes.fromhex("120183010000"), 256))
    write("cdb_parse", "read10", rec(READ10, 4096))
    write("cdb_parse", "write16", rec(WRITE16, 512, bytes(range(256)) * 2))
    write("cdb_parse", "pr_out_register", rec(PR_OUT_REGISTER, 24, pr_params(0, 0x1122334455667788)))
    write("cdb_parse", "pr_sequence", b"".join([
        rec(PR_OUT_REGISTER, 24, pr_params(0, 0x1111)),
        rec(PR_OUT_REGISTER, 24, pr_params(0, 0x2222), who=1),
        rec(PR_OUT_RESERVE, 24, pr_params(0x1111, 0)),
        rec(WRITE10_1, 512, bytes(512), who=1),
        rec(PR_IN_READ_KEYS, 256),
        rec(PR_IN_READ_RES, 256, who=1),
        rec(bytes.fromhex("5f040300000000001800"), 24, pr_params(0x2222, 0x1111), who=1),
        rec(TUR, 0),
    ]))
    write("cdb_parse", "misc", b"".join([
        rec(TUR), rec(REPORT_LUNS, 16, lun=2), rec(READ_CAP16, 32, lun=1),
        rec(MODE_SENSE6, 255), rec(REPORT_OPCODES, 4096),
        rec(UNMAP, 24, struct.pack(">HH4xQI4x", 22, 16, 8, 8)),
        rec(COMPARE_AND_WRITE, 1024, bytes(1024)),
        rec(WRITE_SAME16, 512, b"\xab" * 512),
        rec(bytes.fromhex("03000000fc00"), 252, flags=0x10),
    ]))


pdu_decode()
login_text()
cdb_parse()
