"""SPEC §2/§3: the WebSocket transport with a real client (python3-websockets)."""
import asyncio
import json
import signal
import unittest

import msgpack
import websockets

import mwtest
from mwtest import ISO_TS, RawWS, Server, ServerTestCase, run_async, ws_connect, \
    ws_recv, ws_request, ws_send, ws_subscribe

ENVELOPE_KEYS = {"type", "topic", "event", "seq", "id", "data", "trace_id"}


def publish_async(srv, *a, **kw):
    return asyncio.to_thread(srv.publish, *a, **kw)


class Protocol(ServerTestCase):
    def arun(self, coro, timeout=30):
        return run_async(coro, timeout)

    def test_subprotocol_json_echoed(self):
        async def go():
            async with ws_connect(self.srv, "moonwire.json") as ws:
                self.assertEqual(ws.subprotocol, "moonwire.json")
                reply, _ = await ws_request(ws, {"type": "ping", "id": "p"})
                self.assertEqual(reply, {"type": "pong", "id": "p"})
        self.arun(go())

    def test_no_subprotocol_defaults_to_json(self):
        async def go():
            async with ws_connect(self.srv) as ws:
                self.assertIsNone(ws.subprotocol)
                reply, _ = await ws_request(ws, {"type": "ping", "id": "p0"})
                self.assertEqual(reply, {"type": "pong", "id": "p0"})
        self.arun(go())

    def test_subscribe_ack(self):
        async def go():
            for _ in range(3):
                await publish_async(self.srv, "ack:busy", "E")
            async with ws_connect(self.srv) as ws:
                reply, events = await ws_request(ws, {
                    "type": "subscribe", "id": "r1", "topics": ["ack:busy", "ack:fresh"]})
                self.assertEqual(events, [])
                self.assertEqual(reply["type"], "ack")
                self.assertEqual(reply["id"], "r1")
                topics = reply["data"]["topics"]
                self.assertEqual(set(topics), {"ack:busy", "ack:fresh"})
                self.assertEqual(topics["ack:busy"]["seq"], 3)
                self.assertEqual(topics["ack:fresh"]["seq"], 0)
                for t in topics.values():
                    self.assertIn("recovered", t)
                    self.assertIsInstance(t["recovered"], bool)
        self.arun(go())

    def test_event_envelope(self):
        async def go():
            async with ws_connect(self.srv) as ws:
                await ws_subscribe(ws, ["gift-list:family-123"])
                data = {"entity_id": "gift-7", "payload": {"name": "Bike"},
                        "user_id": "u1", "tenant_id": "family"}
                pub = await publish_async(self.srv, "gift-list:family-123", "UPDATED",
                                          data=data, trace_id="4bf92f3577b34da6")
                ev = await ws_recv(ws)
                self.assertEqual(set(ev), ENVELOPE_KEYS)
                self.assertEqual(ev["type"], "event")
                self.assertEqual(ev["topic"], "gift-list:family-123")
                self.assertEqual(ev["event"], "UPDATED")
                self.assertEqual(ev["seq"], 1)
                self.assertEqual(ev["seq"], pub["seq"])
                self.assertEqual(ev["id"], "gift-list:family-123:1")
                self.assertEqual(ev["trace_id"], "4bf92f3577b34da6")
                ts = ev["data"].pop("timestamp")
                self.assertRegex(ts, ISO_TS)
                self.assertEqual(ev["data"], data)
        self.arun(go())

    def test_seq_increments_and_id(self):
        async def go():
            async with ws_connect(self.srv) as ws:
                await ws_subscribe(ws, ["inc"])
                for i in range(10):
                    await publish_async(self.srv, "inc", "E", data={"i": i})
                got = [await ws_recv(ws) for _ in range(10)]
                self.assertEqual([e["seq"] for e in got], list(range(1, 11)))
                self.assertEqual([e["id"] for e in got], [f"inc:{i}" for i in range(1, 11)])
                self.assertEqual([e["data"]["i"] for e in got], list(range(10)))
        self.arun(go())

    def test_unsubscribe_stops_delivery(self):
        async def go():
            async with ws_connect(self.srv) as ws:
                await ws_subscribe(ws, ["unsub:t", "unsub:control"])
                await publish_async(self.srv, "unsub:t", "BEFORE")
                ev = await ws_recv(ws)
                self.assertEqual((ev["topic"], ev["event"]), ("unsub:t", "BEFORE"))
                reply, events = await ws_request(ws, {"type": "unsubscribe", "id": "u1",
                                                      "topics": ["unsub:t"]})
                self.assertEqual(events, [])
                self.assertEqual(reply["type"], "ack")
                self.assertEqual(reply["id"], "u1")
                await publish_async(self.srv, "unsub:t", "AFTER")
                await publish_async(self.srv, "unsub:control", "CONTROL")
                ev = await ws_recv(ws)
                self.assertEqual((ev["topic"], ev["event"]), ("unsub:control", "CONTROL"))
        self.arun(go())

    def test_ping_pong(self):
        async def go():
            async with ws_connect(self.srv) as ws:
                await ws_send(ws, {"type": "ping", "id": "p"})
                self.assertEqual(await ws_recv(ws), {"type": "pong", "id": "p"})
                await ws_send(ws, {"type": "ping"})
                self.assertEqual((await ws_recv(ws))["type"], "pong")
        self.arun(go())

    def test_client_publish(self):
        async def go():
            async with ws_connect(self.srv) as sub, ws_connect(self.srv) as pub:
                await ws_subscribe(sub, ["room:1"])
                reply, _ = await ws_request(pub, {
                    "type": "publish", "id": "m1", "topic": "room:1", "event": "CUSTOM",
                    "data": {"payload": {"text": "hi"}}})
                self.assertEqual(reply["type"], "ack", reply)
                self.assertEqual(reply["id"], "m1")
                self.assertEqual(reply["data"], {"status": "delivered", "seq": 1})
                ev = await ws_recv(sub)
                self.assertEqual(ev["type"], "event")
                self.assertEqual(ev["topic"], "room:1")
                self.assertEqual(ev["event"], "CUSTOM")
                self.assertEqual(ev["seq"], 1)
                self.assertEqual(ev["id"], "room:1:1")
                self.assertEqual(ev["data"]["payload"], {"text": "hi"})
                self.assertRegex(ev["data"]["timestamp"], ISO_TS)
                reply, _ = await ws_request(pub, {
                    "type": "publish", "id": "m2", "topic": "room:1", "event": "CUSTOM",
                    "data": {}})
                self.assertEqual(reply["data"], {"status": "delivered", "seq": 2})
                self.assertEqual((await ws_recv(sub))["seq"], 2)
        self.arun(go())

    def test_presence_and_auth_once(self):
        async def go():
            async with ws_connect(self.srv) as ws:
                # The first message authenticates (the default policy lets
                # anyone in); a second auth is refused, the connection stays.
                reply, _ = await ws_request(ws, {"type": "auth", "id": "a0", "token": "t"})
                self.assertEqual(reply["type"], "ack")
                self.assertEqual(reply["data"]["user_id"], "anonymous")
                for msg, code in (({"type": "presence", "id": "pr", "topic": "room:1"}, 403),
                                  ({"type": "auth", "id": "au", "token": "t"}, 400)):
                    reply, _ = await ws_request(ws, msg)
                    self.assertEqual(reply["type"], "error", msg)
                    self.assertEqual(reply["code"], code, msg)
                # Subscribed, the connection may ask who else is there.
                reply, _ = await ws_request(ws, {"type": "subscribe", "id": "s1",
                                                 "topics": ["room:1"]})
                self.assertEqual(reply["type"], "ack")
                reply, _ = await ws_request(ws, {"type": "presence", "id": "pr2",
                                                 "topic": "room:1"})
                self.assertEqual(reply["type"], "ack")
                self.assertEqual(reply["data"]["clients"], 1)
                self.assertEqual(reply["data"]["users"], ["anonymous"])
                reply, _ = await ws_request(ws, {"type": "ping", "id": "open"})
                self.assertEqual(reply["type"], "pong")
        self.arun(go())

    def test_client_publish_invalid(self):
        async def go():
            async with ws_connect(self.srv) as ws:
                for i, msg in enumerate([
                        {"type": "publish", "topic": "a b", "event": "E"},
                        {"type": "publish", "topic": "ok"},
                        {"type": "publish", "topic": "ok", "event": "E", "data": [1]}]):
                    msg["id"] = f"bad{i}"
                    reply, _ = await ws_request(ws, msg)
                    self.assertEqual(reply["type"], "error", msg)
                    self.assertEqual(reply["code"], 400, msg)
                    self.assertIsInstance(reply["reason"], str)
                reply, _ = await ws_request(ws, {"type": "ping", "id": "still"})
                self.assertEqual(reply["type"], "pong")
        self.arun(go())

    def test_msgpack(self):
        async def go():
            async with ws_connect(self.srv, "moonwire.msgpack") as mp, \
                    ws_connect(self.srv, "moonwire.json") as js:
                self.assertEqual(mp.subprotocol, "moonwire.msgpack")
                await mp.send(msgpack.packb({"type": "subscribe", "id": "r1",
                                             "topics": ["mp:t"]}))
                raw = await asyncio.wait_for(mp.recv(), 5)
                self.assertIsInstance(raw, bytes, "msgpack replies must be binary frames")
                ack = msgpack.unpackb(raw, raw=False)
                self.assertEqual(ack["type"], "ack")
                self.assertEqual(ack["id"], "r1")
                self.assertEqual(ack["data"]["topics"]["mp:t"]["seq"], 0)
                await ws_subscribe(js, ["mp:t"])
                await publish_async(self.srv, "mp:t", "ADDED",
                                    data={"n": 1, "f": 1.5, "s": "é", "l": [1, "x"],
                                          "o": {"b": True, "z": None}},
                                    trace_id="mp-trace")
                raw = await asyncio.wait_for(mp.recv(), 5)
                self.assertIsInstance(raw, bytes)
                ev_mp = msgpack.unpackb(raw, raw=False)
                ev_js = await ws_recv(js)
                self.assertEqual(ev_mp, ev_js)
                self.assertEqual(set(ev_mp), ENVELOPE_KEYS)
                self.assertEqual(ev_mp["id"], "mp:t:1")
                self.assertEqual(ev_mp["data"]["o"], {"b": True, "z": None})
                # ping and client publish over msgpack
                reply, _ = await ws_request(mp, {"type": "ping", "id": "pp"})
                self.assertEqual(reply, {"type": "pong", "id": "pp"})
                reply, _ = await ws_request(mp, {"type": "publish", "id": "m", "topic": "mp:u",
                                                 "event": "E", "data": {"k": 1}})
                self.assertEqual(reply["data"], {"status": "delivered", "seq": 1})
        self.arun(go())

    def test_msgpack_text_frame_is_an_error(self):
        async def go():
            async with ws_connect(self.srv, "moonwire.msgpack") as mp:
                await mp.send(json.dumps({"type": "ping", "id": "x"}))
                err = msgpack.unpackb(await asyncio.wait_for(mp.recv(), 5), raw=False)
                self.assertEqual(err["type"], "error")
                self.assertEqual(err["code"], 400)
                reply, _ = await ws_request(mp, {"type": "ping", "id": "after"})
                self.assertEqual(reply["type"], "pong")
        self.arun(go())

    def test_json_binary_frame_is_an_error(self):
        async def go():
            async with ws_connect(self.srv) as ws:
                await ws.send(msgpack.packb({"type": "ping", "id": "x"}))
                err = await ws_recv(ws)
                self.assertEqual(err["type"], "error")
                self.assertEqual(err["code"], 400)
                reply, _ = await ws_request(ws, {"type": "ping", "id": "after"})
                self.assertEqual(reply["type"], "pong")
        self.arun(go())

    def test_subscribe_invalid(self):
        async def go():
            async with ws_connect(self.srv) as ws:
                for msg in ({"type": "subscribe", "id": "s1"},
                            {"type": "subscribe", "id": "s2", "topics": []},
                            {"type": "subscribe", "id": "s3", "topics": "a"},
                            {"type": "subscribe", "id": "s4", "topics": [1]},
                            {"type": "subscribe", "id": "s5", "topics": ["x" * 300]},
                            {"type": "subscribe", "id": "s6", "topics": ["a b"]},
                            {"type": "subscribe", "id": "s7", "topics": ["a"], "since": 3}):
                    reply, _ = await ws_request(ws, msg)
                    self.assertEqual(reply["type"], "error", msg)
                    self.assertEqual(reply["code"], 400, msg)
                reply, _ = await ws_request(ws, {"type": "ping", "id": "alive"})
                self.assertEqual(reply["type"], "pong")
        self.arun(go())

    def test_topic_limit_per_connection(self):
        async def go():
            async with ws_connect(self.srv) as ws:
                topics = [f"lim:{i}" for i in range(256)]
                ack = await ws_subscribe(ws, topics, timeout=10)
                self.assertEqual(len(ack["data"]["topics"]), 256)
                reply, _ = await ws_request(ws, {"type": "subscribe", "id": "over",
                                                 "topics": ["lim:256"]})
                self.assertEqual(reply["type"], "error")
                self.assertEqual(reply["code"], 429)
        self.arun(go())

    def test_handshake_errors(self):
        port = self.srv.port
        base = ("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n")
        key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        cases = [
            (base + "Sec-WebSocket-Version: 13\r\n\r\n", 400),                 # no key
            (base + key + "Sec-WebSocket-Version: 8\r\n\r\n", 426),            # old version
            (base + "Sec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n", 400),
            ("GET /ws HTTP/1.1\r\nHost: x\r\n" + key + "Sec-WebSocket-Version: 13\r\n\r\n", 400),
        ]
        for req, want in cases:
            out, _ = mwtest.raw_http(port, req.encode(), responses=1)
            resps = mwtest.split_responses(out)
            self.assertEqual(resps[0][0], want, req)
            self.assertIn("error", json.loads(resps[0][2]))
            if want == 426:
                self.assertEqual(resps[0][1].get("sec-websocket-version"), "13")
        self.assertServerAlive()


