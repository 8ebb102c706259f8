"""Fan-out: 1,000 WebSocket subscribers on one topic each receive 100 events
published via the server API, in seq order 1..100, with zero loss."""
import asyncio
import time
import unittest

import mwtest
from mwtest import ServerTestCase, run_async, ws_connect, ws_recv, ws_subscribe

SUBSCRIBERS = 1000
EVENTS = 100
DEADLINE = 120.0


class FanOut(ServerTestCase):
    SERVER_FLAGS = ["--workers", "2"]

    @classmethod
    def setUpClass(cls):
        mwtest.raise_nofile(4 * SUBSCRIBERS + 256)
        super().setUpClass()

    def test_thousand_subscribers_hundred_events(self):
        srv = self.srv
        start = time.monotonic()

        async def go():
            sem = asyncio.Semaphore(100)  # connect in waves of 100

            async def open_one(i):
                async with sem:
                    ws = await ws_connect(srv, timeout=30)
                    ack = await ws_subscribe(ws, ["fan"], rid=f"s{i}", timeout=30)
                    assert ack["data"]["topics"]["fan"]["seq"] == 0, ack
                    return ws
            conns = await asyncio.gather(*(open_one(i) for i in range(SUBSCRIBERS)))
            try:
                self.assertEqual(len(conns), SUBSCRIBERS)
                await asyncio.to_thread(srv.wait_metric, "moonwire_subscriptions",
                                        lambda v: v == SUBSCRIBERS, 30)

                async def collect(ws):
                    out = []
                    while len(out) < EVENTS:
                        m = await ws_recv(ws, 60)
                        if m.get("type") == "event":
                            out.append(m)
                    return out
                readers = [asyncio.create_task(collect(ws)) for ws in conns]

                def publish_all():
                    for i in range(EVENTS):
                        js = srv.publish("fan", "E", data={"i": i})
                        assert js["seq"] == i + 1, js
                await asyncio.to_thread(publish_all)
                results = await asyncio.gather(*readers)
            finally:
                await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)
            return results

        results = run_async(go(), DEADLINE)
        self.assertEqual(len(results), SUBSCRIBERS)
        want = list(range(1, EVENTS + 1))
        bad = [i for i, evs in enumerate(results) if [e["seq"] for e in evs] != want]
        self.assertEqual(bad, [], f"{len(bad)} subscribers missed or reordered events")
        for evs in results:
            self.assertEqual([e["data"]["i"] for e in evs], list(range(EVENTS)))
            self.assertEqual(evs[-1]["id"], f"fan:{EVENTS}")
        m = srv.metrics()
        self.assertEqual(m["moonwire_events_delivered_total"], SUBSCRIBERS * EVENTS)
        self.assertEqual(m["moonwire_slow_consumer_closes_total"], 0)
        self.assertLess(time.monotonic() - start, DEADLINE)
        srv.wait_metric("moonwire_ws_connections", lambda v: v == 0, timeout=30)
        srv.wait_metric("moonwire_subscriptions", lambda v: v == 0, timeout=30)
        srv.wait_metric("moonwire_topics", lambda v: v == 0, timeout=30)
        self.assertEqual(srv.metric('moonwire_connections{transport="websocket"}'), 0)


if __name__ == "__main__":
    unittest.main()
