"""HTTP/1.1 pipelining (issue 7), against the real binary.

Many requests in one write are handled concurrently (at most 32 outstanding
per connection) and answered strictly in request order; a request that may
take the connection over (an Upgrade) waits until it is the first
outstanding one and nothing after it is parsed as HTTP; a peer that leaves
with requests in flight leaves the server healthy (under ASan: no
use-after-free, no leak, checked at SIGTERM by mwtest).

Slow handlers: the Redis storage (its own redis-server on a free loopback
port, as in test_redis.py), made deterministically slow with CLIENT PAUSE
(no sleeps: the tests poll /metrics for how many requests were dispatched
and lift the pause themselves)."""
import json
import socket
import struct
import threading
import time
import unittest

import mwtest
from mwtest import RawWS, ServerTestCase, wait_for
from test_redis import RedisProc

PIPELINE = 32  # MW_HTTP_PIPELINE in core/http.h


def publish_req(topic, trace_id, event="E", close=False):
    body = json.dumps({"topic": topic, "event": event, "trace_id": trace_id,
                       "data": {"t": trace_id}}).encode()
    return (b"POST /api/publish HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\n" +
            (b"Connection: close\r\n" if close else b"") +
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def get_req(path, method="GET"):
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


class Conn:
    """A raw keep-alive connection reading responses incrementally."""

    def __init__(self, port, timeout=20.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def responses(self, n, timeout=30.0, head_only_at=()):
        """The next n responses (bounded by `timeout`)."""
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            got = mwtest.parse_response(self.buf, len(out) in head_only_at)
            if got:
                out.append(got[0])
                self.buf = got[1]
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"got {len(out)} of {n} responses; "
                                     f"statuses {[r[0] for r in out][-10:]}")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"closed after {len(out)} of {n} responses")
            self.buf += chunk
        return out

    def wait_eof(self, timeout=10.0):
        """True once the server closed; what arrives meanwhile is kept."""

        def keep(chunk):
            self.buf += chunk

        return mwtest.wait_eof(self.sock, timeout, keep)

    def reset(self):
        """Leaves with a TCP reset (requests still in flight)."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self):
        self.sock.close()


def check_in_order(test, resps, traces, first_seq=None):
    """Answers in request order: answer i carries trace id i; seqs increase
    (by one from first_seq if given). A publish refused by admission control
    (503 "overloaded", a slow build under a burst) is still an answer in its
    place; at least one must succeed."""
    test.assertEqual(len(resps), len(traces))
    seqs = []
    for i, (status, _, body) in enumerate(resps):
        js = json.loads(body)
        if status == 503 and "overloaded" in js.get("error", ""):
            continue
        test.assertEqual(status, 200, f"answer {i}: {body[:200]!r}")
        test.assertEqual(js["trace_id"], traces[i], f"answer {i} out of order")
        seqs.append(js["seq"])
    test.assertTrue(seqs, "every publish was refused")
    if first_seq is not None:
        test.assertEqual(seqs, list(range(first_seq, first_seq + len(seqs))))
    else:
        test.assertEqual(seqs, sorted(set(seqs)), "seqs not strictly increasing")
    return seqs


def publishes_then_upgrade(topic, traces):
    """One write: a publish per trace id, a WebSocket Upgrade, and a
    subscribe frame to `topic` (id "s") right behind it."""
    sub = RawWS.frame(0x1, json.dumps({"type": "subscribe", "id": "s",
                                       "topics": [topic]}).encode())
    return (b"".join(publish_req(topic, t) for t in traces) +
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n" + sub)


def expect_answers_then_ws(test, ws, traces):
    """After publishes_then_upgrade: the publishes answered in order, then
    the 101; what follows is WebSocket, starting with the subscribe's ack
    (the frame was handed over with the connection)."""
    c = Conn.__new__(Conn)
    c.sock, c.buf = ws.sock, b""
    resps = c.responses(len(traces) + 1)
    check_in_order(test, resps[:-1], traces, first_seq=1)
    test.assertEqual(resps[-1][0], 101, resps[-1])
    ws.buf = c.buf
    ack = ws.recv_json(10)
    test.assertEqual((ack["type"], ack["id"]), ("ack", "s"), ack)


class PipelineChecks:
    """Tests shared by both storages (self.srv is the server)."""

    def setUp(self):
        # Admission control remembers a burst's fan-out lag for a while (a
        # slow ASan build): start each test once publishes are admitted.
        wait_for(self.publish_admitted, 30, 0.05, "publishes admitted")

    def publish_admitted(self):
        st, _, _ = self.srv.http_json("POST", "/api/publish",
                                      {"topic": "probe", "event": "P"})
        return st == 200

    def test_many_publishes_in_one_write(self):
        n = 300
        traces = [f"many-{i}" for i in range(n)]
        c = Conn(self.srv.port)
        try:
            c.send(b"".join(publish_req(f"{self.PREFIX}:many", t) for t in traces))
            resps = c.responses(n)
        finally:
            c.close()
        check_in_order(self, resps, traces, first_seq=1)
        self.assertTrue(all(r[1]["connection"] == "keep-alive" for r in resps))

    def test_mixed_routes_answered_in_order(self):
        topic = f"{self.PREFIX}:mixed"
        data, want, traces = b"", [], []
        for i in range(40):
            t = f"mix-{i}"
            traces.append(t)
            data += publish_req(topic, t)
            want.append(None)  # a publish
            extra = [(get_req("/healthz"), 200), (get_req("/nope"), 404),
                     (get_req("/api/publish"), 405)][i % 3]
            data += extra[0]
            want.append(extra[1])
        data += publish_req(topic, "mix-last", close=True)
        want.append(None)
        traces.append("mix-last")
        c = Conn(self.srv.port)
        try:
            c.send(data)
            resps = c.responses(len(want))
            self.assertTrue(c.wait_eof(), "no close after Connection: close")
        finally:
            c.close()
        self.assertEqual([r[0] for r, w in zip(resps, want) if w], [w for w in want if w])
        pubs = [r for r, w in zip(resps, want) if w is None]
        check_in_order(self, pubs, traces, first_seq=1)
        self.assertEqual(resps[-1][1]["connection"], "close")

    def test_pipeline_ending_in_upgrade(self):
        topic = f"{self.PREFIX}:up"
        traces = [f"up-{i}" for i in range(5)]
        ws = RawWS(self.srv.port, handshake=False)
        try:
            ws.sock.sendall(publishes_then_upgrade(topic, traces))
            expect_answers_then_ws(self, ws, traces)
            after = self.srv.publish(topic, "AFTER")["seq"]
            # Events published in the same loop turn as the subscribe may
            # reach it too (fan-out is asynchronous); AFTER must.
            seen = []
            while not seen or seen[-1]["event"] != "AFTER":
                ev = ws.recv_json(10)
                self.assertEqual(ev["type"], "event", ev)
                seen.append(ev)
            self.assertEqual(seen[-1]["seq"], after)
            self.assertEqual([e["seq"] for e in seen], sorted(set(e["seq"] for e in seen)))
        finally:
            ws.close()

    def test_peer_resets_mid_pipeline(self):
        c = Conn(self.srv.port)
        c.send(b"".join(publish_req(f"{self.PREFIX}:gone", f"g-{i}")
                        for i in range(200)))
        c.reset()
        wait_for(lambda: self.srv.healthy(), 10, what="/healthz after the reset")
        self.assertTrue(self.srv.alive())

    def test_large_pipeline_without_reading(self):
        """Far more than the bound, written before anything is read: the
        server reads on as answers go out, and answers all, in order (history
        reads: each answer names its topic)."""
        n = 2000
        c = Conn(self.srv.port)
        try:
            c.send(b"".join(get_req(f"/api/history?topic={self.PREFIX}:h{i}&limit=1")
                            for i in range(n)))
            resps = c.responses(n, timeout=120)
        finally:
            c.close()
        self.assertEqual([r[0] for r in resps], [200] * n)
        self.assertEqual([json.loads(r[2])["topic"] for r in resps],
                         [f"{self.PREFIX}:h{i}" for i in range(n)])


class MemoryPipelining(PipelineChecks, ServerTestCase):
    PREFIX = "mem"

    def test_large_bodies_bounded(self):
        """Bodies near the 1 MiB limit: few are parsed ahead at a time, all are
        answered in order."""
        n = 12
        pad = "x" * 900000
        data, traces = b"", []
        for i in range(n):
            t = f"fat-{i}"
            traces.append(t)
            # The padding is ignored by the API: big requests, small events.
            body = json.dumps({"topic": "mem:fat", "event": "E", "trace_id": t,
                               "pad": pad}).encode()
            data += (b"POST /api/publish HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        c = Conn(self.srv.port)
        try:
            c.send(data)
            resps = c.responses(n, timeout=120)
        finally:
            c.close()
        check_in_order(self, resps, traces, first_seq=1)


class UnreadAnswers(ServerTestCase):
    """A peer that pipelines cheap requests and never reads its answers: the
    server stops parsing once 256 KiB of answers wait in user space (what
    the sockets hold is the kernel's), so its memory stays bounded and the
    worker's backlog does not push other clients' publishes into 503; once
    the peer reads, parsing resumes and every request is answered, in
    order."""
    SERVER_FLAGS = ("--workers", "1")  # the publisher shares the worker
    N = 200_000  # 7 MB of requests, 20.8 MB of answers
    KEY = "moonwire_http_requests_total"

    def test_unread_answers_are_bounded(self):
        req = get_req("/healthz")
        one = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
               b"Content-Length: 15\r\nConnection: keep-alive\r\n\r\n"
               b'{"status":"ok"}')
        base = self.srv.metric(self.KEY)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.settimeout(60)
        sock.connect(("127.0.0.1", self.srv.port))
        sent_all = threading.Event()

        def send():
            try:
                sock.sendall(req * self.N)  # blocks while the server waits
                sent_all.set()
            except OSError:
                pass

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        try:
            handled = lambda: self.srv.metric(self.KEY) - base
            wait_for(lambda: handled() >= 5000, 20, what="the server handled 5000")
            # A window to observe a bound (not a synchronisation): without
            # it the server parses all N within this window, answering into
            # its queue (about 100,000 requests/s here).
            most = 0
            end = time.monotonic() + 2.0
            while time.monotonic() < end:
                most = max(most, handled())
                self.assertLess(most, 80_000, "parsing went on with answers unread")
            self.assertFalse(sent_all.is_set(), "the server read every request")
            # Others on the same worker are not pushed back.
            st, _, body = self.srv.http_json("POST", "/api/publish",
                                             {"topic": "other", "event": "E"})
            self.assertEqual(st, 200, body)
            # The peer reads now: all N answers arrive, byte for byte.
            want = len(one) * self.N
            got = 0
            deadline = time.monotonic() + 120
            while got < want:
                self.assertLess(time.monotonic(), deadline,
                                f"{got // len(one)} of {self.N} answers")
                chunk = sock.recv(1 << 20)
                self.assertTrue(chunk, f"closed after {got} of {want} bytes")
                off = got % len(one)
                expect = (one * (len(chunk) // len(one) + 2))[off:off + len(chunk)]
                self.assertEqual(chunk, expect, f"answer bytes differ at {got}")
                got += len(chunk)
            sender.join(30)
            self.assertTrue(sent_all.is_set())
            self.assertGreaterEqual(handled(), self.N)
        finally:
            sock.close()
            sender.join(30)


class RedisPipelining(PipelineChecks, mwtest.DumpOnFailure):
    """The same against the Redis storage (answers arrive from Redis replies,
    a loop turn or more later), plus the bound, observed while Redis is
    paused."""
    PREFIX = "redis"

    @classmethod
    def setUpClass(cls):
        cls.redis = RedisProc().start()
        try:
            cls.server = mwtest.Server(
                ["--storage", "redis", "--redis", f"redis://127.0.0.1:{cls.redis.port}",
                 "--redis-timeout-ms", "30000", "--redis-prefix", "pl:"],
                name="pipelining-redis").start()
            wait_for(cls.server.healthy, 20, what="the node connected to Redis")
        except Exception:
            cls.redis.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            srv, cls.server = cls.server, None
            if srv:
                srv.stop()
        finally:
            cls.redis.cleanup()

    @property
    def srv(self):
        return self.server

    def redis_cmd(self, *args):
        cmd = f"*{len(args)}\r\n".encode()
        for a in args:
            a = str(a).encode()
            cmd += b"$" + str(len(a)).encode() + b"\r\n" + a + b"\r\n"
        with socket.create_connection(("127.0.0.1", self.redis.port), 5) as s:
            s.sendall(cmd)
            reply = s.recv(256)
        self.assertTrue(reply.startswith(b"+OK"), reply)

    def dispatched(self):
        """A function returning how many requests the server dispatched since
        it was made, not counting its own /metrics requests."""
        base = self.srv.metric("moonwire_http_requests_total")
        calls = [0]

        def count():
            calls[0] += 1
            return self.srv.metric("moonwire_http_requests_total") - base - calls[0]
        return count

    def test_pipeline_is_bounded_while_redis_is_paused(self):
        topic = "redis:bounded"
        n = 200
        traces = [f"b-{i}" for i in range(n)]
        count = self.dispatched()
        c = Conn(self.srv.port)
        self.redis_cmd("CLIENT", "PAUSE", "20000", "WRITE")
        try:
            c.send(b"".join(publish_req(topic, t) for t in traces))
            # All stuck in Redis: exactly the bound is dispatched, no more.
            wait_for(lambda: count() >= PIPELINE, 10, what="a full pipeline")
            self.assertEqual(count(), PIPELINE)
            self.assertEqual(count(), PIPELINE)
        finally:
            self.redis_cmd("CLIENT", "UNPAUSE")
        try:
            resps = c.responses(n, timeout=60)
        finally:
            c.close()
        check_in_order(self, resps, traces, first_seq=1)

    def test_peer_resets_with_requests_in_flight(self):
        """The peer leaves while a full pipeline waits on Redis (reading is
        stopped, so the server learns it when it writes the first answer):
        the other requests are orphaned, their publishes still complete."""
        topic = "redis:orphans"
        count = self.dispatched()
        published = self.srv.metric("moonwire_events_published_total")
        c = Conn(self.srv.port)
        self.redis_cmd("CLIENT", "PAUSE", "20000", "WRITE")
        try:
            c.send(b"".join(publish_req(topic, f"o-{i}") for i in range(100)))
            wait_for(lambda: count() >= PIPELINE, 10, what="a full pipeline")
            c.reset()
        finally:
            self.redis_cmd("CLIENT", "UNPAUSE")
        self.srv.wait_metric("moonwire_events_published_total",
                             lambda v: v >= published + PIPELINE, 20)
        self.srv.wait_metric("moonwire_tcp_connections", lambda v: v <= 1, 20)
        # At least the first 32 were stored; more may have been read before a
        # write failed and told the server the peer was gone.
        seq = self.srv.publish(topic, "AFTER")["seq"]
        self.assertTrue(PIPELINE < seq <= 101, seq)
        self.assertTrue(self.srv.healthy())

    def test_upgrade_waits_for_slow_answers(self):
        topic = "redis:slowup"
        traces = [f"su-{i}" for i in range(3)]
        count = self.dispatched()
        ws = RawWS(self.srv.port, handshake=False)
        self.redis_cmd("CLIENT", "PAUSE", "20000", "WRITE")
        try:
            ws.sock.sendall(publishes_then_upgrade(topic, traces))
            # The publishes are in flight; the Upgrade is parsed, not dispatched.
            wait_for(lambda: count() >= 3, 10, what="three publishes dispatched")
            self.assertEqual(count(), 3)
        finally:
            self.redis_cmd("CLIENT", "UNPAUSE")
        try:
            expect_answers_then_ws(self, ws, traces)
        finally:
            ws.close()


if __name__ == "__main__":
    unittest.main()
