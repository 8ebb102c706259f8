"""Issue 7: with the publisher flat out, moonwire pushes back instead of
accepting what it cannot deliver in time. When a worker's queued outbound
bytes pass limits.publish_backlog, POST /api/publish and /api/broadcast
answer 503 with Retry-After and a JSON error, a WebSocket publish gets an
error 503, nothing is stored or fanned out, the refusal is counted in
moonwire_rejected_total{reason="overload"}, memory stays bounded, and once
the subscribers catch up publishes are accepted again.

Subscribers that stop reading fill their queues (the kernel buffers first,
then the server's outbound queue); a reading subscriber checks that every
publish answered 200 arrives, in order, and nothing else. Deterministic: the
publisher is a loop with a bound, every wait polls a concrete condition with
a deadline (mwtest.wait_for) or blocks with a timeout."""
import http.client
import json
import os
import queue
import threading
import unittest

from mwtest import DumpOnFailure, RawWS, Server, wait_for

BACKLOG = 256 * 1024          # limits.publish_backlog for the test
PAYLOAD = 16 * 1024           # bytes of data per event
MAX_PUBLISHES = 4000          # bound of the flat-out loop (~64 MiB offered)
REFUSED_IN_A_ROW = 300        # refusals in a row that end the flat-out loop
STALLED = 4                   # subscribers that stop reading
RSS_GROWTH_MAX = 48 << 20     # server RSS growth allowed while pushing back

CONFIG = f"""
return {{
  limits = {{
    publish_backlog = {BACKLOG},
    publish_lag_ms = 0,               -- only the byte measure: deterministic
    outbound_queue = 256 * 1024 * 1024, -- stalled subscribers stay connected
    idle_timeout = 600, ping_interval = 300, -- and silent: no pings to answer
  }},
}}
"""


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class Reader(threading.Thread):
    """Reads one RawWS in a thread: event seqs of `topic` into self.seqs,
    everything else (acks, errors) into self.replies."""

    def __init__(self, ws, topic):
        super().__init__(daemon=True)
        self.ws = ws
        self.topic = topic
        self.seqs = []
        self.replies = queue.Queue()
        self.stop = threading.Event()
        self.error = None

    def run(self):
        try:
            while not self.stop.is_set():
                try:
                    msg = self.ws.recv_json(0.2)
                except (TimeoutError, OSError) as e:  # socket.timeout is OSError
                    if "timed out" in str(e) or "not complete" in str(e):
                        continue
                    raise
                if msg.get("type") == "event" and msg.get("topic") == self.topic:
                    self.seqs.append(msg["seq"])
                else:
                    self.replies.put(msg)
        except Exception as e:  # reported by the test
            self.error = e

    def halt(self):
        self.stop.set()
        self.join(10)


class Publisher:
    """One keep-alive HTTP connection, one request at a time."""

    def __init__(self, port):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def post(self, path, body):
        self.conn.request("POST", path, body=json.dumps(body).encode(),
                          headers={"Content-Type": "application/json"})
        r = self.conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data

    def close(self):
        self.conn.close()


def subscribe(port, topic, rcvbuf=None):
    ws = RawWS(port, rcvbuf=rcvbuf)
    ws.send_json({"type": "subscribe", "id": "s", "topics": [topic]})
    ack = ws.recv_json(10)
    if ack.get("type") != "ack":
        raise AssertionError(f"subscribe failed: {ack!r}")
    return ws