class MultiWorker(ServerTestCase):
    SERVER_FLAGS = ["--workers", "2"]
    CLIENTS = 20
    EVENTS = 30

    def test_all_clients_receive_every_event_in_order(self):
        delivered0 = self.srv.metric("moonwire_events_delivered_total")

        async def go():
            socks = [await ws_connect(self.srv) for _ in range(self.CLIENTS)]
            try:
                for i, ws in enumerate(socks):
                    await ws_subscribe(ws, ["mw:fan"], rid=f"s{i}")
                # Publish through both workers' HTTP sides too.
                for i in range(self.EVENTS):
                    await publish_async(self.srv, "mw:fan", "E", data={"i": i})

                async def collect(ws):
                    return [await ws_recv(ws, 10) for _ in range(self.EVENTS)]
                results = await asyncio.gather(*(collect(ws) for ws in socks))
                for evs in results:
                    self.assertEqual([e["seq"] for e in evs], list(range(1, self.EVENTS + 1)))
                    self.assertEqual([e["data"]["i"] for e in evs], list(range(self.EVENTS)))
                # Client publish on each connection reaches every subscriber.
                for i, ws in enumerate(socks):
                    reply, _ = await ws_request(ws, {"type": "publish", "id": f"p{i}",
                                                     "topic": "mw:other", "event": "E"})
                    self.assertEqual(reply["data"]["seq"], i + 1)
            finally:
                await asyncio.gather(*(ws.close() for ws in socks))
            m = self.srv.metrics()
            self.assertEqual(m["moonwire_events_delivered_total"] - delivered0,
                             self.CLIENTS * self.EVENTS)
        run_async(go(), 60)
        self.srv.wait_metric("moonwire_ws_connections", lambda v: v == 0)

    def test_concurrent_publishers_delivered_in_seq_order(self):
        """Publishers on both workers at once: every subscriber still sees
        1..N in order, no gaps, no duplicates."""
        import http.client
        import threading
        publishers, per = 6, 50
        total = publishers * per

        def publish_many(k, seqs):
            conn = http.client.HTTPConnection("127.0.0.1", self.srv.port, timeout=10)
            try:
                for i in range(per):
                    conn.request("POST", "/api/publish",
                                 json.dumps({"topic": "mw:race", "event": "E",
                                             "data": {"k": k, "i": i}}),
                                 {"Content-Type": "application/json"})
                    r = conn.getresponse()
                    seqs.append(json.loads(r.read())["seq"])
            finally:
                conn.close()

        async def go():
            socks = [await ws_connect(self.srv) for _ in range(self.CLIENTS)]
            try:
                for i, ws in enumerate(socks):
                    await ws_subscribe(ws, ["mw:race"], rid=f"r{i}")
                seqs = [[] for _ in range(publishers)]
                threads = [threading.Thread(target=publish_many, args=(k, seqs[k]))
                           for k in range(publishers)]

                def run_all():
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join(60)
                await asyncio.gather(asyncio.to_thread(run_all))

                async def collect(ws):
                    return [await ws_recv(ws, 10) for _ in range(total)]
                results = await asyncio.gather(*(collect(ws) for ws in socks))
                return seqs, results
            finally:
                await asyncio.gather(*(ws.close() for ws in socks))
        seqs, results = run_async(go(), 90)
        self.assertEqual(sorted(s for ss in seqs for s in ss), list(range(1, total + 1)))
        for ss in seqs:
            self.assertEqual(ss, sorted(ss), "one publisher's seqs must increase")
        for evs in results:
            self.assertEqual([e["seq"] for e in evs], list(range(1, total + 1)))


