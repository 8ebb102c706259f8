"""Redis storage (issue #5): several moonwire nodes sharing one Redis.

Each test starts its own redis-server (a free loopback port, no persistence,
stopped by PID) and two or three moonwire nodes with --storage redis, and
checks what SPEC §3 and §5 promise across nodes: delivery, gap-free seqs
under concurrent publishers, recovery on another node, presence with ghost
expiry, and the loss and return of Redis."""
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

import mwtest
from mwtest import run_async, wait_for, ws_connect

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisProc:
    """One redis-server on 127.0.0.1:port, no persistence."""

    def __init__(self, port=None):
        self.port = port or free_port()
        self.proc = None
        self.dir = tempfile.mkdtemp(prefix="mw-redis-")

    def start(self):
        self.log = open(os.path.join(self.dir, "redis.log"), "wb")
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self.dir],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for(self.ping, 10, 0.02, f"redis-server on port {self.port}")
        return self

    def ping(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), 0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self):
        """SIGKILL, by PID: Redis vanishes without a goodbye."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        if self.proc:
            self.log.close()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc and not self.log.closed:
            self.log.close()

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


async def request(ws, msg, timeout=10.0):
    """Sends msg; returns (reply with the same id, other messages before it)."""
    await ws.send(json.dumps(msg))
    others = []
    while True:
        m = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if m.get("id") == msg.get("id") and m.get("type") in ("ack", "error", "pong"):
            return m, others
        others.append(m)


async def events(ws, n, timeout=20.0, topic=None):
    """The next n events (type "event", of `topic` if given)."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"got {len(out)} of {n} events: "
                                 f"{[m.get('seq') for m in out][-10:]}")
        m = json.loads(await asyncio.wait_for(ws.recv(), left))
        if m.get("type") == "event" and (topic is None or m["topic"] == topic):
            out.append(m)
    return out


async def subscribe(ws, topics, since=None, rid="s"):
    msg = {"type": "subscribe", "id": rid, "topics": list(topics)}
    if since is not None:
        msg["since"] = since
    ack, _ = await request(ws, msg)
    if ack.get("type") != "ack":
        raise AssertionError(f"subscribe {topics}: {ack!r}")
    return ack


class RedisCluster(mwtest.DumpOnFailure):
    NODES = 2
    CONFIG = None

    def setUp(self):
        self.redis = RedisProc().start()
        self.url = f"redis://127.0.0.1:{self.redis.port}"
        self.nodes = []
        for i in range(self.NODES):
            self.nodes.append(self.start_node(f"node{i}"))
        for n in self.nodes:
            wait_for(n.healthy, 10, 0.05, f"{n.name} /healthz 200")

    def start_node(self, name):
        return self.track(mwtest.Server(
            ("--workers", "2", "--storage", "redis", "--redis", self.url),
            self.CONFIG, name=name).start())

    def track(self, srv):
        """Stopped (and checked for a clean exit) at tearDown; its stderr is
        printed if the test fails."""
        self.nodes_started = getattr(self, "nodes_started", []) + [srv]
        self.servers_to_dump.append(srv)
        return srv

    def kill_node(self, srv):
        """kill -9: no goodbye, nothing to check at tearDown."""
        srv.kill()
        srv.killed = True

    def tearDown(self):
        errors = []
        for n in getattr(self, "nodes_started", []):
            if getattr(n, "killed", False):
                continue
            try:
                n.stop()
            except AssertionError as e:
                errors.append(str(e))
        self.redis.cleanup()
        if errors:
            raise AssertionError("\n".join(errors))