class Overload(DumpOnFailure):
    WORKERS = 1

    def setUp(self):
        self.srv = Server(["--workers", str(self.WORKERS)], CONFIG,
                          name=type(self).__name__).start()
        self.socks = []
        self.readers = []

    def tearDown(self):
        for r in self.readers:
            r.halt()
        for s in self.socks:
            s.close()
        self.srv.stop()

    def assertJsonError(self, status, headers, body):
        self.assertEqual(status, 503, body)
        self.assertEqual(headers.get("retry-after"), "1", headers)
        self.assertTrue(headers.get("content-type", "").startswith("application/json"))
        js = json.loads(body)
        self.assertIsInstance(js.get("error"), str)
        self.assertIn("overloaded", js["error"])

    def test_push_back_then_recover(self):
        srv, topic = self.srv, "load:1"
        key = 'moonwire_rejected_total{reason="overload"}'
        self.assertEqual(srv.metric(key), 0)
        # A reading subscriber (it also publishes over WebSocket below).
        good = subscribe(srv.port, topic)
        self.socks.append(good)
        good_reader = Reader(good, topic)
        good_reader.start()
        self.readers.append(good_reader)
        # Subscribers that stop reading after their ack: small receive
        # buffers, so their queues fill quickly.
        stalled = [subscribe(srv.port, topic, rcvbuf=4096) for _ in range(STALLED)]
        self.socks.extend(stalled)

        pub = Publisher(srv.port)
        accepted = []  # seqs answered 200, in order
        refused = 0
        first_503 = None
        rss_at_first_503 = None
        in_a_row = 0  # refusals since the last accepted publish
        rss_peak = 0
        payload = "x" * PAYLOAD
        try:
            # Flat out until REFUSED_IN_A_ROW refusals in a row. A loaded
            # machine may refuse a few early on (a burst queued before the
            # loop flushed it, while the kernel still takes the stalled
            # subscribers' bytes); once their queues are full, nobody drains
            # them and every publish is refused.
            for i in range(MAX_PUBLISHES):
                if in_a_row >= REFUSED_IN_A_ROW:
                    break
                status, headers, body = pub.post(
                    "/api/publish", {"topic": topic, "event": "E",
                                     "data": {"i": i, "payload": payload}})
                if status == 200:
                    seq = json.loads(body)["seq"]
                    # Refused publishes are not stored: seqs have no gaps.
                    self.assertEqual(seq, len(accepted) + 1)
                    accepted.append(seq)
                    in_a_row = 0
                else:
                    self.assertJsonError(status, headers, body)
                    refused += 1
                    in_a_row += 1
                    if first_503 is None:
                        first_503 = i
                        rss_at_first_503 = rss_bytes(srv.proc.pid)
                if i % 50 == 0:
                    rss_peak = max(rss_peak, rss_bytes(srv.proc.pid))
            self.assertIsNotNone(first_503, f"no 503 after {MAX_PUBLISHES} publishes "
                                            f"of {PAYLOAD} bytes")
            rss_peak = max(rss_peak, rss_bytes(srv.proc.pid))
            print(f"\noverload: first 503 after {first_503} publishes; "
                  f"{refused} refused, {len(accepted)} accepted; RSS at first 503 "
                  f"{rss_at_first_503 >> 20} MiB, peak {rss_peak >> 20} MiB")
            # Pushing back, not accepting: while nobody drains the stalled
            # queues, every attempt is refused (the loop ended on that, not
            # on its bound).
            self.assertEqual(in_a_row, REFUSED_IN_A_ROW,
                             f"accepting again after {refused} refusals")
            self.assertEqual(srv.metric(key), refused)
            # Memory bounded: the refused events are not kept anywhere.
            self.assertLess(rss_peak - rss_at_first_503, RSS_GROWTH_MAX)

            # The other publishing paths refuse too, and store nothing.
            status, headers, body = pub.post(
                "/api/broadcast", {"topics": [topic, "load:other"], "event": "B",
                                   "data": {}})
            self.assertJsonError(status, headers, body)
            good.send_json({"type": "publish", "id": "p1", "topic": topic,
                            "event": "WS", "data": {"payload": {"x": 1}}})
            err = good_reader.replies.get(timeout=10)
            self.assertEqual((err["type"], err["id"], err["code"]), ("error", "p1", 503),
                             err)
            self.assertEqual(srv.metric(key), refused + 2)
            status, js, _ = srv.http_json("GET", f"/api/history?topic={topic}&since="
                                          f"{len(accepted) - 1}")
            self.assertEqual((status, js["seq"]), (200, len(accepted)))

            # The reading subscriber got every accepted event, nothing else.
            wait_for(lambda: len(good_reader.seqs) >= len(accepted) or good_reader.error,
                     30, what="the reading subscriber to get every accepted event")
            self.assertIsNone(good_reader.error)
            self.assertEqual(good_reader.seqs, accepted)

            # The stalled subscribers read again: the backlog drains, none was
            # closed, each gets every accepted event, and publishing works.
            stalled_readers = [Reader(ws, topic) for ws in stalled]
            for r in stalled_readers:
                r.start()
            self.readers.extend(stalled_readers)
            for r in stalled_readers:
                wait_for(lambda: len(r.seqs) >= len(accepted) or r.error, 60,
                         what="a stalled subscriber to catch up")
                self.assertIsNone(r.error)
                self.assertEqual(r.seqs, accepted)
            # The last bytes reach a peer a loop turn before the worker counts
            # them written (and, with two workers, before the other worker
            # sees it): retry a refused publish, as a client would.
            box = {}

            def publish_after():
                status, headers, body = pub.post(
                    "/api/publish", {"topic": topic, "event": "AFTER", "data": {}})
                if status == 503:
                    self.assertJsonError(status, headers, body)
                    box["refused"] = box.get("refused", 0) + 1
                    return None
                self.assertEqual(status, 200, body)
                return json.loads(body)["seq"]
            after = wait_for(publish_after, 10, what="a publish accepted after the drain")
            refused += box.get("refused", 0)
            self.assertEqual(after, len(accepted) + 1)
            good.send_json({"type": "publish", "id": "p2", "topic": topic,
                            "event": "WS", "data": {"payload": {"x": 2}}})
            ack = good_reader.replies.get(timeout=10)
            self.assertEqual((ack["type"], ack["id"], ack["data"]["status"]),
                             ("ack", "p2", "delivered"), ack)
            for r in [good_reader] + stalled_readers:
                wait_for(lambda: len(r.seqs) >= after + 1 or r.error, 10,
                         what="the events published after the drain")
                self.assertEqual(r.seqs, accepted + [after, after + 1])
            self.assertEqual(srv.metric(key), refused + 2)
            self.assertEqual(srv.metric("moonwire_slow_consumer_closes_total"), 0)
        finally:
            pub.close()
        self.assertTrue(srv.alive())
        self.assertTrue(srv.healthy())


