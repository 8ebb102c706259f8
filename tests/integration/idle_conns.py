"""Many idle subscribed connections from one process, and the server's RSS.

open_idle() opens `n` connections to a moonwire server with raw non-blocking
sockets and one selector (no library, no thread per connection), each one
subscribed to a topic and then left idle:

  ws   GET /ws upgrade, one masked subscribe frame, wait for its ack
  sse  GET /sse?topics=T, wait for the id-only block that follows the
       subscription

rss_kib(pid) reads a process's resident set (VmRSS) from /proc.

Run as a script it measures bytes of server RSS per idle connection:

  MOONWIRE_BIN=build/core/moonwire python3 idle_conns.py [--kind ws|sse]
      [--counts 1000,5000,18000] [--workers 1] [--config FILE]

Every wait is bounded (a deadline per batch); nothing sleeps to synchronise.
"""
import argparse
import base64
import json
import os
import selectors
import socket
import struct
import sys
import time

import mwtest

WS_KEY = base64.b64encode(b"0123456789abcdef").decode()
INFLIGHT = 256  # handshakes in progress at once (the listen backlog is larger)


def rss_kib(pid):
    """The VmRSS of process `pid` in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def _ws_frame(payload):
    """One masked final text frame (client to server)."""
    mask = b"\x01\x02\x03\x04"
    n = len(payload)
    head = bytes([0x81])
    if n < 126:
        head += bytes([0x80 | n])
    else:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + body


class _Conn:
    __slots__ = ("sock", "kind", "state", "buf", "out")

    def __init__(self, sock, kind, request):
        self.sock = sock
        self.kind = kind
        self.state = "connecting"
        self.buf = b""
        self.out = request


def _request(kind, port, topic):
    if kind == "ws":
        return (f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n"
                "\r\n").encode()
    return (f"GET /sse?topics={topic} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Accept: text/event-stream\r\n\r\n").encode()


def _progress(c, subscribe):
    """Advances one connection on the bytes it has; returns True when done."""
    if c.state == "head":
        end = c.buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        status = c.buf.split(b"\r\n", 1)[0]
        want = b" 101 " if c.kind == "ws" else b" 200 "
        if want not in status + b" ":
            raise AssertionError(f"{c.kind} handshake refused: {c.buf[:200]!r}")
        c.buf = c.buf[end + 4:]
        if c.kind == "ws":
            c.out = subscribe
            c.state = "ack"
        else:
            c.state = "ready"
    if c.state == "ack":
        # Server frames are unmasked; the ack is small (2-byte header).
        while len(c.buf) >= 2:
            n = c.buf[1] & 0x7f
            hl = 2
            if n == 126:
                if len(c.buf) < 4:
                    return False
                n = struct.unpack("!H", c.buf[2:4])[0]
                hl = 4
            if len(c.buf) < hl + n:
                return False
            msg = c.buf[hl:hl + n]
            c.buf = c.buf[hl + n:]
            if b'"ack"' in msg:
                return True
            if b'"error"' in msg:
                raise AssertionError(f"subscribe refused: {msg!r}")
        return False
    if c.state == "ready":
        return b"id:" in c.buf
    return False


def open_idle(port, n, kind="ws", topic="idle", timeout=120.0):
    """Opens n idle subscribed connections; returns their sockets (the caller
    closes them). Raises AssertionError past `timeout` seconds."""
    subscribe = _ws_frame(json.dumps({"type": "subscribe", "id": "s",
                                      "topics": [topic]}).encode())
    sel = selectors.DefaultSelector()
    done = []
    started = 0
    active = 0
    deadline = time.monotonic() + timeout
    try:
        while len(done) < n:
            while active < INFLIGHT and started < n:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", port))
                c = _Conn(s, kind, _request(kind, port, topic))
                sel.register(s, selectors.EVENT_WRITE, c)
                started += 1
                active += 1
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"opened only {len(done)} of {n} {kind} "
                                     f"connections within {timeout:.0f} s")
            for key, ev in sel.select(min(left, 1.0)):
                c = key.data
                if c.state == "connecting":
                    err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise AssertionError(f"connect failed: {os.strerror(err)}")
                    c.state = "head"
                if c.out and ev & selectors.EVENT_WRITE:
                    k = c.sock.send(c.out)
                    c.out = c.out[k:]
                if ev & selectors.EVENT_READ:
                    data = c.sock.recv(65536)
                    if not data:
                        raise AssertionError(f"{kind} connection closed by the "
                                             f"server in state {c.state}")
                    c.buf += data
                if _progress(c, subscribe):
                    sel.unregister(c.sock)
                    done.append(c.sock)
                    active -= 1
                    continue
                sel.modify(c.sock, selectors.EVENT_READ |
                           (selectors.EVENT_WRITE if c.out else 0), c)
    except BaseException:
        for k in list(sel.get_map().values()):
            k.fileobj.close()
        for s in done:
            s.close()
        raise
    finally:
        sel.close()
    return done


def measure(server, counts, kind, warmup=200):
    """[(connections, rss_kib, bytes per connection since the warm-up)]."""
    pid = server.proc.pid
    socks = open_idle(server.port, warmup, kind)
    base = rss_kib(pid)
    rows = []
    opened = 0
    try:
        for target in counts:
            socks += open_idle(server.port, target - opened, kind)
            opened = target
            # The server has answered every subscription: all is allocated.
            rss = rss_kib(pid)
            rows.append((target, rss, (rss - base) * 1024 / target))
    finally:
        for s in socks:
            s.close()
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kind", default="ws", choices=("ws", "sse"))
    ap.add_argument("--counts", default="1000,5000,18000")
    ap.add_argument("--workers", default="1")
    ap.add_argument("--config", default=None, help="a Lua config file")
    ap.add_argument("--policy", default=None, help="a Lua policy script")
    args = ap.parse_args()
    counts = [int(x) for x in args.counts.split(",")]
    need = max(counts) + 1000
    got = mwtest.raise_nofile(need)  # inherited by the server
    if got < need:
        sys.exit(f"RLIMIT_NOFILE is {got}, need {need}")
    config = open(args.config).read() if args.config else None
    flags = ["--workers", args.workers] + (["--policy", args.policy] if args.policy else [])
    srv = mwtest.Server(flags, config=config).start()
    try:
        for n, rss, per in measure(srv, counts, args.kind):
            print(f"{args.kind} {n:6d} conns: rss {rss:8d} KiB, "
                  f"{per:7.0f} bytes/conn")
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