class CrossNode(RedisCluster):
    NODES = 2

    def test_publish_on_one_node_reaches_subscribers_on_both(self):
        a, b = self.nodes

        async def go():
            async with ws_connect(a) as wa, ws_connect(b) as wb:
                await subscribe(wa, ["x:1"])
                await subscribe(wb, ["x:1"])
                r = a.publish("x:1", "ADDED", {"n": 1})
                self.assertEqual((r["seq"], r["id"]), (1, "x:1:1"))
                ea = (await events(wa, 1))[0]
                eb = (await events(wb, 1))[0]
                self.assertEqual(ea, eb)
                self.assertEqual((eb["seq"], eb["event"], eb["data"]["n"]), (1, "ADDED", 1))
                # A WebSocket publish on the other node, the other way round.
                ack, early = await request(wb, {"type": "publish", "id": "p", "topic": "x:1",
                                                "event": "CUSTOM", "data": {"payload": "hi"}})
                self.assertEqual(ack["data"], {"status": "delivered", "seq": 2})
                ea = (await events(wa, 1))[0]
                self.assertEqual((ea["seq"], ea["id"]), (2, "x:1:2"))
                # The event may reach node B's subscriber before the ack does.
                got = [m for m in early if m.get("type") == "event"]
                eb = got[0] if got else (await events(wb, 1))[0]
                self.assertEqual(eb["seq"], 2)
        run_async(go(), 60)
        # The history API of either node holds both events.
        status, js, r = b.http_json("GET", "/api/history?topic=x:1&since=0")
        self.assertEqual(status, 200, r)
        self.assertEqual([e["seq"] for e in js["events"]], [1, 2])
        self.assertEqual(js["events"][1]["data"]["payload"], "hi")
        m = a.metrics()
        self.assertEqual(m.get("moonwire_redis_up"), 1)

    def test_concurrent_publishes_from_two_nodes_have_no_gap_or_duplicate(self):
        a, b = self.nodes
        topic = "race:1"
        per_node = 500
        seqs = {a.name: [], b.name: []}
        failures = []

        def publisher(node):
            try:
                for i in range(per_node):
                    r = node.publish(topic, "E", {"from": node.name, "i": i})
                    seqs[node.name].append(r["seq"])
            except Exception as e:  # reported below
                failures.append(repr(e))

        async def go():
            async with ws_connect(a) as wa, ws_connect(b) as wb:
                await subscribe(wa, [topic])
                await subscribe(wb, [topic])
                threads = [threading.Thread(target=publisher, args=(n,)) for n in (a, b)]
                for t in threads:
                    t.start()
                got_a, got_b = await asyncio.gather(events(wa, 2 * per_node, 120),
                                                    events(wb, 2 * per_node, 120))
                for t in threads:
                    t.join()
                return got_a, got_b

        got_a, got_b = run_async(go(), 180)
        self.assertEqual(failures, [])
        answered = sorted(seqs[a.name] + seqs[b.name])
        self.assertEqual(answered, list(range(1, 2 * per_node + 1)))
        # Each node's answers are increasing (its own publishes are ordered).
        for name in seqs:
            self.assertEqual(seqs[name], sorted(seqs[name]))
        for got in (got_a, got_b):
            self.assertEqual([m["seq"] for m in got], list(range(1, 2 * per_node + 1)))
            self.assertTrue(all(m["id"] == f"{topic}:{m['seq']}" for m in got))
        # The same event behind each seq on both nodes.
        self.assertEqual([m["data"] for m in got_a], [m["data"] for m in got_b])

    def test_recovery_on_another_node(self):
        a, b = self.nodes
        topic = "rec:1"

        async def first():
            async with ws_connect(b) as wb:
                ack = await subscribe(wb, [topic])
                return ack["data"]["topics"][topic]
        pos = run_async(first(), 30)
        self.assertEqual(pos["seq"], 0)
        for i in range(5):
            a.publish(topic, "E", {"i": i})

        async def again():
            async with ws_connect(b) as wb:
                since = {topic: {"seq": 0, "epoch": pos["epoch"]}} if pos.get("epoch") \
                    else {topic: 0}
                ack = await subscribe(wb, [topic], since=since)
                t = ack["data"]["topics"][topic]
                self.assertTrue(t["recovered"], ack)
                self.assertEqual(t["seq"], 5)
                got = await events(wb, 5)
                self.assertEqual([m["data"]["i"] for m in got], [0, 1, 2, 3, 4])
                self.assertEqual([m["seq"] for m in got], [1, 2, 3, 4, 5])
                # then live events, from the other node
                a.publish(topic, "LIVE")
                m = (await events(wb, 1))[0]
                self.assertEqual((m["seq"], m["event"]), (6, "LIVE"))
                # since 3 on node A: 4, 5, 6
                async with ws_connect(a) as wa:
                    ack = await subscribe(wa, [topic], since={topic: 3})
                    self.assertTrue(ack["data"]["topics"][topic]["recovered"])
                    self.assertEqual([m["seq"] for m in await events(wa, 3)], [4, 5, 6])
        run_async(again(), 30)


