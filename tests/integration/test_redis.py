"""Redis storage (issue #5): several moonwire nodes sharing one Redis.

Each test starts its own redis-server (a free loopback port, no persistence,
stopped by PID) and two or three moonwire nodes with --storage redis, and
checks what SPEC §3 and §5 promise across nodes: delivery, gap-free seqs
under concurrent publishers, recovery on another node, presence with ghost
expiry, and the loss and return of Redis."""
import asyncio
import base64
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


def redis_command(port, *args, timeout=5.0):
    """One command to Redis over a raw socket; the reply's raw bytes (read
    until it stops arriving after the first byte)."""
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a.encode() if isinstance(a, str) else a
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    with socket.create_connection(("127.0.0.1", port), timeout) as s:
        s.sendall(out)
        data = s.recv(65536)
        s.settimeout(0.2)
        try:
            while True:
                more = s.recv(65536)
                if not more:
                    break
                data += more
        except socket.timeout:
            pass
    return data


def commandstats(port):
    """{command: calls} from INFO commandstats."""
    out = {}
    for line in redis_command(port, "INFO", "commandstats").decode().splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line.partition(":")
            fields = dict(kv.split("=") for kv in rest.split(","))
            out[name[len("cmdstat_"):]] = int(fields["calls"])
    return out


class HttpPipeline:
    """One keep-alive HTTP/1.1 connection: requests written back to back
    without waiting (a writer thread, so that neither side's buffers can
    block the other), answers read back in order."""

    def __init__(self, port, timeout=30.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout)
        self.buf = b""
        self.writer = None

    def send_publishes(self, topic, names):
        reqs = []
        for name in names:
            body = json.dumps({"topic": topic, "event": name}).encode()
            reqs.append(b"POST /api/publish HTTP/1.1\r\nHost: t\r\n"
                        b"Content-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n" % len(body) + body)
        data = b"".join(reqs)

        def write():
            try:
                self.sock.sendall(data)
            except OSError:
                pass  # the reader reports what is missing
        self.writer = threading.Thread(target=write, daemon=True)
        self.writer.start()

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("no complete HTTP answer in time")
        self.sock.settimeout(left)
        more = self.sock.recv(65536)
        if not more:
            raise AssertionError("the server closed the connection")
        self.buf += more

    def read_answer(self, timeout=30.0):
        """(status, parsed JSON body or None) of the next answer."""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buf:
            self._fill(deadline)
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        clen = 0
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                clen = int(v.strip())
        while len(self.buf) < len(head) + 4 + clen:
            self._fill(deadline)
        body = self.buf[len(head) + 4:len(head) + 4 + clen]
        self.buf = self.buf[len(head) + 4 + clen:]
        try:
            js = json.loads(body) if body else None
        except ValueError:
            js = None
        return status, js

    def close(self):
        self.sock.close()
        if self.writer:
            self.writer.join(10)


def overloaded(answer):
    """A 503 of the core's own push-back (subscribers lagging: a loaded or
    sanitized build), not of the storage: allowed in a burst, never
    instead of a seq."""
    status, js = answer
    return status == 503 and isinstance(js, dict) and \
        str(js.get("error", "")).startswith("overloaded")


async def no_more_events(ws, rid="quiet"):
    """Every event queued before a ping/pong round trip: none allowed."""
    _, others = await request(ws, {"type": "ping", "id": rid})
    extra = [m.get("seq") for m in others if m.get("type") == "event"]
    if extra:
        raise AssertionError(f"unexpected (duplicate?) events: {extra[:20]}")


class RedisCluster(mwtest.DumpOnFailure):
    NODES = 2
    CONFIG = None

    def setUp(self):
        self.redis = RedisProc().start()
        self.url = f"redis://127.0.0.1:{self.redis.port}"
        self.nodes = []
        try:
            for i in range(self.NODES):
                self.nodes.append(self.start_node(f"node{i}"))
            for n in self.nodes:
                wait_for(n.healthy, 10, 0.05, f"{n.name} /healthz 200")
                # /healthz answers for one worker: wait for every connection
                n.wait_metric("moonwire_redis_up", lambda v: v == 1, 10)
        except BaseException:
            self.tearDown()  # no leftover processes when setUp fails
            raise

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


