"""Presence (join/leave, who is there, dead connections expire) and
WebSocket recovery (replay with `since`, the replay/publish race, another
epoch) against the real binary."""
import asyncio
import json
import threading
import unittest

import mwtest
from mwtest import RawWS, run_async, wait_for, ws_connect


async def request(ws, msg, timeout=5.0):
    """Sends msg and returns the reply with the same id (events in between
    are returned in the second item)."""
    await ws.send(json.dumps(msg))
    others = []
    while True:
        m = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if m.get("id") == msg["id"] and m.get("type") in ("ack", "error"):
            return m, others
        others.append(m)


async def until(ws, pred, timeout=5.0):
    """Receives until pred(message) is true; returns (message, skipped)."""
    skipped = []
    while True:
        m = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if pred(m):
            return m, skipped
        skipped.append(m)


class Presence(mwtest.ServerTestCase):
    SERVER_FLAGS = ("--workers", "2")
    SERVER_CONFIG = 'return { presence_topics = { "room:*" }, limits = { idle_timeout = 2, ping_interval = 1 } }'

    def presence(self, topic):
        status, js, r = self.srv.http_json("GET", "/api/presence?topic=" + topic)
        self.assertEqual(status, 200, r)
        return js

    def test_join_leave_and_who_is_there(self):
        async def go():
            async with ws_connect(self.srv) as a:
                ack, _ = await request(a, {"type": "subscribe", "id": "s", "topics": ["room:1"]})
                self.assertEqual(ack["type"], "ack")
                join, _ = await until(a, lambda m: m.get("type") == "presence")
                self.assertEqual(join["event"], "join")  # its own join
                b = await ws_connect(self.srv)
                ack, _ = await request(b, {"type": "subscribe", "id": "s", "topics": ["room:1"]})
                self.assertEqual(ack["type"], "ack")
                join, _ = await until(a, lambda m: m.get("type") == "presence")
                self.assertEqual(join, {"type": "presence", "topic": "room:1", "event": "join",
                                        "data": join["data"]})
                self.assertEqual(join["data"]["user_id"], "anonymous")
                b_id = join["data"]["client_id"]
                # Both connections, across workers, from the API and a client.
                p = self.presence("room:1")
                self.assertEqual(p["clients"], 2)
                self.assertEqual(p["users"], ["anonymous"])
                reply, _ = await request(a, {"type": "presence", "id": "p", "topic": "room:1"})
                self.assertEqual(reply["data"]["clients"], 2)
                await b.close()
                leave, _ = await until(a, lambda m: m.get("type") == "presence")
                self.assertEqual(leave["event"], "leave")
                self.assertEqual(leave["data"]["client_id"], b_id)
                self.assertEqual(self.presence("room:1")["clients"], 1)
        run_async(go(), 30)

    def test_no_presence_events_outside_presence_topics(self):
        async def go():
            async with ws_connect(self.srv) as a:
                await request(a, {"type": "subscribe", "id": "s", "topics": ["plain:1"]})
                b = await ws_connect(self.srv)
                await request(b, {"type": "subscribe", "id": "s", "topics": ["plain:1"]})
                await b.close()
                self.srv.publish("plain:1", "FENCE")
                msg, skipped = await until(a, lambda m: m.get("type") == "event")
                self.assertEqual(msg["event"], "FENCE")
                self.assertEqual([m for m in skipped if m.get("type") == "presence"], [])
                # Presence is still listed for any topic.
                self.assertEqual(self.presence("plain:1")["clients"], 1)
        run_async(go(), 30)

    def test_dead_connection_leaves_within_idle_timeout(self):
        raw = RawWS(self.srv.port)
        raw.send_json({"type": "subscribe", "id": "s", "topics": ["room:dead"]})
        self.assertEqual(raw.recv_json()["type"], "ack")
        wait_for(lambda: self.presence("room:dead")["clients"] == 1, 5, what="joined")
        # The client goes silent without closing (no pong, no close frame):
        # the idle timeout (2 s) closes it and its presence goes with it.
        wait_for(lambda: self.presence("room:dead")["clients"] == 0, 10,
                 what="presence of the silent connection expired")
        raw.abort()
        self.assertServerAlive()

    def test_presence_needs_a_subscription_and_a_topic(self):
        status, _, _ = self.srv.http_json("GET", "/api/presence")
        self.assertEqual(status, 400)

        async def go():
            async with ws_connect(self.srv) as a:
                reply, _ = await request(a, {"type": "presence", "id": "p", "topic": "room:x"})
                self.assertEqual(reply["type"], "error")
                self.assertEqual(reply["code"], 403)
        run_async(go(), 15)