class HistoryBounds(RedisCluster):
    NODES = 2
    CONFIG = "return { history = { size = 10 } }"

    def test_trimmed_history_is_not_recovered(self):
        a, b = self.nodes
        for i in range(15):
            a.publish("bound:1", "E", {"i": i})
        status, js, r = b.http_json("GET", "/api/history?topic=bound:1&since=0")
        self.assertEqual(status, 200, r)
        self.assertEqual([e["seq"] for e in js["events"]], list(range(6, 16)))

        async def go():
            async with ws_connect(b) as wb:
                ack = await subscribe(wb, ["bound:1"], since={"bound:1": 2})
                self.assertFalse(ack["data"]["topics"]["bound:1"]["recovered"])
                ack = await subscribe(wb, ["bound:2"], since={"bound:2": 0}, rid="s2")
                self.assertTrue(ack["data"]["topics"]["bound:2"]["recovered"])
            async with ws_connect(a) as wa:
                ack = await subscribe(wa, ["bound:1"], since={"bound:1": 5})
                self.assertTrue(ack["data"]["topics"]["bound:1"]["recovered"])
                self.assertEqual([m["seq"] for m in await events(wa, 10)], list(range(6, 16)))
        run_async(go(), 30)


class Presence(RedisCluster):
    NODES = 2
    CONFIG = ('return { presence_topics = { "room:*" }, '
              'limits = { idle_timeout = 2, ping_interval = 1 } }')

    def presence(self, node, topic):
        status, js, r = node.http_json("GET", "/api/presence?topic=" + topic)
        self.assertEqual(status, 200, r)
        return js

    def test_presence_across_nodes_and_ghost_expiry(self):
        a, b = self.nodes

        async def go():
            async with ws_connect(a) as wa, ws_connect(b) as wb:
                await subscribe(wa, ["room:1"])
                await subscribe(wb, ["room:1"])
                # (waits run in a thread: this loop must keep answering the
                # server's pings, the idle timeout is 2 s)
                for node in (a, b):
                    await asyncio.to_thread(
                        wait_for, lambda: self.presence(node, "room:1")["clients"] == 2,
                        10, 0.05, f"2 clients in presence on {node.name}")
                p = self.presence(a, "room:1")
                ids = sorted(c["client_id"] for c in p["connections"])
                self.assertEqual(ids, sorted(c["client_id"] for c in
                                             self.presence(b, "room:1")["connections"]))
                # a join from node B reaches the subscriber on node A
                async with ws_connect(b) as wc:
                    await subscribe(wc, ["room:1"])
                    deadline = time.monotonic() + 10
                    while True:
                        m = json.loads(await asyncio.wait_for(wa.recv(),
                                                              deadline - time.monotonic()))
                        if m.get("type") == "presence" and m["event"] == "join" and \
                                m["data"]["client_id"] not in ids:
                            break
                    await asyncio.to_thread(
                        wait_for, lambda: self.presence(a, "room:1")["clients"] == 3,
                        10, 0.05, "3 clients")
                # a clean close leaves at once
                await asyncio.to_thread(
                    wait_for, lambda: self.presence(a, "room:1")["clients"] == 2,
                    10, 0.05, "2 clients after a close")
                # kill -9 node B: its entry is a ghost until the TTL (2 s)
                self.kill_node(b)
                t0 = time.monotonic()
                await asyncio.to_thread(
                    wait_for, lambda: self.presence(a, "room:1")["clients"] == 1,
                    10, 0.1, "the dead node's entry to expire")
                left = self.presence(a, "room:1")["connections"]
                self.assertEqual(len(left), 1)
                self.assertIn(left[0]["client_id"], ids)
                self.assertLess(time.monotonic() - t0, 6.0)
        run_async(go(), 60)


class ClusterTopics(RedisCluster):
    NODES = 2

    def test_api_topics_answers_for_the_cluster(self):
        a, b = self.nodes

        def topics(node):
            status, js, r = node.http_json("GET", "/api/topics")
            self.assertEqual(status, 200, r)
            return {t["topic"]: t["subscribers"] for t in js["topics"]}

        async def go():
            async with ws_connect(a) as wa, ws_connect(b) as wb, ws_connect(b) as wc:
                await subscribe(wa, ["t:shared", "t:only-a"])
                await subscribe(wb, ["t:shared"])
                await subscribe(wc, ["t:shared"], rid="s3")
                want = {"t:shared": 3, "t:only-a": 1}
                for node in (a, b):
                    await asyncio.to_thread(
                        wait_for, lambda: topics(node) == want, 10, 0.05,
                        f"every node's subscriptions in /api/topics on {node.name}")
            # closed connections leave the list
            for node in (a, b):
                await asyncio.to_thread(wait_for, lambda: topics(node) == {}, 10, 0.05,
                                        "an empty topic list after the closes")
        run_async(go(), 60)


