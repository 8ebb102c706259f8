"""Idle connections stay small (issue 7): the server's resident memory grows
by at most BOUND bytes per idle subscribed WebSocket connection (default
policy, so the Lua identity is included), and SSE streams are bounded too.

Measured on 2,000 connections after a warm-up of 200 (allocator and libuv
arrays are grown by then). The figure was about 1.9 KiB per WebSocket
connection and 2.1 KiB per SSE stream when the test was written (16 KiB and
15 KiB before). Under AddressSanitizer every allocation carries redzones and
quarantine: the test is skipped there (the server's /proc/PID/maps say
whether libasan is loaded).

The connections are raw non-blocking sockets in this process (idle_conns.py),
every wait is bounded, nothing sleeps to synchronise.
"""
import os
import unittest

import idle_conns
import mwtest

CONNS = 2000
WARMUP = 200
WS_BOUND = 3 * 1024   # bytes per idle WebSocket connection
SSE_BOUND = 3 * 1024  # bytes per idle SSE stream


def sanitized(pid):
    """True if the process runs with AddressSanitizer (libasan mapped)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return "libasan" in f.read()
    except OSError:
        return False


class IdleMemory(mwtest.DumpOnFailure):
    def setUp(self):
        got = mwtest.raise_nofile(CONNS + WARMUP + 512)  # the server inherits it
        if got < CONNS + WARMUP + 512:
            self.skipTest(f"RLIMIT_NOFILE is {got}")
        self.server = mwtest.Server(["--workers", "1"], name="idle").start()
        if sanitized(self.server.proc.pid):
            self.server.stop()
            self.skipTest("AddressSanitizer build: allocations carry redzones")

    def tearDown(self):
        self.server.stop()

    def per_conn(self, kind):
        rows = idle_conns.measure(self.server, [CONNS], kind, warmup=WARMUP)
        n, rss, per = rows[0]
        print(f"\n{kind}: {per:.0f} bytes of RSS per idle connection "
              f"({n} connections, RSS {rss} KiB)")
        self.assertTrue(self.server.healthy())
        return per

    def test_websocket_idle_connection_is_small(self):
        per = self.per_conn("ws")
        self.assertLessEqual(per, WS_BOUND,
                             f"{per:.0f} bytes per idle WebSocket connection")
        # The sockets are closed: every session goes away.
        self.server.wait_metric("moonwire_ws_connections", lambda v: v == 0,
                                timeout=30)

    def test_sse_idle_stream_is_small(self):
        per = self.per_conn("sse")
        self.assertLessEqual(per, SSE_BOUND,
                             f"{per:.0f} bytes per idle SSE stream")
        self.server.wait_metric("moonwire_sse_streams", lambda v: v == 0,
                                timeout=30)


if __name__ == "__main__":
    unittest.main()