class LongPollCursor(RedisCluster):
    NODES = 2

    def test_an_immediate_first_poll_carries_the_topics_position(self):
        """A first poll with timeout=0 and no cursor (how the JS client opens
        long-poll) is answered only once Redis gave every topic's position:
        its cursor then holds the topic at seq 0, and an event published on
        the other node right after is in the next poll. (The answer used to
        go out before the position arrived: an empty cursor, and the next
        poll started from "now", missing that event.)"""
        a, b = self.nodes
        status, js, r = a.http_json("GET", "/poll?topics=lp:1&timeout=0")
        self.assertEqual(status, 200, r)
        self.assertEqual(js["events"], [])
        pos = json.loads(base64.urlsafe_b64decode(js["cursor"] + "=" * (-len(js["cursor"]) % 4)))
        self.assertEqual(pos["lp:1"][0], 0, pos)
        self.assertEqual(b.publish("lp:1", "E", {"n": 1})["seq"], 1)
        status, js, r = a.http_json("GET", "/poll?topics=lp:1&timeout=5&cursor=" + js["cursor"])
        self.assertEqual(status, 200, r)
        self.assertEqual([e["seq"] for e in js["events"]], [1])


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


class PipelinedPublish(RedisCluster):
    """Issue 7: many publishes in flight on one connection are pipelined to
    Redis (one script call each), answered in order with consecutive seqs,
    and delivered once each, on the publishing node (at the script's reply)
    and on the other (through pub/sub)."""

    def test_burst_on_one_connection_in_order_once_each(self):
        a, b = self.nodes
        topic = "burst:1"
        n = 500
        for node in self.nodes:  # every worker's connection, not just one
            node.wait_metric("moonwire_redis_up", lambda v: v == 1, 10)

        async def go():
            async with ws_connect(a) as wa, ws_connect(b) as wb:
                await subscribe(wa, [topic])
                await subscribe(wb, [topic])
                before = commandstats(self.redis.port)
                cmds0 = a.metric("moonwire_redis_commands_total")
                p = HttpPipeline(a.port)
                try:
                    p.send_publishes(topic, [f"E{i}" for i in range(n)])
                    answers = [p.read_answer() for _ in range(n)]
                finally:
                    p.close()
                # Every answer is a 200 with the next seq, in request order
                # (or the core's own overload push-back, which never reaches
                # the storage: a slow sanitized build under load).
                ok = [(i, js) for i, (st, js) in enumerate(answers) if st == 200]
                self.assertEqual(
                    [a_ for a_ in answers if a_[0] != 200 and not overloaded(a_)], [])
                self.assertGreater(len(ok), 0)
                k = len(ok)
                self.assertEqual([js["seq"] for _, js in ok], list(range(1, k + 1)))
                names = [f"E{i}" for i, _ in ok]
                for ws in (wa, wb):
                    got = await events(ws, k, 30, topic)
                    self.assertEqual([m["seq"] for m in got], list(range(1, k + 1)))
                    self.assertEqual([m["event"] for m in got], names)
                    await no_more_events(ws)
                after = commandstats(self.redis.port)
                # One script call per stored publish, no EVAL (scripts loaded).
                self.assertEqual(after.get("evalsha", 0) - before.get("evalsha", 0), k)
                self.assertEqual(after.get("eval", 0), before.get("eval", 0))
                sent = a.metric("moonwire_redis_commands_total") - cmds0
                self.assertGreaterEqual(sent, k)
                self.assertLess(sent, k + 20)  # + heartbeats, presence
        run_async(go(), 90)
        for node in (a, b):
            m = node.metrics()
            errs = {k: v for k, v in m.items()
                    if k.startswith("moonwire_redis_errors_total") and v}
            self.assertEqual(errs, {}, node.name)

    def test_redis_killed_mid_burst(self):
        a, _ = self.nodes
        topic = "burst:kill"
        n = 3000
        a.wait_metric("moonwire_redis_up", lambda v: v == 1, 10)

        async def go():
            async with ws_connect(a) as wa:
                await subscribe(wa, [topic])
                p = HttpPipeline(a.port)
                try:
                    p.send_publishes(topic, [f"E{i}" for i in range(n)])
                    answers = [p.read_answer() for _ in range(100)]
                    # Freeze Redis first so that the kill lands mid-burst.
                    os.kill(self.redis.proc.pid, signal.SIGSTOP)
                    self.redis.kill()
                    answers += [p.read_answer() for _ in range(n - 100)]
                finally:
                    p.close()
                # 200 (with the next seq) until the loss, then 503 for every
                # later one: none hangs, none is answered twice, none succeeds
                # without Redis (the core's overload 503s may be mixed in).
                lost = [i for i, a_ in enumerate(answers)
                        if a_[0] != 200 and not overloaded(a_)]
                self.assertTrue(lost, "Redis was killed mid-burst")
                self.assertTrue(all(answers[i][0] == 503 for i in lost))
                self.assertEqual([a_ for a_ in answers[lost[0]:] if a_[0] == 200], [])
                seqs = [js["seq"] for st, js in answers if st == 200]
                ok = len(seqs)
                self.assertGreater(ok, 0)
                self.assertEqual(seqs, list(range(1, ok + 1)))
                # Every answered event reaches the publishing node's subscriber,
                # once and in order (an event Redis ran just before dying may
                # be delivered although its answer was a 503: never twice).
                got = await events(wa, ok, 30, topic)
                self.assertEqual([m["seq"] for m in got], list(range(1, ok + 1)))
                _, others = await request(wa, {"type": "ping", "id": "p1"})
                extra = [m["seq"] for m in others if m.get("type") == "event"]
                self.assertEqual(extra, sorted(set(extra)))
                self.assertTrue(all(s > ok for s in extra), extra)

                self.assertTrue(a.alive())
                self.assertEqual(a.http("GET", "/healthz").status, 503)
                self.assertGreaterEqual(
                    a.metric('moonwire_redis_errors_total{reason="connect"}'), 1)

                self.redis.start()  # same port, empty: a new epoch
                # every worker reconnected (each with its own backoff)
                a.wait_metric("moonwire_redis_up", lambda v: v == 1, 15)
                p = HttpPipeline(a.port)
                try:
                    p.send_publishes(topic, [f"F{i}" for i in range(50)])
                    answers = [p.read_answer() for _ in range(50)]
                finally:
                    p.close()
                self.assertEqual([st for st, _ in answers], [200] * 50)
                self.assertEqual([js["seq"] for _, js in answers], list(range(1, 51)))
                got = await events(wa, 50, 30, topic)
                self.assertEqual([m["event"] for m in got], [f"F{i}" for i in range(50)])
                await no_more_events(wa)
        run_async(go(), 120)