class Drain(mwtest.DumpOnFailure):
    """SIGTERM: every WebSocket gets close 1001 "going away"; exit 0."""

    def test_sigterm_closes_websockets_1001(self):
        srv = Server(name="drain").start()
        self.servers_to_dump.append(srv)
        try:
            a = RawWS(srv.port)
            a.send_json({"type": "subscribe", "id": "s", "topics": ["d"]})
            self.assertEqual(a.recv_json()["type"], "ack")

            async def go():
                ws = await ws_connect(srv)
                await ws_subscribe(ws, ["d"])
                srv.proc.send_signal(signal.SIGTERM)
                with self.assertRaises(websockets.ConnectionClosed) as cm:
                    await asyncio.wait_for(ws.recv(), 10)
                return cm.exception
            exc = run_async(go(), 30)
            self.assertEqual(exc.rcvd.code, 1001)
            self.assertEqual(exc.rcvd.reason, "going away")
            code, reason = a.recv_close(10)
            self.assertEqual((code, reason), (1001, "going away"))
            a.close()
            srv.stop()
        finally:
            srv.kill()


class IdleTimeout(ServerTestCase):
    SERVER_CONFIG = "return { limits = { idle_timeout = 1, ping_interval = 30 } }"

    def test_silent_connection_closed(self):
        a = RawWS(self.srv.port)
        try:
            code, reason = a.recv_close(10)
            self.assertEqual(code, 1001)
            self.assertIn("idle", reason)
            self.assertTrue(a.wait_eof(5))
        finally:
            a.close()
        self.assertServerAlive()


class ServerPings(ServerTestCase):
    SERVER_CONFIG = "return { limits = { idle_timeout = 30, ping_interval = 1 } }"

    def test_server_sends_pings(self):
        a = RawWS(self.srv.port)
        try:
            op, payload = a.recv_frame(10)
            self.assertEqual(op, 0x9, "expected a server ping")
            a.send_frame(0xA, payload)
            a.send_json({"type": "ping", "id": "x"})
            self.assertEqual(a.recv_json(), {"type": "pong", "id": "x"})
        finally:
            a.close()


if __name__ == "__main__":
    unittest.main()
