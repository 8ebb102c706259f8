"""SPEC §6: a slow consumer whose outbound queue passes its cap (default
4 MiB) is closed with 1008 instead of growing the server's memory."""
import json
import unittest

from mwtest import RawWS, ServerTestCase, wait_for

EVENT_PAYLOAD = 64 * 1024
MAX_PUBLISHES = 400  # 25 MiB: far beyond 4 MiB cap + kernel buffers


class SlowConsumer(ServerTestCase):
    def test_never_reading_subscriber_is_closed(self):
        srv = self.srv
        key = "moonwire_slow_consumer_closes_total"
        self.assertEqual(srv.metric(key), 0)
        closes_1008 = srv.metric('moonwire_ws_close_total{code="1008"}')
        # A healthy subscriber on the same topic must keep receiving.
        good = RawWS(srv.port)
        good.send_json({"type": "subscribe", "id": "g", "topics": ["slow"]})
        self.assertEqual(good.recv_json()["type"], "ack")
        # The slow one: a small receive buffer, subscribes, then never reads.
        slow = RawWS(srv.port, rcvbuf=4096)
        slow.send_json({"type": "subscribe", "id": "s", "topics": ["slow"]})
        self.assertEqual(slow.recv_json()["type"], "ack")
        payload = "x" * EVENT_PAYLOAD
        published = 0
        received_good = 0
        try:
            while published < MAX_PUBLISHES and srv.metric(key) == 0:
                js = srv.publish("slow", "BIG", data={"payload": payload})
                published += 1
                self.assertEqual(js["seq"], published)
                # Drain the good subscriber so that it never becomes slow.
                ev = good.recv_json(10)
                received_good += 1
                self.assertEqual(ev["seq"], published)
                self.assertEqual(len(ev["data"]["payload"]), EVENT_PAYLOAD)
            self.assertEqual(srv.metric(key), 1,
                             f"no slow-consumer close after {published} events of 64 KiB")
            # Bounded: the cap (4 MiB) plus kernel buffers, not the whole stream.
            self.assertLess(published, MAX_PUBLISHES)
            srv.wait_metric('moonwire_ws_close_total{code="1008"}',
                            lambda v: v == closes_1008 + 1)
            # The slow session is gone; the good one is still served.
            srv.wait_metric("moonwire_ws_connections", lambda v: v == 1, timeout=15)
            js = srv.publish("slow", "AFTER", data={"small": True})
            ev = good.recv_json(10)
            self.assertEqual((ev["event"], ev["seq"]), ("AFTER", js["seq"]))
            self.assertEqual(srv.metric(key), 1)
            # What the slow client can still read ends with close 1008 if the
            # close frame made it out before the server gave up on the peer.
            code = self._last_close_code(slow)
            print(f"\nslow consumer: closed after {published} publishes; last close code {code}")
            self.assertIn(code, (1008, None))
        finally:
            slow.close()
            good.close()
        self.assertServerAlive()

    @staticmethod
    def _last_close_code(raw):
        code = None
        try:
            while True:
                op, payload = raw.recv_frame(5)
                if op == 0x8:
                    return int.from_bytes(payload[:2], "big")
        except Exception:
            return code


if __name__ == "__main__":
    unittest.main()
