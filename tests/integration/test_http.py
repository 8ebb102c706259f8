"""SPEC §2: the HTTP endpoints and the server API, against the real binary."""
import http.client
import json
import re
import socket
import unittest

import mwtest
from mwtest import ISO_TS, ServerTestCase, raw_http, split_responses, ws_connect, \
    ws_recv, ws_subscribe, run_async


class Basics(ServerTestCase):
    def test_healthz(self):
        st, js, r = self.srv.http_json("GET", "/healthz")
        self.assertEqual(st, 200)
        self.assertEqual(js, {"status": "ok"})
        self.assertTrue(r.headers["content-type"].startswith("application/json"))

    def test_index_page(self):
        r = self.srv.http("GET", "/")
        self.assertEqual(r.status, 200)
        self.assertTrue(r.headers["content-type"].startswith("text/html"))
        self.assertIn(b"moonwire", r.body)

    def test_unknown_path_404(self):
        st, js, _ = self.srv.http_json("GET", "/no/such/thing")
        self.assertEqual(st, 404)
        self.assertIn("error", js)

    def test_wrong_method_405(self):
        for method, path in (("GET", "/api/publish"), ("POST", "/healthz"),
                             ("DELETE", "/metrics"), ("PUT", "/api/broadcast")):
            st, js, _ = self.srv.http_json(method, path)
            self.assertEqual(st, 405, f"{method} {path}")
            self.assertIn("error", js)

    def test_query_string_does_not_change_routing(self):
        st, js, _ = self.srv.http_json("GET", "/healthz?x=1&y=2")
        self.assertEqual((st, js), (200, {"status": "ok"}))


class Publish(ServerTestCase):
    def test_publish_returns_id_seq_topic(self):
        js = self.srv.publish("pub:first", "ADDED", {"k": 1})
        self.assertEqual(js["id"], "pub:first:1")
        self.assertEqual(js["seq"], 1)
        self.assertEqual(js["topic"], "pub:first")
        self.assertLessEqual({"id", "seq", "topic"}, set(js))

    def test_seq_increases_by_one_per_topic(self):
        seqs_a = [self.srv.publish("seq:a", "E")["seq"] for _ in range(5)]
        seqs_b = [self.srv.publish("seq:b", "E")["seq"] for _ in range(3)]
        seqs_a += [self.srv.publish("seq:a", "E")["seq"] for _ in range(2)]
        self.assertEqual(seqs_a, [1, 2, 3, 4, 5, 6, 7])
        self.assertEqual(seqs_b, [1, 2, 3])
        self.assertEqual(self.srv.publish("seq:a", "E")["id"], "seq:a:8")

    def test_publish_without_data(self):
        js = self.srv.publish("nodata", "DELETED")
        self.assertEqual(js["seq"], 1)

    def test_bad_requests_400(self):
        before = self.srv.metrics()
        cases = [
            ({"topic": "t"}, "missing event"),
            ({"event": "E"}, "missing topic"),
            ({"topic": "has space", "event": "E"}, "topic with a space"),
            ({"topic": "a,b", "event": "E"}, "topic with a comma"),
            ({"topic": "", "event": "E"}, "empty topic"),
            ({"topic": "x" * 300, "event": "E"}, "topic too long"),
            ({"topic": 5, "event": "E"}, "topic not a string"),
            ({"topic": "t", "event": 5}, "event not a string"),
            ({"topic": "t", "event": ""}, "empty event"),
            ({"topic": "t", "event": "E", "data": [1, 2]}, "data an array"),
            ({"topic": "t", "event": "E", "data": "text"}, "data a string"),
            ({"topic": "t", "event": "E", "data": 3}, "data a number"),
            ({"topic": "t", "event": "E", "trace_id": 7}, "trace_id not a string"),
            ({"topic": "t", "event": "E", "trace_id": "has space"}, "bad trace_id"),
            ([1, 2, 3], "body an array"),
        ]
        for body, why in cases:
            st, js, r = self.srv.http_json("POST", "/api/publish", body)
            self.assertEqual(st, 400, f"{why}: {r!r}")
            self.assertIsInstance(js, dict, why)
            self.assertIsInstance(js.get("error"), str, why)
            self.assertTrue(js["error"], why)
        for raw, why in ((b"{not json", "malformed JSON"), (b"", "empty body"),
                         (b'{"topic":"t","event":"E"', "truncated JSON"),
                         (b'{"topic":"t","topic":"u","event":"E"}', "duplicate key")):
            st, js, r = self.srv.http_json("POST", "/api/publish", raw,
                                           {"Content-Type": "application/json"})
            self.assertEqual(st, 400, f"{why}: {r!r}")
            self.assertIsInstance(js.get("error"), str, why)
        after = self.srv.metrics()
        # Nothing was published by the bad requests.
        self.assertEqual(after["moonwire_events_published_total"],
                         before["moonwire_events_published_total"])
        # The topic was never created: its first real publish is seq 1.
        self.assertEqual(self.srv.publish("t", "E")["seq"], 1)

    def test_broadcast_three_topics(self):
        self.srv.publish("bc:b", "E")  # bc:b is at seq 1 already
        st, js, r = self.srv.http_json("POST", "/api/broadcast", {
            "topics": ["bc:a", "bc:b", "bc:c"], "event": "STATUS_CHANGED",
            "data": {"status": "on"}})
        self.assertEqual(st, 200, r)
        res = js["results"]
        self.assertEqual(len(res), 3)
        self.assertEqual([x["topic"] for x in res], ["bc:a", "bc:b", "bc:c"])
        self.assertEqual([x["seq"] for x in res], [1, 2, 1])
        self.assertEqual([x["id"] for x in res], ["bc:a:1", "bc:b:2", "bc:c:1"])
        st, js, r = self.srv.http_json("POST", "/api/broadcast", {
            "topics": ["bc:a", "bc:b", "bc:c"], "event": "E"})
        self.assertEqual(st, 200, r)
        self.assertEqual([x["seq"] for x in js["results"]], [2, 3, 2])

    def test_broadcast_bad_requests(self):
        for body in ({"topics": [], "event": "E"}, {"topics": "a", "event": "E"},
                     {"topics": ["a"]}, {"topics": ["a", "b c"], "event": "E"},
                     {"topics": ["a", 3], "event": "E"},
                     {"topics": ["a"], "event": "E", "data": [1]},
                     {"topics": ["t%d" % i for i in range(1001)], "event": "E"}):
            st, js, r = self.srv.http_json("POST", "/api/broadcast", body)
            self.assertEqual(st, 400, f"{body!r:.80}: {r!r}")
            self.assertIn("error", js)

    def test_metrics_prometheus_text(self):
        r = self.srv.http("GET", "/metrics")
        self.assertEqual(r.status, 200)
        self.assertTrue(r.headers["content-type"].startswith("text/plain"))
        self.assertIn("version=0.0.4", r.headers["content-type"])
        types = {}
        for line in r.text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ")
                self.assertIn(kind, ("counter", "gauge"))
                self.assertNotIn(name, types, f"TYPE twice for {name}")
                types[name] = kind
            elif line.startswith("# HELP "):
                continue
            else:
                self.assertRegex(line, r'^[a-z_:][a-z0-9_:]*(\{[a-z_]+="[^"]*"'
                                       r'(,[a-z_]+="[^"]*")*\})? -?\d+(\.\d+)?$')
        for name in ("moonwire_events_published_total", "moonwire_tcp_connections",
                     "moonwire_http_requests_total", "moonwire_slow_consumer_closes_total"):
            self.assertIn(name, types)
        m0 = mwtest.parse_metrics(r.text)
        for _ in range(3):
            self.srv.publish("metrics:t", "E")
        m1 = self.srv.metrics()
        self.assertEqual(m1["moonwire_events_published_total"],
                         m0["moonwire_events_published_total"] + 3)
        self.assertGreater(m1["moonwire_http_requests_total"],
                           m0["moonwire_http_requests_total"])


