#!/usr/bin/env python3
"""A TCP proxy in front of an iSCSI target that spoils digests on purpose.

    digest-corrupter.py LISTEN_PORT TARGET_PORT [--what data|header] [--every N]

Listens on 127.0.0.1:LISTEN_PORT and relays each connection to
127.0.0.1:TARGET_PORT. Initiator-to-target bytes pass untouched. In the
target-to-initiator stream it follows the PDUs, learns from the login
response whether HeaderDigest/DataDigest were negotiated to CRC32C, and once
in full feature phase flips one bit in the data digest of every N-th Data-In
PDU (--what data, default) or in the header digest of every N-th PDU
(--what header): what a target that computes its digests wrong looks like.
It never touches a PDU without that digest, so without digests it is a plain
relay. vm-tests/run.sh starts it for WEFT_VM_SABOTAGE=corrupt-data-digest and
corrupt-header-digest (see docs/testing.md). Loopback only; stdlib only.
"""
import argparse
import socket
import sys
import threading


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def pump_plain(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def pump_target(src, dst, what, every, stats):
    """Target -> initiator, PDU by PDU."""
    hd = dd = False  # negotiated digests
    full_feature = False
    count = 0
    try:
        while True:
            bhs = bytearray(recv_exact(src, 48))
            opcode = bhs[0] & 0x3F
            ahs = bhs[4] * 4
            dlen = int.from_bytes(bhs[5:8], "big")
            rest = bytearray(recv_exact(src, ahs))
            hdig = bytearray(recv_exact(src, 4)) if (full_feature and hd) else bytearray()
            padded = (dlen + 3) & ~3
            data = recv_exact(src, padded) if padded else b""
            ddig = bytearray(recv_exact(src, 4)) if (full_feature and dd and dlen) else bytearray()
            if opcode == 0x23:  # login response: learn the digests, spot the end
                text = data[:dlen].decode("ascii", "replace")
                for kv in text.split("\0"):
                    if kv == "HeaderDigest=CRC32C":
                        hd = True
                    elif kv == "DataDigest=CRC32C":
                        dd = True
                transit = bhs[1] & 0x80
                nsg = bhs[1] & 0x03
                if transit and nsg == 3:
                    full_feature = True
            elif full_feature:
                if what == "header" and hdig:
                    count += 1
                    if count % every == 0:
                        hdig[0] ^= 0x01
                        stats["spoiled"] += 1
                elif what == "data" and opcode == 0x25 and ddig:
                    count += 1
                    if count % every == 0:
                        ddig[0] ^= 0x01
                        stats["spoiled"] += 1
            dst.sendall(bytes(bhs) + bytes(rest) + bytes(hdig) + data + bytes(ddig))
    except (EOFError, OSError):
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("listen_port", type=int)
    ap.add_argument("target_port", type=int)
    ap.add_argument("--what", choices=["data", "header"], default="data")
    ap.add_argument("--every", type=int, default=1)
    args = ap.parse_args()
    stats = {"spoiled": 0}
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", args.listen_port))
    ls.listen(16)
    print(f"digest-corrupter: 127.0.0.1:{args.listen_port} -> 127.0.0.1:{args.target_port}, "
          f"spoiling the {args.what} digest of every {args.every}. PDU", flush=True)
    while True:
        c, addr = ls.accept()
        try:
            t = socket.create_connection(("127.0.0.1", args.target_port))
        except OSError as e:
            print(f"digest-corrupter: cannot reach the target: {e}", flush=True)
            c.close()
            continue
        for s in (c, t):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        print(f"digest-corrupter: connection from {addr[0]}:{addr[1]} "
              f"({stats['spoiled']} digests spoiled so far)", flush=True)
        threading.Thread(target=pump_plain, args=(c, t), daemon=True).start()
        threading.Thread(target=pump_target, args=(t, c, args.what, args.every, stats),
                         daemon=True).start()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