class RedisOutage(RedisCluster):
    NODES = 2

    def test_redis_killed_then_restarted(self):
        a, b = self.nodes
        topic = "out:1"

        async def go():
            async with ws_connect(a) as wa, ws_connect(b) as wb:
                await subscribe(wa, [topic])
                await subscribe(wb, [topic])
                r = a.publish(topic, "BEFORE")
                self.assertEqual(r["seq"], 1)
                before = (await events(wb, 1))[0]
                await events(wa, 1)
                old_epoch = None
                status, js, _ = b.http_json("GET", f"/api/history?topic={topic}&since=0")
                if status == 200:
                    old_epoch = js.get("epoch")

                self.redis.kill()
                for node in (a, b):
                    wait_for(lambda: node.http("GET", "/healthz").status == 503, 10, 0.05,
                             f"{node.name} /healthz 503")
                    status, js, resp = node.http_json("POST", "/api/publish",
                                                      {"topic": topic, "event": "LOST"})
                    self.assertEqual(status, 503, resp)
                # WebSocket connections stay open meanwhile
                for ws in (wa, wb):
                    pong, _ = await request(ws, {"type": "ping", "id": "ping"})
                    self.assertEqual(pong["type"], "pong")

                self.redis.start()  # same port, empty
                t0 = time.monotonic()
                for node in (a, b):
                    wait_for(node.healthy, 15, 0.05, f"{node.name} healthy again")
                self.assertLess(time.monotonic() - t0, 10.0)
                # delivery resumes, to both nodes, without restarting anyone
                r = wait_for(lambda: a.publish(topic, "AFTER", expect=None), 10, 0.1,
                             "a publish after Redis returned")
                self.assertEqual(r["seq"], 1)  # an emptied Redis: a new epoch
                ea = (await events(wa, 1, 10))[0]
                eb = (await events(wb, 1, 10))[0]
                self.assertEqual((ea["event"], eb["event"]), ("AFTER", "AFTER"))
                # an old position cannot be recovered
                async with ws_connect(b) as wc:
                    since = {topic: {"seq": before["seq"], "epoch": old_epoch}} if old_epoch \
                        else {topic: before["seq"] + 5}
                    ack = await subscribe(wc, [topic], since=since)
                    self.assertFalse(ack["data"]["topics"][topic]["recovered"], ack)
        run_async(go(), 90)
        for node in (a, b):
            m = node.metrics()
            self.assertGreaterEqual(m.get("moonwire_redis_reconnects_total", 0), 1)
            self.assertEqual(m.get("moonwire_redis_up"), 1)

    def test_start_without_redis_then_redis_arrives(self):
        a = self.nodes[0]
        port = free_port()
        srv = self.track(mwtest.Server(("--workers", "2", "--storage", "redis", "--redis",
                                        f"redis://127.0.0.1:{port}"), name="lonely").start())
        self.assertEqual(srv.http("GET", "/healthz").status, 503)
        status, _, r = srv.http_json("POST", "/api/publish", {"topic": "z", "event": "E"})
        self.assertEqual(status, 503, r)
        late = RedisProc(port).start()
        try:
            wait_for(srv.healthy, 15, 0.05, "healthy once Redis is there")
            self.assertEqual(srv.publish("z", "E")["seq"], 1)
            srv.stop()
        finally:
            late.cleanup()
        self.assertTrue(a.healthy())


class BadUrl(unittest.TestCase):
    def test_bad_url_is_refused(self):
        srv = mwtest.Server(("--storage", "redis", "--redis", "http://nope"), name="badurl")
        with self.assertRaises(AssertionError):
            srv.start()
        self.assertIn("redis://", srv.stderr())
        srv.proc.wait(5)
        srv._err.close()
        srv._out.close()
        # A config error should exit 2 (SPEC §1); the core exits 1 when a
        # plugin's init fails: accept either until the core maps MW_EINVAL.
        self.assertIn(srv.proc.returncode, (1, 2))


if __name__ == "__main__":
    unittest.main()