class InFlightCap(RedisCluster):
    """Beyond MOONWIRE_REDIS_MAX_PENDING commands in flight (a stopped Redis),
    a publish fails at once with 503 instead of queueing without bound; the
    admitted ones complete when Redis resumes."""
    NODES = 1
    CAP = 8

    def start_node(self, name):
        return self.track(mwtest.Server(
            ("--workers", "1", "--storage", "redis", "--redis", self.url,
             "--redis-timeout-ms", "20000"),
            self.CONFIG, env={"MOONWIRE_REDIS_MAX_PENDING": str(self.CAP)},
            name=name).start())

    def test_publish_fails_fast_beyond_the_cap(self):
        a = self.nodes[0]
        a.wait_metric("moonwire_redis_up", lambda v: v == 1, 10)
        extra = 4
        busy = 'moonwire_redis_errors_total{reason="busy"}'
        self.assertEqual(a.metric(busy), 0)
        conns = []
        os.kill(self.redis.proc.pid, signal.SIGSTOP)
        try:
            for i in range(self.CAP + extra):
                p = HttpPipeline(a.port)
                conns.append(p)
                p.send_publishes("cap", [f"E{i}"])
            a.wait_metric(busy, lambda v: v >= extra, 10)
            # The refused ones are answered now, while Redis is still stopped.
            fast = []
            deadline = time.monotonic() + 10
            while len(fast) < extra and time.monotonic() < deadline:
                for p in conns:
                    if p in fast:
                        continue
                    p.sock.settimeout(0.01)
                    try:
                        more = p.sock.recv(65536)
                    except socket.timeout:
                        continue
                    p.buf += more
                    if b"\r\n\r\n" in p.buf:
                        fast.append(p)
            self.assertEqual(len(fast), extra)
            for p in fast:
                self.assertEqual(p.read_answer(5)[0], 503)
        finally:
            os.kill(self.redis.proc.pid, signal.SIGCONT)
        rest = [p.read_answer(20) for p in conns if p not in fast]
        for p in conns:
            p.close()
        self.assertEqual([st for st, _ in rest], [200] * self.CAP)
        self.assertEqual(sorted(js["seq"] for _, js in rest), list(range(1, self.CAP + 1)))
        self.assertEqual(a.metric(busy), extra)
        # Nothing was left behind: the cap admits again.
        self.assertEqual(a.publish("cap", "AFTER")["seq"], self.CAP + 1)


