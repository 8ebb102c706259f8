"""SPEC §2/§3: GET /sse and GET /poll against the real binary: events, ids and
cursors, recovery (Last-Event-ID, ?since=, ?cursor=), recovered:false beyond
history and after a restart, heartbeats, the replay/publish race, CORS, bad
input and drain. SSE is read from a raw socket and parsed here."""
import base64
import json
import socket
import threading
import time
import unittest

import mwtest
from mwtest import DumpOnFailure, Server, ServerTestCase, wait_for

MAIN_CONFIG = """return {
  workers = 2,
  limits = {sse_heartbeat = 1, max_request_line = 131072},
}"""
SMALL_HISTORY = """return { history = {size = 5} }"""


def decode_cursor(c):
    """The positions {"topic": [seq, "epoch"]} of a cursor / event id."""
    raw = base64.urlsafe_b64decode(c + "=" * (-len(c) % 4))
    return json.loads(raw)


class SSE:
    """A raw SSE client: sends the request, parses the head, then blocks of
    `field: value` lines separated by blank lines."""

    def __init__(self, port, path, headers=None, timeout=10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        req = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n"
        for k, v in (headers or {}).items():
            req += f"{k}: {v}\r\n"
        self.sock.sendall((req + "\r\n").encode())
        self.buf = b""
        self.last_id = None
        self.retry = None
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buf:
            self._recv(deadline)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ", 2)[1])
        self.headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            self.headers[k.strip().lower()] = v.strip()
        self.body = None
        if self.status != 200:
            n = int(self.headers.get("content-length", "0"))
            while len(self.buf) < n:
                self._recv(deadline)
            self.body = json.loads(self.buf[:n]) if n else None

    def _recv(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("no data in time")
        self.sock.settimeout(left)
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("stream closed by the server")
        self.buf += chunk

    def block(self, timeout=5.0):
        """The next block: {"id", "event", "data", "comments"} (absent fields
        missing). Updates last_id like EventSource does."""
        deadline = time.monotonic() + timeout
        while b"\n\n" not in self.buf:
            self._recv(deadline)
        raw, self.buf = self.buf.split(b"\n\n", 1)
        out = {"comments": []}
        for line in raw.decode("utf-8").split("\n"):
            if line.startswith(":"):
                out["comments"].append(line[1:].strip())
                continue
            k, _, v = line.partition(":")
            if v.startswith(" "):
                v = v[1:]
            if k == "data" and "data" in out:
                out["data"] += "\n" + v
            else:
                out[k] = v
        if "id" in out:
            self.last_id = out["id"]
        if "retry" in out:
            self.retry = int(out["retry"])
        return out

    def message(self, timeout=5.0):
        """The next block with data (skips comments, retry and id-only
        blocks): (event name, parsed data, block)."""
        deadline = time.monotonic() + timeout
        while True:
            b = self.block(max(0.01, deadline - time.monotonic()))
            if "data" in b:
                return b.get("event", "message"), json.loads(b["data"]), b

    def event(self, timeout=5.0):
        """The next moonwire event (type "event"), checking its id."""
        name, data, b = self.message(timeout)
        if name != "message" or data.get("type") != "event":
            raise AssertionError(f"expected an event, got {name}: {data!r}")
        pos = decode_cursor(b["id"])
        if pos[data["topic"]][0] != data["seq"]:
            raise AssertionError(f"id {pos!r} does not match {data!r}")
        return data

    def wait_ready(self, timeout=5.0):
        """Reads up to the id-only block that follows the subscriptions."""
        deadline = time.monotonic() + timeout
        while True:
            b = self.block(max(0.01, deadline - time.monotonic()))
            if "id" in b and "data" not in b:
                return decode_cursor(b["id"])

    def wait_eof(self, timeout=5.0):
        deadline = time.monotonic() + timeout
        try:
            while True:
                self._recv(deadline)
        except EOFError:
            return True
        except (socket.timeout, ConnectionResetError):
            return False

    def close(self):
        self.sock.close()


def poll(srv, topics=None, cursor=None, timeout=None, headers=None, http_timeout=15.0):
    q = []
    if topics is not None:
        q.append("topics=" + topics)
    if cursor is not None:
        q.append("cursor=" + cursor)
    if timeout is not None:
        q.append(f"timeout={timeout}")
    return srv.http("GET", "/poll?" + "&".join(q), headers=headers, timeout=http_timeout)


class Publisher(threading.Thread):
    """Publishes on `topic` continuously until stopped."""

    def __init__(self, srv, topic):
        super().__init__(daemon=True)
        self.srv, self.topic = srv, topic
        self.stop_flag = threading.Event()
        self.count = 0
        self.error = None

    def run(self):
        try:
            while not self.stop_flag.is_set():
                self.srv.publish(self.topic, "TICK", {"n": self.count})
                self.count += 1
        except Exception as e:  # reported by stop()
            self.error = e

    def stop(self):
        self.stop_flag.set()
        self.join(15)
        if self.error:
            raise self.error


class SSEStreams(ServerTestCase):
    SERVER_CONFIG = MAIN_CONFIG

    def test_head_retry_and_events_in_order(self):
        s = SSE(self.srv.port, "/sse?topics=ord:a,ord:b")
        try:
            self.assertEqual(s.status, 200)
            self.assertEqual(s.headers["content-type"], "text/event-stream")
            self.assertEqual(s.headers["cache-control"], "no-cache")
            self.assertEqual(s.headers["x-accel-buffering"], "no")
            pos = s.wait_ready()
            self.assertEqual(s.retry, 2000)
            self.assertEqual(set(pos), {"ord:a", "ord:b"})
            self.assertEqual(pos["ord:a"][0], 0)
            for i in range(5):
                self.srv.publish("ord:a", "ADDED", {"i": i})
            for i in range(3):
                self.srv.publish("ord:b", "ADDED", {"i": i})
            got = [s.event() for _ in range(8)]
            self.assertEqual([e["seq"] for e in got if e["topic"] == "ord:a"], [1, 2, 3, 4, 5])
            self.assertEqual([e["seq"] for e in got if e["topic"] == "ord:b"], [1, 2, 3])
            last = decode_cursor(s.last_id)
            self.assertEqual((last["ord:a"][0], last["ord:b"][0]), (5, 3))
            self.assertEqual(got[0]["id"], "ord:a:1")
            self.assertEqual(got[0]["data"]["i"], 0)
        finally:
            s.close()
        self.srv.wait_metric("moonwire_sse_streams", lambda v: v == 0)

    def test_reconnect_with_last_event_id(self):
        s = SSE(self.srv.port, "/sse?topics=resume:x")
        s.wait_ready()
        for i in range(3):
            self.srv.publish("resume:x", "E", {"i": i})
        for seq in (1, 2, 3):
            self.assertEqual(s.event()["seq"], seq)
        last = s.last_id
        s.close()
        for i in range(3):
            self.srv.publish("resume:x", "E", {"i": i + 3})
        s = SSE(self.srv.port, "/sse?topics=resume:x", {"Last-Event-ID": last})
        try:
            self.assertEqual([s.event()["seq"] for _ in range(3)], [4, 5, 6])
            self.srv.publish("resume:x", "E", {"i": 6})
            self.srv.publish("resume:x", "E", {"i": 7})
            # Live after the replay, with no duplicate in between.
            self.assertEqual([s.event()["seq"] for _ in range(2)], [7, 8])
        finally:
            s.close()

    def test_since_query_works_the_same(self):
        s = SSE(self.srv.port, "/sse?topics=since:x,since:y")
        start = s.wait_ready()
        s.close()
        for i in range(4):
            self.srv.publish("since:x", "E", {"i": i})
        self.srv.publish("since:y", "E")
        cur = base64.urlsafe_b64encode(json.dumps(start, separators=(",", ":")).encode()).decode().rstrip("=")
        s = SSE(self.srv.port, f"/sse?topics=since:x,since:y&since={cur}")
        try:
            got = [(e["topic"], e["seq"]) for e in (s.event() for _ in range(5))]
            self.assertEqual([g for g in got if g[0] == "since:x"],
                             [("since:x", i) for i in (1, 2, 3, 4)])
            self.assertEqual([g for g in got if g[0] == "since:y"], [("since:y", 1)])
        finally:
            s.close()

    def test_quiet_stream_resumes_from_its_start(self):
        s = SSE(self.srv.port, "/sse?topics=quiet:x")
        s.wait_ready()
        first_id = s.last_id
        s.close()
        self.srv.publish("quiet:x", "E")
        s = SSE(self.srv.port, "/sse?topics=quiet:x", {"Last-Event-ID": first_id})
        try:
            self.assertEqual(s.event()["seq"], 1)
        finally:
            s.close()

    def test_heartbeat(self):
        s = SSE(self.srv.port, "/sse?topics=hb:x")
        try:
            t0 = time.monotonic()
            while True:
                b = s.block(timeout=3.0)
                if "hb" in b["comments"]:
                    break
            self.assertLess(time.monotonic() - t0, 3.0)
        finally:
            s.close()

    def test_client_gone_frees_the_stream(self):
        before = self.srv.metric("moonwire_sse_streams")
        socks = [SSE(self.srv.port, "/sse?topics=gone:x") for _ in range(5)]
        for s in socks:
            s.wait_ready()
        self.srv.wait_metric("moonwire_sse_streams", lambda v: v >= before + 5)
        for s in socks:
            s.close()
        self.srv.wait_metric("moonwire_sse_streams", lambda v: v == before)
        self.srv.publish("gone:x", "E")
        self.assertServerAlive()

    def test_race_reconnect_while_publishing(self):
        pub = Publisher(self.srv, "race:sse")
        s = SSE(self.srv.port, "/sse?topics=race:sse")
        s.wait_ready()
        pub.start()
        try:
            ids = []
            seqs = []
            for _ in range(30):
                e = s.event(10)
                seqs.append(e["seq"])
                ids.append(s.last_id)
            s.close()
            self.assertEqual(seqs, list(range(seqs[0], seqs[0] + 30)))
            for attempt in range(4):
                # Resume from an older position while events keep coming.
                old_id = ids[10]
                old = decode_cursor(old_id)["race:sse"][0]
                s = SSE(self.srv.port, "/sse?topics=race:sse", {"Last-Event-ID": old_id})
                got, ids = [], []
                for _ in range(40):
                    got.append(s.event(10)["seq"])
                    ids.append(s.last_id)
                s.close()
                self.assertEqual(got, list(range(old + 1, old + 41)),
                                 f"attempt {attempt}: gap or duplicate")
        finally:
            pub.stop()
        self.assertGreater(pub.count, 0)


class LongPoll(ServerTestCase):
    SERVER_CONFIG = MAIN_CONFIG

    def test_events_then_cursor_gets_exactly_the_newer(self):
        r = poll(self.srv, "lp:a,lp:b", timeout=0)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json["events"], [])
        cur = r.json["cursor"]
        for i in range(3):
            self.srv.publish("lp:a", "E", {"i": i})
        self.srv.publish("lp:b", "E")
        r = poll(self.srv, "lp:a,lp:b", cur, 10)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.headers["content-type"], "application/json")
        got = [(e["topic"], e["seq"]) for e in r.json["events"]]
        self.assertEqual(sorted(got), [("lp:a", 1), ("lp:a", 2), ("lp:a", 3), ("lp:b", 1)])
        self.assertEqual(r.json["events"][0]["type"], "event")
        cur = r.json["cursor"]
        pos = decode_cursor(cur)
        self.assertEqual((pos["lp:a"][0], pos["lp:b"][0]), (3, 1))
        self.srv.publish("lp:a", "E")
        self.srv.publish("lp:a", "E")
        r = poll(self.srv, "lp:a,lp:b", cur, 10)
        self.assertEqual([(e["topic"], e["seq"]) for e in r.json["events"]],
                         [("lp:a", 4), ("lp:a", 5)])
        self.assertNotIn("recovered", r.json)

    def test_timeout_without_events(self):
        t0 = time.monotonic()
        r = poll(self.srv, "lp:quiet", timeout=1)
        dt = time.monotonic() - t0
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json["events"], [])
        self.assertIn("lp:quiet", decode_cursor(r.json["cursor"]))
        self.assertGreaterEqual(dt, 0.9)
        self.assertLess(dt, 3.0)

    def test_waits_for_newer_events_without_cursor(self):
        self.srv.publish("lp:wait", "OLD")
        box = {}
        t = threading.Thread(target=lambda: box.update(r=poll(self.srv, "lp:wait", timeout=20)))
        before = self.srv.metric("moonwire_longpoll_waiting")
        t.start()
        self.srv.wait_metric("moonwire_longpoll_waiting", lambda v: v > before)
        self.srv.publish("lp:wait", "NEW")
        t.join(15)
        r = box["r"]
        self.assertEqual([e["event"] for e in r.json["events"]], ["NEW"])
        self.assertEqual(r.json["events"][0]["seq"], 2)

    def test_abort_while_waiting(self):
        before = self.srv.metric("moonwire_longpoll_waiting")
        sock = socket.create_connection(("127.0.0.1", self.srv.port), timeout=5)
        sock.sendall(b"GET /poll?topics=lp:abort&timeout=60 HTTP/1.1\r\nHost: x\r\n\r\n")
        self.srv.wait_metric("moonwire_longpoll_waiting", lambda v: v == before + 1)
        sock.close()
        self.srv.wait_metric("moonwire_longpoll_waiting", lambda v: v == before)
        self.assertServerAlive()

    def test_race_polls_while_publishing(self):
        r = poll(self.srv, "race:lp", timeout=0)
        cur = r.json["cursor"]
        pub = Publisher(self.srv, "race:lp")
        pub.start()
        seqs = []
        try:
            while len(seqs) < 300:
                r = poll(self.srv, "race:lp", cur, 10)
                self.assertEqual(r.status, 200)
                seqs += [e["seq"] for e in r.json["events"]]
                cur = r.json["cursor"]
            # And from an older position again.
            old = seqs[len(seqs) // 2]
            older = decode_cursor(cur)
            older["race:lp"][0] = old
            c2 = base64.urlsafe_b64encode(json.dumps(older).encode()).decode().rstrip("=")
            r = poll(self.srv, "race:lp", c2, 10)
            again = [e["seq"] for e in r.json["events"]]
        finally:
            pub.stop()
        self.assertEqual(seqs, list(range(1, len(seqs) + 1)), "gap or duplicate")
        self.assertEqual(again, list(range(old + 1, old + 1 + len(again))))
        self.assertGreater(len(again), 0)


class CorsAndBadInput(ServerTestCase):
    SERVER_CONFIG = MAIN_CONFIG

    def test_preflight(self):
        r = self.srv.http("OPTIONS", "/sse", headers={
            "Origin": "http://localhost:3000", "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "Last-Event-ID"})
        self.assertEqual(r.status, 204)
        self.assertEqual(r.headers["access-control-allow-origin"], "http://localhost:3000")
        self.assertIn("last-event-id", r.headers["access-control-allow-headers"].lower())
        r = self.srv.http("OPTIONS", "/sse", headers={"Origin": "http://evil.example"})
        self.assertEqual(r.status, 403)

    def test_origin_on_streams(self):
        s = SSE(self.srv.port, "/sse?topics=cors:x", {"Origin": "http://localhost:3000"})
        try:
            self.assertEqual(s.status, 200)
            self.assertEqual(s.headers["access-control-allow-origin"], "http://localhost:3000")
        finally:
            s.close()
        s = SSE(self.srv.port, "/sse?topics=cors:x", {"Origin": "http://evil.example"})
        self.assertEqual(s.status, 403)
        s.close()
        r = poll(self.srv, "cors:x", timeout=0, headers={"Origin": "http://localhost:3000"})
        self.assertEqual(r.status, 200)
        self.assertEqual(r.headers["access-control-allow-origin"], "http://localhost:3000")
        r = poll(self.srv, "cors:x", timeout=0, headers={"Origin": "http://evil.example"})
        self.assertEqual(r.status, 403)

    def test_bad_topics_lists(self):
        many = ",".join(f"t{i}" for i in range(10000))
        cases = ["topics=", "topics=,", "topics=a,,b", "topics=a%20b", "topics=a,",
                 "topics=%01x", "", "topic=a", "topics=" + "x" * 300,
                 "topics=" + ",".join(f"u{i}" for i in range(257)),
                 "topics=" + many]
        for q in cases:
            for path in ("/sse", "/poll"):
                st, js, r = self.srv.http_json("GET", f"{path}?{q}")
                self.assertEqual(st, 400, f"{path}?{q[:40]}: {r!r}")
                self.assertIsInstance(js.get("error"), str)
        st, js, _ = self.srv.http_json("GET", "/poll?topics=" + many)
        self.assertIn("too many topics", js["error"])
        self.assertServerAlive()

    def test_malformed_cursors(self):
        bad = ["%%%", "abc=", "eyJ0IjpbNSwiZTEiXX0=", "!!", "A", "W10", "InMi",
               base64.urlsafe_b64encode(b'{"t":[-1,"e"]}').decode().rstrip("="),
               base64.urlsafe_b64encode(b'{"t":[1]}').decode().rstrip("="),
               base64.urlsafe_b64encode(b'{"a b":[1,"e"]}').decode().rstrip("="),
               "A" * 9000]
        for c in bad:
            st, js, r = self.srv.http_json("GET", f"/poll?topics=t&cursor={c}&timeout=0")
            self.assertEqual(st, 400, f"cursor {c[:30]}: {r!r}")
            st, js, r = self.srv.http_json("GET", f"/sse?topics=t&since={c}")
            self.assertEqual(st, 400, f"since {c[:30]}: {r!r}")
            if len(c) < 1000:
                s = SSE(self.srv.port, "/sse?topics=t", {"Last-Event-ID": c})
                self.assertEqual(s.status, 400, f"Last-Event-ID {c!r}")
                self.assertIn("cursor", s.body["error"])
                s.close()
        for t in ("abc", "-1", "121", "1.5", "1e3"):
            st, js, _ = self.srv.http_json("GET", f"/poll?topics=t&timeout={t}")
            self.assertEqual(st, 400, t)
        self.assertServerAlive()


class Recovery(DumpOnFailure):
    def start(self, config=SMALL_HISTORY):
        srv = Server(config=config, name="recovery").start()
        self.servers_to_dump.append(srv)
        self.addCleanup(srv.stop)
        return srv

    def test_beyond_history_sse_and_poll(self):
        srv = self.start()
        s = SSE(srv.port, "/sse?topics=rec:x")
        s.wait_ready()
        srv.publish("rec:x", "E")
        self.assertEqual(s.event()["seq"], 1)
        last = s.last_id
        s.close()
        for _ in range(10):
            srv.publish("rec:x", "E")
        s = SSE(srv.port, "/sse?topics=rec:x", {"Last-Event-ID": last})
        try:
            name, data, b = s.message()
            self.assertEqual(name, "moonwire")
            self.assertEqual(data["type"], "recovery")
            self.assertEqual(data["topic"], "rec:x")
            self.assertIs(data["recovered"], False)
            self.assertEqual(data["seq"], 11)
            self.assertEqual(decode_cursor(b["id"])["rec:x"][0], 11)
            srv.publish("rec:x", "E")
            self.assertEqual(s.event()["seq"], 12)  # then live
        finally:
            s.close()
        r = poll(srv, "rec:x", last, 10)
        self.assertEqual(r.status, 200)
        self.assertIs(r.json["recovered"], False)
        self.assertEqual(r.json["unrecovered"], ["rec:x"])
        self.assertEqual(decode_cursor(r.json["cursor"])["rec:x"][0], 12)

    def test_new_epoch_after_restart(self):
        srv = self.start()
        srv.publish("ep:x", "E")
        r = poll(srv, "ep:x", timeout=0)
        old = r.json["cursor"]
        s = SSE(srv.port, "/sse?topics=ep:x")
        s.wait_ready()
        old_id = s.last_id
        s.close()
        srv.stop()
        srv2 = self.start()
        srv2.publish("ep:x", "E")
        srv2.publish("ep:x", "E")
        s = SSE(srv2.port, "/sse?topics=ep:x", {"Last-Event-ID": old_id})
        try:
            name, data, _ = s.message()
            self.assertEqual((name, data["recovered"], data["seq"]), ("moonwire", False, 2))
            self.assertNotEqual(data["epoch"], decode_cursor(old_id)["ep:x"][1])
        finally:
            s.close()
        r = poll(srv2, "ep:x", old, 10)
        self.assertIs(r.json["recovered"], False)
        self.assertEqual(decode_cursor(r.json["cursor"])["ep:x"][0], 2)

    def test_default_request_line_limit_is_clear(self):
        srv = self.start()
        many = ",".join(f"t{i}" for i in range(10000))
        st, js, _ = srv.http_json("GET", "/sse?topics=" + many)
        self.assertEqual(st, 414)
        self.assertTrue(srv.healthy())

    def test_api_disconnect_ends_streams_and_polls(self):
        srv = self.start()
        s = SSE(srv.port, "/sse?topics=kick:x")
        s.wait_ready()
        box = {}
        t = threading.Thread(target=lambda: box.update(r=poll(srv, "kick:x", timeout=60)))
        t.start()
        srv.wait_metric("moonwire_longpoll_waiting", lambda v: v == 1)
        st, js, _ = srv.http_json("POST", "/api/disconnect", {"user_id": "anonymous"})
        self.assertEqual((st, js), (200, {"disconnected": 2}))
        name, data, _ = s.message()
        self.assertEqual((name, data["type"]), ("moonwire", "disconnect"))
        self.assertTrue(s.wait_eof(5))
        s.close()
        t.join(10)
        self.assertEqual(box["r"].status, 200)
        self.assertIs(box["r"].json["disconnected"], True)
        self.assertIn("cursor", box["r"].json)

    def test_drain_ends_streams_and_answers_polls(self):
        srv = self.start()
        s = SSE(srv.port, "/sse?topics=drain:x")
        s.wait_ready()
        box = {}
        t = threading.Thread(target=lambda: box.update(r=poll(srv, "drain:x", timeout=60)))
        t.start()
        srv.wait_metric("moonwire_longpoll_waiting", lambda v: v == 1)
        srv.proc.send_signal(mwtest.signal.SIGTERM)
        self.assertTrue(s.wait_eof(5), "the SSE stream did not end")
        t.join(10)
        self.assertEqual(box["r"].status, 200)
        self.assertEqual(box["r"].json["events"], [])
        s.close()
        srv.stop()


if __name__ == "__main__":
    unittest.main()