class FewLaggards(DumpOnFailure):
    """A few connections that stop reading are not the worker being unable
    to deliver: their queues beyond the 90th-percentile connection's do not
    count, so publishing goes on until they pass their own cap
    (limits.outbound_queue) and are closed as slow consumers."""
    IDLE = 40         # connections with nothing queued: the typical one
    LAGGARDS = 2
    CAP = 1 << 20     # limits.outbound_queue: 4x the publish backlog
    PAYLOAD = 1024
    MAX = 20000

    def setUp(self):
        config = CONFIG.replace("outbound_queue = 256 * 1024 * 1024",
                                f"outbound_queue = {self.CAP}")
        self.srv = Server(["--workers", "1"], config, name="FewLaggards").start()
        self.socks = []

    def tearDown(self):
        for s in self.socks:
            s.close()
        self.srv.stop()

    def test_laggards_do_not_stop_publishing(self):
        srv, topic = self.srv, "lag:1"
        self.socks += [RawWS(srv.port) for _ in range(self.IDLE)]
        good = subscribe(srv.port, topic)
        self.socks.append(good)
        reader = Reader(good, topic)
        reader.start()
        laggards = [subscribe(srv.port, topic, rcvbuf=4096) for _ in range(self.LAGGARDS)]
        self.socks += laggards
        pub = Publisher(srv.port)
        closes = "moonwire_slow_consumer_closes_total"
        seqs = []
        payload = "y" * self.PAYLOAD
        try:
            for i in range(self.MAX):
                status, headers, body = pub.post(
                    "/api/publish", {"topic": topic, "event": "E",
                                     "data": {"i": i, "payload": payload}})
                self.assertEqual(status, 200, f"publish {i}: {status} {body[:200]!r}")
                seqs.append(json.loads(body)["seq"])
                if i % 100 == 99 and srv.metric(closes) == self.LAGGARDS:
                    break
            self.assertEqual(srv.metric(closes), self.LAGGARDS,
                             f"laggards not closed after {len(seqs)} publishes")
            self.assertEqual(srv.metric('moonwire_rejected_total{reason="overload"}'), 0)
            print(f"\nlaggards closed at their cap after {len(seqs)} publishes, none refused")
            wait_for(lambda: len(reader.seqs) >= len(seqs) or reader.error, 30,
                     what="the reading subscriber to get every event")
            self.assertIsNone(reader.error)
            self.assertEqual(reader.seqs, seqs)
        finally:
            reader.halt()
            pub.close()
        self.assertTrue(srv.healthy())


class OverloadTwoWorkers(Overload):
    """The same with two workers: the stalled subscribers may sit on the
    other worker than the publisher; its backlog is seen there too."""
    WORKERS = 2


if __name__ == "__main__":
    unittest.main()