class Disconnect(mwtest.ServerTestCase):
    SERVER_FLAGS = ("--workers", "2")

    @classmethod
    def setUpClass(cls):
        import os
        import tempfile
        d = tempfile.mkdtemp(prefix="mw-policy-")
        path = os.path.join(d, "policy.lua")
        with open(path, "w") as f:
            f.write("function on_connect(req) return {user_id = req.token} end\n")
        cls.SERVER_FLAGS = ("--workers", "2", "--policy", path)
        super().setUpClass()

    def test_disconnect_closes_every_connection_of_the_user(self):
        import websockets

        async def go():
            port = self.srv.port
            alice = [await websockets.connect(f"ws://127.0.0.1:{port}/ws?token=alice",
                                              ping_interval=None) for _ in range(3)]
            bob = await websockets.connect(f"ws://127.0.0.1:{port}/ws?token=bob",
                                           ping_interval=None)
            status, js, r = self.srv.http_json("POST", "/api/disconnect", {"user_id": "alice"})
            self.assertEqual(status, 200, r)
            self.assertEqual(js, {"disconnected": 3})
            for ws in alice:
                with self.assertRaises(websockets.ConnectionClosed) as cm:
                    await asyncio.wait_for(ws.recv(), 5)
                self.assertEqual(cm.exception.code, 4001)
            await bob.send(json.dumps({"type": "ping", "id": "p"}))
            self.assertEqual(json.loads(await asyncio.wait_for(bob.recv(), 5))["type"], "pong")
            await bob.close()
            status, js, _ = self.srv.http_json("POST", "/api/disconnect", {"user": 1})
            self.assertEqual(status, 400)
        run_async(go(), 30)


class Recovery(mwtest.ServerTestCase):
    SERVER_FLAGS = ("--workers", "2")
    SERVER_CONFIG = "return { history = { size = 50 } }"

    def test_replay_missed_events_then_live(self):
        for i in range(5):
            self.srv.publish("rec:a", "E", {"i": i})

        async def go():
            async with ws_connect(self.srv) as ws:
                ack, early = await request(ws, {"type": "subscribe", "id": "s", "topics": ["rec:a"],
                                                "since": {"rec:a": 2}})
                self.assertEqual(early, [])  # the answer comes first
                pos = ack["data"]["topics"]["rec:a"]
                self.assertTrue(pos["recovered"])
                self.assertEqual(pos["seq"], 5)
                seqs = []
                while len(seqs) < 3:
                    m, _ = await until(ws, lambda m: m.get("type") == "event")
                    seqs.append(m["seq"])
                self.assertEqual(seqs, [3, 4, 5])
                self.srv.publish("rec:a", "LIVE")
                m, _ = await until(ws, lambda m: m.get("type") == "event")
                self.assertEqual((m["seq"], m["event"]), (6, "LIVE"))
                # The epoch of the ack, given back, is checked: a wrong one
                # is not recovered.
                ack, _ = await request(ws, {"type": "subscribe", "id": "s2", "topics": ["rec:b"],
                                            "since": {"rec:b": {"seq": 0, "epoch": "not-this-one"}}})
                self.assertFalse(ack["data"]["topics"]["rec:b"]["recovered"])
        run_async(go(), 30)

    def test_beyond_history_is_not_recovered(self):
        for i in range(60):
            self.srv.publish("rec:long", "E", {"i": i})

        async def go():
            async with ws_connect(self.srv) as ws:
                ack, _ = await request(ws, {"type": "subscribe", "id": "s", "topics": ["rec:long"],
                                            "since": {"rec:long": 1}})
                pos = ack["data"]["topics"]["rec:long"]
                self.assertFalse(pos["recovered"])
                self.assertEqual(pos["seq"], 60)
        run_async(go(), 30)

    def test_replay_publish_race_has_no_gap_or_duplicate(self):
        """A publisher runs flat out while clients resubscribe with an old
        position: every client sees each seq exactly once, in order."""
        topic = "rec:race"
        for i in range(10):
            self.srv.publish(topic, "E", {"i": i})
        stop = threading.Event()
        published = []

        def publisher():
            while not stop.is_set() and len(published) < 400:
                r = self.srv.publish(topic, "E", {"live": True})
                published.append(r["seq"])

        t = threading.Thread(target=publisher)
        t.start()
        try:
            async def client(since):
                async with ws_connect(self.srv) as ws:
                    ack, _ = await request(ws, {"type": "subscribe", "id": "s", "topics": [topic],
                                                "since": {topic: since}})
                    self.assertTrue(ack["data"]["topics"][topic]["recovered"])
                    seqs = []
                    while len(seqs) < 150:
                        m, _ = await until(ws, lambda m: m.get("type") == "event", 10)
                        seqs.append(m["seq"])
                    return seqs

            async def go():
                return await asyncio.gather(*(client(s) for s in (3, 5, 8, 10)))
            results = run_async(go(), 60)
        finally:
            stop.set()
            t.join(30)
        for since, seqs in zip((3, 5, 8, 10), results):
            self.assertEqual(seqs, list(range(since + 1, since + 1 + len(seqs))),
                             f"gap or duplicate after since={since}")


if __name__ == "__main__":
    unittest.main()