class FakeRedis:
    """A hostile Redis on 127.0.0.1: enough of the protocol for a node to
    connect (PING, AUTH, SELECT, SCRIPT LOAD, (UN)SUBSCRIBE, PUBLISH echoed
    to subscribers), and publish-script answers chosen by the test (`mode`):
    "ok" {seq, epoch}, or replies of the wrong type or shape, errors, and a
    connection closed mid-pipeline."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.mode = "ok"
        self.seq = 0
        self.evalsha = 0
        self.lock = threading.Lock()
        self.subs = {}  # channel -> [conn]
        self.conns = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    @staticmethod
    def _bulk(b):
        b = b.encode() if isinstance(b, str) else b
        return b"$%d\r\n%s\r\n" % (len(b), b)

    def _commands(self, c):
        buf = b""
        while True:
            while True:  # one complete command of the buffer, if any
                if not buf.startswith(b"*") or b"\r\n" not in buf:
                    break
                head, _, rest = buf.partition(b"\r\n")
                args, ok = [], True
                for _ in range(int(head[1:])):
                    if b"\r\n" not in rest:
                        ok = False
                        break
                    ln, _, rest = rest.partition(b"\r\n")
                    n = int(ln[1:])
                    if len(rest) < n + 2:
                        ok = False
                        break
                    args.append(rest[:n])
                    rest = rest[n + 2:]
                if not ok:
                    break
                buf = rest
                yield args
            more = c.recv(65536)
            if not more:
                return
            buf += more

    def _serve(self, c):
        try:
            for args in self._commands(c):
                cmd = args[0].upper()
                if cmd == b"PING":
                    c.sendall(b"+PONG\r\n")
                elif cmd in (b"AUTH", b"SELECT"):
                    c.sendall(b"+OK\r\n")
                elif cmd == b"SCRIPT":
                    import hashlib
                    c.sendall(self._bulk(hashlib.sha1(args[2]).hexdigest()))
                elif cmd in (b"SUBSCRIBE", b"UNSUBSCRIBE"):
                    kind = cmd.lower()
                    for ch in args[1:]:
                        with self.lock:
                            lst = self.subs.setdefault(ch, [])
                            if cmd == b"SUBSCRIBE":
                                lst.append(c)
                            elif c in lst:
                                lst.remove(c)
                        c.sendall(b"*3\r\n" + self._bulk(kind) + self._bulk(ch) + b":1\r\n")
                elif cmd == b"PUBLISH":
                    with self.lock:
                        targets = list(self.subs.get(args[1], []))
                    for t in targets:
                        t.sendall(b"*3\r\n" + self._bulk("message") + self._bulk(args[1])
                                  + self._bulk(args[2]))
                    c.sendall(b":%d\r\n" % len(targets))
                elif cmd in (b"EVALSHA", b"EVAL"):
                    self._script(c)
                else:
                    c.sendall(b"-ERR unknown command\r\n")
        except OSError:
            pass
        finally:
            c.close()

    def _script(self, c):
        with self.lock:
            self.evalsha += 1
            mode = self.mode
        replies = {
            "int": b":5\r\n",
            "nil": b"$-1\r\n",
            "short": b"*1\r\n:1\r\n",
            "strseq": b"*2\r\n$1\r\n1\r\n$4\r\nepoc\r\n",
            "zero": b"*2\r\n:0\r\n$4\r\nepoc\r\n",
            "badepoch": b"*2\r\n:7\r\n$3\r\na b\r\n",
            "nested": b"*2\r\n*1\r\n:1\r\n*0\r\n",
            "error": b"-ERR boom\r\n",
        }
        if mode == "ok":
            self.seq += 1
            c.sendall(b"*2\r\n:%d\r\n" % self.seq + self._bulk("fakeepoch"))
        elif mode == "drop":  # half a reply, then gone: mid-pipeline
            c.sendall(b"*2\r\n:")
            c.shutdown(socket.SHUT_RDWR)
            raise OSError("dropped")
        else:
            c.sendall(replies[mode])

    def close(self):
        self.closed = True
        self.sock.close()
        with self.lock:
            for c in self.conns:
                try:
                    c.close()
                except OSError:
                    pass


class HostileRedis(mwtest.DumpOnFailure):
    """Every reply may be hostile: a publish whose script answer is of the
    wrong type or shape, an error, or a connection that drops mid-pipeline is
    answered 503 (never 200 without a valid seq), counted, and the node
    reconnects by itself and publishes again."""

    def setUp(self):
        self.fake = FakeRedis()
        self.srv = mwtest.Server(("--workers", "1", "--storage", "redis", "--redis",
                                  f"redis://127.0.0.1:{self.fake.port}"), name="hostile")
        self.servers_to_dump.append(self.srv)
        self.addCleanup(self.fake.close)
        self.srv.start()
        self.addCleanup(self.srv.stop)  # also when setUp fails below
        self.srv.wait_metric("moonwire_redis_up", lambda v: v == 1, 10)

    def test_hostile_publish_replies(self):
        srv = self.srv
        self.assertEqual(srv.publish("h", "OK")["seq"], 1)
        err = lambda reason: srv.metric(f'moonwire_redis_errors_total{{reason="{reason}"}}')
        for mode, reason in (("int", "reply_type"), ("nil", "reply_type"),
                             ("short", "reply_type"), ("strseq", "reply_type"),
                             ("zero", "reply_type"), ("badepoch", "reply_type"),
                             ("nested", "reply_type"), ("error", "script_error")):
            self.fake.mode = mode
            before = err(reason)
            status, js, r = srv.http_json("POST", "/api/publish", {"topic": "h", "event": mode})
            self.assertEqual(status, 503, f"{mode}: {r!r}")
            self.assertEqual(err(reason), before + 1, mode)
        # A pipeline whose connection drops at the first script call: every
        # publish of it is answered, in order, 503; nothing hangs.
        self.fake.mode = "drop"
        connects = err("connect")
        p = HttpPipeline(srv.port)
        try:
            p.send_publishes("h", [f"D{i}" for i in range(20)])
            statuses = [p.read_answer(20)[0] for _ in range(20)]
        finally:
            p.close()
        self.assertEqual(statuses, [503] * 20)
        self.fake.mode = "ok"
        srv.wait_metric("moonwire_redis_up", lambda v: v == 1, 15, "reconnected")
        self.assertGreaterEqual(srv.metric("moonwire_redis_reconnects_total"), 1)
        self.assertGreater(err("connect"), connects)  # the drop is counted
        self.assertIn("Redis connection lost", srv.stderr())
        self.assertEqual(srv.publish("h", "AGAIN")["seq"], 2)
        self.assertTrue(srv.alive())


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