class KeepAliveAndPipelining(ServerTestCase):
    def test_keep_alive_two_requests_one_connection(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.srv.port, timeout=10)
        try:
            conn.request("GET", "/healthz")
            r1 = conn.getresponse()
            self.assertEqual(r1.status, 200)
            self.assertEqual(json.loads(r1.read()), {"status": "ok"})
            self.assertEqual(r1.getheader("Connection"), "keep-alive")
            sock1 = conn.sock
            self.assertIsNotNone(sock1, "the connection was closed after one request")
            conn.request("POST", "/api/publish",
                         body=json.dumps({"topic": "ka", "event": "E"}),
                         headers={"Content-Type": "application/json"})
            r2 = conn.getresponse()
            self.assertEqual(r2.status, 200)
            self.assertEqual(json.loads(r2.read())["id"], "ka:1")
            self.assertIs(conn.sock, sock1, "http.client had to reconnect")
        finally:
            conn.close()

    def test_pipelined_requests_answered_in_order(self):
        body = json.dumps({"topic": "pipe", "event": "E"}).encode()
        data = (b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body +
                b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
                b"POST /api/publish HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body +
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        out, closed = raw_http(self.srv.port, data)
        self.assertTrue(closed, "the server did not close after Connection: close")
        resps = split_responses(out)
        self.assertEqual([r[0] for r in resps], [200, 404, 200, 200], out)
        self.assertEqual(json.loads(resps[0][2])["id"], "pipe:1")
        self.assertEqual(json.loads(resps[2][2])["id"], "pipe:2")
        self.assertEqual(json.loads(resps[3][2]), {"status": "ok"})
        self.assertEqual(resps[3][1]["connection"], "close")

    def test_http10_closes(self):
        out, closed = raw_http(self.srv.port, b"GET /healthz HTTP/1.0\r\n\r\n")
        self.assertTrue(closed)
        resps = split_responses(out)
        self.assertEqual(len(resps), 1)
        self.assertEqual(resps[0][0], 200)

    def test_request_split_across_writes(self):
        s = socket.create_connection(("127.0.0.1", self.srv.port), timeout=10)
        try:
            for part in (b"GET /hea", b"lthz HTTP/1.1\r\nHo", b"st: x\r\nConnection: close",
                         b"\r\n", b"\r\n"):
                s.sendall(part)
            out = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        finally:
            s.close()
        self.assertEqual(split_responses(out)[0][0], 200)


class ApiKey(ServerTestCase):
    SERVER_FLAGS = ["--api-key", "K-secret"]
    BODY = {"topic": "secure", "event": "E"}

    def test_no_key_401(self):
        before = self.srv.metric('moonwire_rejected_total{reason="api_auth"}')
        st, js, r = self.srv.http_json("POST", "/api/publish", self.BODY)
        self.assertEqual(st, 401)
        self.assertIsInstance(js, dict, f"the 401 body is not a JSON object: {r.body!r}")
        self.assertIn("error", js)
        self.assertIn("bearer", r.headers.get("www-authenticate", "").lower())
        self.assertEqual(self.srv.metric('moonwire_rejected_total{reason="api_auth"}'),
                         before + 1)

    def test_bearer_200(self):
        st, js, _ = self.srv.http_json("POST", "/api/publish", self.BODY,
                                       {"Authorization": "Bearer K-secret"})
        self.assertEqual(st, 200, js)

    def test_x_api_key_200(self):
        st, js, _ = self.srv.http_json("POST", "/api/publish", self.BODY,
                                       {"X-API-Key": "K-secret"})
        self.assertEqual(st, 200, js)

    def test_wrong_key_401(self):
        for h in ({"Authorization": "Bearer K-secreT"}, {"Authorization": "Bearer K-secret2"},
                  {"Authorization": "Bearer K-secre"}, {"X-API-Key": "nope"},
                  {"Authorization": "Basic K-secret"}, {"Authorization": "Bearer "}):
            st, js, _ = self.srv.http_json("POST", "/api/publish", self.BODY, h)
            self.assertEqual(st, 401, h)

    def test_broadcast_needs_key(self):
        body = {"topics": ["a", "b"], "event": "E"}
        st, _, _ = self.srv.http_json("POST", "/api/broadcast", body)
        self.assertEqual(st, 401)
        st, js, _ = self.srv.http_json("POST", "/api/broadcast", body,
                                       {"X-API-Key": "K-secret"})
        self.assertEqual(st, 200, js)

    def test_healthz_and_metrics_need_no_key(self):
        self.assertTrue(self.srv.healthy())
        self.assertIn("moonwire_tcp_connections", self.srv.metrics())


class EventFields(ServerTestCase):
    """trace_id and timestamp, as seen by a WebSocket subscriber."""

    def publish_and_receive(self, topic, **kw):
        async def go():
            ws = await ws_connect(self.srv)
            try:
                await ws_subscribe(ws, [topic])
                await __import__("asyncio").to_thread(self.srv.publish, topic, "UPDATED", **kw)
                return await ws_recv(ws, 5)
            finally:
                await ws.close()
        return run_async(go(), 30)

    def test_trace_id_echoed(self):
        ev = self.publish_and_receive("trace:given", data={"x": 1},
                                      trace_id="4bf92f3577b34da6")
        self.assertEqual(ev["type"], "event")
        self.assertEqual(ev["trace_id"], "4bf92f3577b34da6")

    def test_trace_id_generated(self):
        ev = self.publish_and_receive("trace:generated", data={"x": 1})
        self.assertIsInstance(ev.get("trace_id"), str)
        self.assertRegex(ev["trace_id"], r"^[0-9a-f]{16}$")  # docs/protocol.md

    def test_trace_id_in_publish_answer(self):
        js = self.srv.publish("trace:answer", "E", trace_id="abc-123.x:y_z")
        self.assertEqual(js["trace_id"], "abc-123.x:y_z")
        js = self.srv.publish("trace:answer", "E")
        self.assertRegex(js["trace_id"], r"^[0-9a-f]{16}$")

    def test_timestamp_added_when_absent(self):
        ev = self.publish_and_receive("ts:absent", data={"entity_id": "gift-7"})
        self.assertRegex(ev["data"]["timestamp"], ISO_TS)
        self.assertEqual(ev["data"]["entity_id"], "gift-7")

    def test_timestamp_added_without_data(self):
        ev = self.publish_and_receive("ts:nodata")
        self.assertRegex(ev["data"]["timestamp"], ISO_TS)

    def test_timestamp_kept_when_present(self):
        ev = self.publish_and_receive("ts:present",
                                      data={"timestamp": "2026-11-23T10:00:00.000Z", "n": 2})
        self.assertEqual(ev["data"], {"timestamp": "2026-11-23T10:00:00.000Z", "n": 2})


if __name__ == "__main__":
    unittest.main()
