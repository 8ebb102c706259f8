"""SPEC §6: hostile input. After each case the server must still be up and
/healthz must answer 200."""
import asyncio
import json
import socket
import struct
import time
import unittest

import websockets

import mwtest
from mwtest import RawWS, ServerTestCase, raw_http, run_async, split_responses, \
    wait_for, ws_connect, ws_request


class BadHttp(ServerTestCase):
    def tearDown(self):
        self.assertServerAlive()

    def reject(self, data, status, reason_key):
        before = self.srv.metric(f'moonwire_rejected_total{{reason="{reason_key}"}}')
        out, closed = raw_http(self.srv.port, data)
        self.assertTrue(out, "no response at all")
        resps = split_responses(out)
        self.assertEqual(len(resps), 1, out)
        st, headers, body = resps[0]
        self.assertEqual(st, status, out)
        self.assertEqual(headers.get("connection"), "close")
        self.assertIsInstance(json.loads(body).get("error"), str)
        self.assertTrue(closed, "the server did not close the connection")
        self.assertEqual(
            self.srv.metric(f'moonwire_rejected_total{{reason="{reason_key}"}}'), before + 1)

    def test_garbage_400(self):
        self.reject(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n", 400,
                    "bad_request")

    def test_garbage_text_400(self):
        self.reject(b"HELLO THERE\r\n\r\n", 400, "bad_request")

    def test_bad_header_line_400(self):
        self.reject(b"GET /healthz HTTP/1.1\r\nHost x\r\n\r\n", 400, "bad_request")

    def test_smuggling_content_length_and_chunked_400(self):
        self.reject(b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "bad_request")

    def test_conflicting_content_lengths_400(self):
        self.reject(b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                    b"Content-Length: 6\r\n\r\nabcdef", 400, "bad_request")

    def test_http2_preface_400(self):
        self.reject(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, "bad_request")

    def test_headers_too_large_431(self):
        data = (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (17 * 1024) +
                b"\r\n\r\n")
        self.reject(data, 431, "headers_too_large")

    def test_many_headers_431(self):
        data = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(
            b"X-H%d: %d\r\n" % (i, i) for i in range(2000)) + b"\r\n"
        self.reject(data, 431, "headers_too_large")

    def test_request_line_too_long_414(self):
        data = b"GET /healthz?q=" + b"a" * (9 * 1024) + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        self.reject(data, 414, "request_line_too_long")

    def test_body_too_large_413(self):
        data = (b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(2 * 1024 * 1024).encode() + b"\r\n\r\n{")
        self.reject(data, 413, "body_too_large")

    def test_chunked_body_too_large_413(self):
        chunk = b"a" * 65536
        body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(17))
        data = (b"POST /api/publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                + body + b"0\r\n\r\n")
        before = self.srv.metric('moonwire_rejected_total{reason="body_too_large"}')
        out, closed = raw_http(self.srv.port, data)
        # The server may reset the connection while our bytes still arrive; what
        # it answered (if we got it) is a 413, and it counted the rejection.
        if out:
            self.assertEqual(split_responses(out)[0][0], 413, out)
        self.assertTrue(closed)
        self.srv.wait_metric('moonwire_rejected_total{reason="body_too_large"}',
                             lambda v: v == before + 1)

    def test_body_exactly_at_limit_is_not_413(self):
        pad = "x" * (1024 * 1024 - 200)
        body = json.dumps({"topic": "limit", "event": "E", "data": {"p": pad}})
        self.assertLessEqual(len(body), 1024 * 1024)
        st, js, r = self.srv.http_json("POST", "/api/publish", body,
                                       {"Content-Type": "application/json"})
        self.assertEqual(st, 200, r)

    def test_truncated_request_then_close(self):
        s = socket.create_connection(("127.0.0.1", self.srv.port), timeout=5)
        s.sendall(b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        s.close()


def ws_uri(srv):
    return srv.ws_uri()


class BadWebSocket(ServerTestCase):
    def tearDown(self):
        self.assertServerAlive()

    def test_oversized_frame_header_1009(self):
        """A frame announcing 10 MB: closed with 1009 before it arrives."""
        before = self.srv.metric('moonwire_ws_close_total{code="1009"}')
        a = RawWS(self.srv.port)
        try:
            a.sock.sendall(RawWS.frame(0x1, b"{" + b" " * 65535, declared_len=10 * 1024 * 1024))
            code, _ = a.recv_close(10)
            self.assertEqual(code, 1009)
            self.assertTrue(a.wait_eof(10))
        finally:
            a.close()
        self.assertEqual(self.srv.metric('moonwire_ws_close_total{code="1009"}'), before + 1)

    def test_10mb_message_1009(self):
        """A real client sending a 10 MB message gets close 1009."""
        async def go():
            ws = await ws_connect(self.srv)
            try:
                try:
                    await asyncio.wait_for(ws.send("x" * (10 * 1024 * 1024)), 20)
                except websockets.ConnectionClosed:
                    pass
                with self_assert_raises(websockets.ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 20)
                await asyncio.wait_for(ws.wait_closed(), 20)
                return ws.close_code
            finally:
                await ws.close()
        self.assertEqual(run_async(go(), 60), 1009)

    def test_fragmented_message_over_limit_1009(self):
        a = RawWS(self.srv.port)
        try:
            piece = b"a" * (512 * 1024)
            a.send_frame(0x1, piece, fin=False)
            a.send_frame(0x0, piece, fin=False)
            a.send_frame(0x0, piece, fin=True)
            code, _ = a.recv_close(10)
            self.assertEqual(code, 1009)
        finally:
            a.close()

    def test_invalid_utf8_1007(self):
        before = self.srv.metric('moonwire_ws_close_total{code="1007"}')
        a = RawWS(self.srv.port)
        try:
            a.send_frame(0x1, b'{"type":"ping","id":"\xff\xfe"}')
            code, _ = a.recv_close(10)
            self.assertEqual(code, 1007)
            self.assertTrue(a.wait_eof(10))
        finally:
            a.close()
        self.assertEqual(self.srv.metric('moonwire_ws_close_total{code="1007"}'), before + 1)

    def test_invalid_utf8_split_codepoint_1007(self):
        a = RawWS(self.srv.port)
        try:
            # Overlong encoding and a surrogate, in fragments.
            a.send_frame(0x1, b'{"a":"\xc0', fin=False)
            a.send_frame(0x0, b'\xaf\xed\xa0\x80"}', fin=True)
            code, _ = a.recv_close(10)
            self.assertEqual(code, 1007)
        finally:
            a.close()

    def test_valid_utf8_split_across_fragments(self):
        a = RawWS(self.srv.port)
        try:
            text = '{"type":"ping","id":"é€😀"}'.encode()
            cut = text.index(b"\xe2") + 1  # inside the euro sign
            a.send_frame(0x1, text[:cut], fin=False)
            a.send_frame(0x0, text[cut:], fin=True)
            self.assertEqual(a.recv_json(), {"type": "pong", "id": "é€😀"})
        finally:
            a.close()

    def test_unmasked_client_frame_closes_1002(self):
        a = RawWS(self.srv.port)
        try:
            a.send_frame(0x1, b'{"type":"ping"}', mask=False)
            code, _ = a.recv_close(10)
            self.assertEqual(code, 1002)
        finally:
            a.close()

    def test_protocol_violations_close_1002(self):
        cases = {
            "RSV1 without an extension":
                lambda a: a.sock.sendall(bytes([0xC1]) + RawWS.frame(0x1, b"{}")[1:]),
            "unknown opcode": lambda a: a.send_frame(0x3, b"abc"),
            "continuation without a start": lambda a: a.send_frame(0x0, b"abc"),
            "text frame inside a fragmented message":
                lambda a: (a.send_frame(0x1, b'{"a"', fin=False), a.send_frame(0x1, b"1}")),
            "invalid close code": lambda a: a.send_frame(0x8, struct.pack("!H", 999)),
        }
        for why, send in cases.items():
            a = RawWS(self.srv.port)
            try:
                send(a)
                code, _ = a.recv_close(10)
                self.assertEqual(code, 1002, why)
                self.assertTrue(a.wait_eof(10), why)
            finally:
                a.close()

    def test_frame_level_violations_close_1002(self):
        """Frames the frame parser itself refuses are protocol errors too:
        close 1002 (docs/protocol.md), then EOF; the server lives on."""
        cases = {
            "control frame over 125 bytes": lambda a: a.send_frame(0x9, b"x" * 200),
            "fragmented control frame": lambda a: a.send_frame(0x9, b"ab", fin=False),
            "64-bit length with the top bit set":
                lambda a: a.sock.sendall(bytes([0x81, 0xFF, 0x80]) + b"\0" * 7 + b"abcd"),
        }
        for why, send in cases.items():
            with self.subTest(why):
                a = RawWS(self.srv.port)
                try:
                    send(a)
                    code, _ = a.recv_close(10)
                    self.assertEqual(code, 1002, f"{why}: close frame with code {code}")
                    self.assertTrue(a.wait_eof(10), why)
                finally:
                    a.close()

    def test_malformed_json_error_frame_stays_open(self):
        async def go():
            async with ws_connect(self.srv) as ws:
                for bad in ("{not json", "", "[1,2,3]", '"str"', "null"):
                    await ws.send(bad)
                    err = json.loads(await asyncio.wait_for(ws.recv(), 5))
                    self.assertEqual(err["type"], "error", bad)
                    self.assertEqual(err["code"], 400, bad)
                    self.assertIsInstance(err["reason"], str)
                reply, _ = await ws_request(ws, {"type": "ping", "id": "after"})
                self.assertEqual(reply, {"type": "pong", "id": "after"})
        before = self.srv.metric('moonwire_ws_errors_total{reason="malformed"}')
        run_async(go(), 30)
        self.assertEqual(self.srv.metric('moonwire_ws_errors_total{reason="malformed"}'),
                         before + 5)

    def test_unknown_type_error_400_stays_open(self):
        async def go():
            async with ws_connect(self.srv) as ws:
                reply, _ = await ws_request(ws, {"type": "frobnicate", "id": "u1"})
                self.assertEqual(reply["type"], "error")
                self.assertEqual(reply["id"], "u1")
                self.assertEqual(reply["code"], 400)
                reply, _ = await ws_request(ws, {"id": "u2"})  # no type at all
                self.assertEqual(reply["type"], "error")
                self.assertEqual(reply["code"], 400)
                reply, _ = await ws_request(ws, {"type": "ping", "id": "after"})
                self.assertEqual(reply, {"type": "pong", "id": "after"})
        run_async(go(), 30)

    def test_non_string_id_error(self):
        async def go():
            async with ws_connect(self.srv) as ws:
                await ws.send(json.dumps({"type": "ping", "id": 5}))
                err = json.loads(await asyncio.wait_for(ws.recv(), 5))
                self.assertEqual(err["type"], "error")
                self.assertEqual(err["code"], 400)
                reply, _ = await ws_request(ws, {"type": "ping", "id": "ok"})
                self.assertEqual(reply["type"], "pong")
        run_async(go(), 30)

    def test_close_handshake_echoed(self):
        a = RawWS(self.srv.port)
        try:
            a.send_frame(0x8, struct.pack("!H", 1000) + b"bye")
            code, _ = a.recv_close(10)
            self.assertEqual(code, 1000)
            self.assertTrue(a.wait_eof(10))
        finally:
            a.close()

    def test_bytes_after_upgrade_in_same_packet(self):
        """The first frame sent together with the handshake is not lost."""
        s = socket.create_connection(("127.0.0.1", self.srv.port), timeout=10)
        try:
            req = (b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            s.sendall(req + RawWS.frame(0x1, b'{"type":"ping","id":"early"}'))
            a = RawWS.__new__(RawWS)
            a.sock, a.buf = s, b""
            while b"\r\n\r\n" not in a.buf:
                chunk = s.recv(65536)
                self.assertTrue(chunk)
                a.buf += chunk
            head, a.buf = a.buf.split(b"\r\n\r\n", 1)
            self.assertTrue(head.startswith(b"HTTP/1.1 101"))
            self.assertEqual(a.recv_json(), {"type": "pong", "id": "early"})
        finally:
            s.close()


def self_assert_raises(exc):
    import contextlib

    @contextlib.contextmanager
    def cm():
        try:
            yield
        except exc:
            return
        raise AssertionError(f"{exc.__name__} not raised")
    return cm()


class ConnectionChurn(ServerTestCase):
    """1,000 connections opened and dropped abruptly: half mid-handshake, half
    after the upgrade, none with a close frame. The server stays up and its
    connection gauges return to their baseline."""
    N = 1000

    @classmethod
    def setUpClass(cls):
        mwtest.raise_nofile(4096)
        super().setUpClass()

    def test_abrupt_drops(self):
        srv = self.srv
        # Baseline: only the /metrics request itself is open.
        base = srv.wait_metric("moonwire_tcp_connections", lambda v: v == 1)
        self.assertEqual(srv.metric("moonwire_ws_connections"), 0)
        accepted0 = srv.metric("moonwire_ws_connections_total")
        socks, raws = [], []
        try:
            for i in range(self.N // 2):
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
                # mid-handshake: a partial upgrade request
                part = (b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                        b"Connection: Upgrade\r\nSec-WebSocket-")[: 10 + (i % 60)]
                s.sendall(part)
                socks.append(s)
            for i in range(self.N // 2):
                a = RawWS(srv.port)
                if i % 5 == 0:  # some with a frame half-sent
                    a.sock.sendall(RawWS.frame(0x1, b'{"type":"ping","id":"x"}')[:7])
                raws.append(a)
            srv.wait_metric("moonwire_ws_connections", lambda v: v == self.N // 2,
                            timeout=30)
            self.assertEqual(srv.metric("moonwire_ws_connections_total"),
                             accepted0 + self.N // 2)
            self.assertGreaterEqual(srv.metric("moonwire_tcp_connections"), self.N + 1)
        finally:
            for i, s in enumerate(socks):
                if i % 2:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
            for i, a in enumerate(raws):
                if i % 2:
                    a.abort()
                else:
                    a.close()
        srv.wait_metric("moonwire_tcp_connections", lambda v: v == base, timeout=60,
                        what="moonwire_tcp_connections back to baseline")
        srv.wait_metric("moonwire_ws_connections", lambda v: v == 0, timeout=30)
        self.assertEqual(srv.metric('moonwire_connections{transport="websocket"}'), 0)
        self.assertEqual(srv.metric("moonwire_subscriptions"), 0)
        self.assertServerAlive()
        # And it still serves WebSockets.
        a = RawWS(srv.port)
        a.send_json({"type": "ping", "id": "after"})
        self.assertEqual(a.recv_json(), {"type": "pong", "id": "after"})
        a.close()


if __name__ == "__main__":
    unittest.main()


class Limits(ServerTestCase):
    """Configured limits: HTTP idle timeout (slowloris) and max_connections."""
    SERVER_CONFIG = "return { limits = { idle_timeout = 1, ping_interval = 30 } }"

    def test_slowloris_closed_by_idle_timeout(self):
        s = socket.create_connection(("127.0.0.1", self.srv.port), timeout=10)
        try:
            t0 = time.monotonic()
            s.sendall(b"GET /healthz HTTP/1.1\r\nHo")
            s.settimeout(10)
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                data = b""
            self.assertEqual(data, b"", "expected the server to close the idle connection")
            self.assertLess(time.monotonic() - t0, 8)
        finally:
            s.close()
        self.assertServerAlive()

    def test_idle_keep_alive_connection_closed(self):
        import http.client
        conn = http.client.HTTPConnection("127.0.0.1", self.srv.port, timeout=10)
        try:
            conn.request("GET", "/healthz")
            r = conn.getresponse()
            r.read()
            self.assertEqual(r.status, 200)
            conn.sock.settimeout(10)
            self.assertEqual(conn.sock.recv(1), b"")
        finally:
            conn.close()



class MaxConnections(ServerTestCase):
    SERVER_CONFIG = "return { limits = { max_connections = 4 } }"

    def test_max_connections_503(self):
        srv = self.srv
        wait_for(lambda: srv.metric("moonwire_tcp_connections") == 1, 10,
                 what="no other connection open")
        before = srv.metric('moonwire_rejected_total{reason="max_connections"}')
        held = [RawWS(srv.port) for _ in range(4)]
        try:
            for a in held:
                a.send_json({"type": "ping", "id": "h"})
                self.assertEqual(a.recv_json()["type"], "pong")
            out, closed = raw_http(srv.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            resps = split_responses(out)
            self.assertEqual(resps[0][0], 503, out)
            self.assertIn("error", json.loads(resps[0][2]))
            self.assertTrue(closed)
        finally:
            for a in held:
                a.close()
        # Until the server has seen the closes, a new connection may still be
        # refused: count those refusals too.
        refused = [0]

        def healthy_now():
            st, _, _ = srv.http_json("GET", "/healthz")
            if st == 503:
                refused[0] += 1
            return st == 200
        wait_for(healthy_now, 10, what="/healthz after the limit")
        self.assertEqual(srv.metric('moonwire_rejected_total{reason="max_connections"}'),
                         before + 1 + refused[0])


class BadMsgpack(ServerTestCase):
    def test_malformed_msgpack_error_stays_open(self):
        import msgpack

        async def go():
            async with ws_connect(self.srv, "moonwire.msgpack") as ws:
                for bad in (b"\xc1", b"\x92\x01", msgpack.packb([1, 2]),
                            msgpack.packb({"type": 5}), b"\xdb\xff\xff\xff\xff"):
                    await ws.send(bad)
                    err = msgpack.unpackb(await asyncio.wait_for(ws.recv(), 5), raw=False)
                    self.assertEqual(err["type"], "error", bad)
                    self.assertEqual(err["code"], 400, bad)
                reply, _ = await ws_request(ws, {"type": "ping", "id": "after"})
                self.assertEqual(reply, {"type": "pong", "id": "after"})
        run_async(go(), 30)
        self.assertServerAlive()
