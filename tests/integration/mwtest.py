"""Shared helpers for moonwire's integration tests.

Every test module starts its own server(s) from the real binary
(env MOONWIRE_BIN, default /work/build-it/core/moonwire) on 127.0.0.1 port 0,
reads the port from the "listening on 127.0.0.1:PORT" log line, and stops it
with SIGTERM, asserting exit code 0 within 15 s (under ASan/LSan a leak or a
sanitizer report makes the exit code non-zero: that assertion catches them).
The server's stderr goes to a file that is printed when a test fails.

Rules: no sleep used as synchronisation. Every wait is a poll for a concrete
condition with a deadline (wait_for) or a blocking call with a timeout.
"""
import asyncio
import base64
import hashlib
import http.client
import json
import os
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import unittest

MOONWIRE_BIN = os.environ.get("MOONWIRE_BIN", "/work/build-it/core/moonwire")
START_TIMEOUT = 20.0   # seconds for the "listening on" line (ASan is slow)
STOP_TIMEOUT = 15.0    # seconds for SIGTERM to end the process
HTTP_TIMEOUT = 10.0
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
ISO_TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                   "runtime error:", "SUMMARY: UndefinedBehaviorSanitizer")


def wait_for(predicate, timeout=10.0, interval=0.02, what="condition"):
    """Polls predicate() until it returns a true value; returns that value.
    Raises AssertionError with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what} "
                                 f"(last value: {last!r})")
        time.sleep(interval)


def raise_nofile(n):
    """Raises RLIMIT_NOFILE (soft) to at least n if the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n if hard == resource.RLIM_INFINITY else min(n, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def parse_metrics(text):
    """Prometheus text -> {"name{labels}": value} (labels as printed)."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$", line)
        if not m:
            raise AssertionError(f"not a Prometheus sample line: {line!r}")
        v = float(m.group(2))
        out[m.group(1)] = int(v) if v.is_integer() else v
    return out


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # lower-case names
        self.body = body        # bytes
        try:
            self.json = json.loads(body) if body else None
        except ValueError:
            self.json = None

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def __repr__(self):
        return f"<Response {self.status} {self.body[:200]!r}>"


class Server:
    """One moonwire process."""

    def __init__(self, flags=(), config=None, env=None, listen=True, name="server"):
        self.flags = list(flags)
        self.config = config
        self.extra_env = env or {}
        self.listen = listen
        self.name = name
        self.proc = None
        self.port = None
        self.exit_code = None
        self.dir = tempfile.mkdtemp(prefix="mw-it-")
        self.stderr_path = os.path.join(self.dir, "stderr.log")
        self.stdout_path = os.path.join(self.dir, "stdout.log")

    # --- lifecycle ---------------------------------------------------------

    def args(self):
        args = [MOONWIRE_BIN]
        if self.config is not None:
            path = os.path.join(self.dir, "config.lua")
            with open(path, "w") as f:
                f.write(self.config)
            args += ["--config", path]
        if self.listen:
            args += ["--listen", "127.0.0.1:0"]
        return args + self.flags

    def env(self):
        env = dict(os.environ)
        env.pop("MOONWIRE_API_KEY", None)
        env.update(self.extra_env)
        return env

    def start(self):
        self._err = open(self.stderr_path, "wb")
        self._out = open(self.stdout_path, "wb")
        self.proc = subprocess.Popen(self.args(), stdout=self._out, stderr=self._err,
                                     stdin=subprocess.DEVNULL, env=self.env())
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", self.stderr())
            if m:
                self.port = int(m.group(1))
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        code = self.proc.poll()
        if code is None:
            self.proc.kill()
            self.proc.wait(5)
        raise AssertionError(f"{self.name} did not start (exit {code}); stderr:\n"
                             + self.stderr())

    def stderr(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        """SIGTERM; asserts exit code 0 within STOP_TIMEOUT and no sanitizer
        report. Idempotent."""
        if self.proc is None or self.exit_code is not None:
            return self.exit_code
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            self.exit_code = "timeout"
        finally:
            self._err.close()
            self._out.close()
        text = self.stderr()
        if self.exit_code != 0:
            raise AssertionError(f"{self.name} did not exit 0 after SIGTERM within "
                                 f"{STOP_TIMEOUT:.0f} s (got {self.exit_code}); "
                                 f"stderr:\n{text}")
        for mark in SANITIZER_MARKS:
            if mark in text:
                raise AssertionError(f"{self.name}: sanitizer report in stderr:\n{text}")
        shutil.rmtree(self.dir, ignore_errors=True)
        return 0

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    # --- HTTP --------------------------------------------------------------

    def http(self, method, path, body=None, headers=None, timeout=HTTP_TIMEOUT):
        """One request on a fresh connection (Connection: close)."""
        h = {"Connection": "close"}
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        elif isinstance(body, str):
            body = body.encode()
        h.update(headers or {})
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            data = r.read()
            return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
        finally:
            conn.close()

    def http_json(self, method, path, body=None, headers=None, timeout=HTTP_TIMEOUT):
        """(status, parsed JSON body or None, Response)."""
        r = self.http(method, path, body, headers, timeout)
        return r.status, r.json, r

    def publish(self, topic, event="UPDATED", data=None, trace_id=None, headers=None,
                expect=200):
        body = {"topic": topic, "event": event}
        if data is not None:
            body["data"] = data
        if trace_id is not None:
            body["trace_id"] = trace_id
        status, js, r = self.http_json("POST", "/api/publish", body, headers)
        if expect is not None and status != expect:
            raise AssertionError(f"publish {topic}: expected {expect}, got {r!r}")
        return js

    def metrics(self):
        r = self.http("GET", "/metrics")
        if r.status != 200:
            raise AssertionError(f"/metrics answered {r!r}")
        return parse_metrics(r.text)

    def metric(self, key, default=0):
        return self.metrics().get(key, default)

    def wait_metric(self, key, pred, timeout=10.0, what=None):
        """Polls /metrics until pred(value of key) holds; returns the value."""
        box = {}

        def check():
            box["v"] = self.metric(key)
            return pred(box["v"])
        wait_for(check, timeout, 0.02, what or f"{key} (value {box.get('v')})")
        return box["v"]

    def healthy(self):
        status, js, _ = self.http_json("GET", "/healthz")
        return status == 200 and js == {"status": "ok"}

    # --- WebSocket ---------------------------------------------------------

    def ws_uri(self, path="/ws"):
        return f"ws://127.0.0.1:{self.port}{path}"


class DumpOnFailure(unittest.TestCase):
    """Prints the stderr of every server in self.servers_to_dump (and of
    self.server / self.srv) when the test fails."""

    def run(self, result=None):
        self.servers_to_dump = []
        before = (len(result.failures) + len(result.errors)) if result else 0
        out = super().run(result)
        if result and len(result.failures) + len(result.errors) > before:
            seen = set()
            for srv in [getattr(self, "server", None), getattr(self, "srv", None)] + \
                    self.servers_to_dump:
                if isinstance(srv, Server) and id(srv) not in seen:
                    seen.add(id(srv))
                    dump_stderr(srv, self.id())
        return out


class ServerTestCase(DumpOnFailure):
    """A test class with one server for all its tests (SERVER_FLAGS,
    SERVER_CONFIG). tearDownClass stops it and asserts a clean exit. When a
    test fails, the server's stderr is printed (ASan reports land there)."""
    SERVER_FLAGS = ()
    SERVER_CONFIG = None
    SERVER_ENV = None
    server = None

    @classmethod
    def setUpClass(cls):
        cls.server = Server(cls.SERVER_FLAGS, cls.SERVER_CONFIG, cls.SERVER_ENV,
                            name=cls.__name__).start()

    @classmethod
    def tearDownClass(cls):
        srv, cls.server = cls.server, None
        if srv:
            srv.stop()

    @property
    def srv(self):
        return self.server

    def assertServerAlive(self):
        self.assertTrue(self.server.alive(), "the server process died")
        self.assertTrue(self.server.healthy(), "/healthz did not answer 200 ok")


def dump_stderr(server, test_id):
    if server is None:
        return
    sys.stderr.write(f"\n----- server stderr ({server.name}, after {test_id}) -----\n")
    sys.stderr.write(server.stderr())
    sys.stderr.write("----- end of server stderr -----\n")
    sys.stderr.flush()


def run_async(coro, timeout):
    """Runs coro in a new event loop with an overall deadline."""
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


# --- websockets (python3-websockets) helpers ---------------------------------

def ws_connect(server, subprotocol=None, timeout=10.0, **kw):
    """websockets.connect(...): `await` it, or use it with `async with`."""
    import websockets
    kw.setdefault("compression", None)
    kw.setdefault("ping_interval", None)
    kw.setdefault("max_size", 16 * 1024 * 1024)
    kw.setdefault("open_timeout", timeout)
    return websockets.connect(
        server.ws_uri(), subprotocols=[subprotocol] if subprotocol else None, **kw)


async def ws_send(ws, msg):
    if ws.subprotocol == "moonwire.msgpack":
        import msgpack
        await ws.send(msgpack.packb(msg, use_bin_type=True))
    else:
        await ws.send(json.dumps(msg))


def decode_frame(ws, raw):
    if ws.subprotocol == "moonwire.msgpack":
        import msgpack
        if not isinstance(raw, bytes):
            raise AssertionError(f"msgpack session got a text frame: {raw!r}")
        return msgpack.unpackb(raw, raw=False)
    if not isinstance(raw, str):
        raise AssertionError(f"json session got a binary frame: {raw!r}")
    return json.loads(raw)


async def ws_recv(ws, timeout=5.0):
    raw = await asyncio.wait_for(ws.recv(), timeout)
    return decode_frame(ws, raw)


async def ws_request(ws, msg, timeout=5.0):
    """Sends msg and returns the reply (ack, error or pong) with its id;
    events received meanwhile are returned as a list too."""
    await ws_send(ws, msg)
    events = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no reply to {msg!r} within {timeout} s")
        m = await ws_recv(ws, left)
        if m.get("type") in ("ack", "error", "pong") and m.get("id") == msg.get("id"):
            return m, events
        events.append(m)


async def ws_subscribe(ws, topics, rid="sub", timeout=5.0):
    reply, events = await ws_request(ws, {"type": "subscribe", "id": rid,
                                          "topics": list(topics)}, timeout)
    if reply.get("type") != "ack":
        raise AssertionError(f"subscribe {topics} failed: {reply!r}")
    return reply


# --- raw WebSocket client over a socket ---------------------------------------

def wait_eof(sock, timeout=5.0, sink=None):
    """Reads `sock` until the server closes it: True on EOF or reset, False
    if `timeout` seconds pass first. What arrives meanwhile goes to
    sink(bytes) when given, else it is dropped."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True
        if not chunk:
            return True
        if sink:
            sink(chunk)
    return False


class RawWS:
    """A minimal RFC 6455 client on a blocking socket, for what a real client
    library refuses to do (invalid UTF-8, huge frames, never reading)."""

    def __init__(self, port, path="/ws", protocol=None, rcvbuf=None, timeout=10.0,
                 handshake=True):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.buf = b""
        self.path = path
        self.protocol = protocol
        self.status = None
        self.head = None
        if handshake:
            self.handshake()

    def handshake(self):
        key = base64.b64encode(os.urandom(16)).decode()
        req = (f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               f"Sec-WebSocket-Version: 13\r\n")
        if self.protocol:
            req += f"Sec-WebSocket-Protocol: {self.protocol}\r\n"
        self.sock.sendall((req + "\r\n").encode())
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed during handshake: {self.buf!r}")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        self.head = head.decode("latin-1")
        self.status = int(self.head.split(" ", 2)[1])
        if self.status != 101:
            raise AssertionError(f"handshake refused: {self.head!r}")
        expect = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.headers = {}
        for line in self.head.split("\r\n")[1:]:
            k, _, v = line.partition(":")
            self.headers[k.strip().lower()] = v.strip()
        if self.headers.get("sec-websocket-accept") != expect:
            raise AssertionError(f"bad Sec-WebSocket-Accept in {self.head!r}")

    @staticmethod
    def frame(opcode, payload, fin=True, mask=True, declared_len=None):
        n = len(payload) if declared_len is None else declared_len
        b0 = (0x80 if fin else 0) | opcode
        mbit = 0x80 if mask else 0
        if n < 126:
            head = struct.pack("!BB", b0, mbit | n)
        elif n <= 0xFFFF:
            head = struct.pack("!BBH", b0, mbit | 126, n)
        else:
            head = struct.pack("!BBQ", b0, mbit | 127, n)
        if not mask:
            return head + payload
        key = os.urandom(4)
        masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) \
            if len(payload) < 4096 else _mask_fast(payload, key)
        return head + key + masked

    def send_frame(self, opcode, payload, **kw):
        self.sock.sendall(self.frame(opcode, payload, **kw))

    def send_text(self, text):
        self.send_frame(0x1, text.encode() if isinstance(text, str) else text)

    def send_json(self, msg):
        self.send_text(json.dumps(msg))

    def _fill(self, n, deadline):
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("frame not complete in time")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed by the server")
            self.buf += chunk

    def recv_frame(self, timeout=5.0):
        """-> (opcode, payload). Server frames are unmasked and final."""
        deadline = time.monotonic() + timeout
        self._fill(2, deadline)
        b0, b1 = self.buf[0], self.buf[1]
        n = b1 & 0x7F
        off = 2
        if n == 126:
            self._fill(4, deadline)
            n = struct.unpack("!H", self.buf[2:4])[0]
            off = 4
        elif n == 127:
            self._fill(10, deadline)
            n = struct.unpack("!Q", self.buf[2:10])[0]
            off = 10
        if b1 & 0x80:
            raise AssertionError("server sent a masked frame")
        self._fill(off + n, deadline)
        payload = self.buf[off:off + n]
        self.buf = self.buf[off + n:]
        return b0 & 0x0F, payload

    def recv_message(self, timeout=5.0):
        """Next data or close frame; answers pings. -> (opcode, payload)."""
        deadline = time.monotonic() + timeout
        while True:
            op, payload = self.recv_frame(max(0.01, deadline - time.monotonic()))
            if op == 0x9:
                self.send_frame(0xA, payload)
                continue
            if op == 0xA:
                continue
            return op, payload

    def recv_json(self, timeout=5.0):
        op, payload = self.recv_message(timeout)
        if op != 0x1:
            raise AssertionError(f"expected a text frame, got opcode {op}: {payload[:200]!r}")
        return json.loads(payload)

    def recv_close(self, timeout=5.0):
        """Reads until a close frame; -> (code, reason). Data frames before it
        are skipped."""
        deadline = time.monotonic() + timeout
        while True:
            op, payload = self.recv_message(max(0.01, deadline - time.monotonic()))
            if op == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                return code, payload[2:].decode("utf-8", "replace")

    def wait_eof(self, timeout=5.0):
        """True once the server closed the TCP connection (EOF or reset)."""
        return wait_eof(self.sock, timeout)

    def abort(self):
        """Closes with a TCP reset, no close frame."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self):
        self.sock.close()


def _mask_fast(payload, key):
    n = len(payload)
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")


def raw_http(port, data, timeout=10.0, read_all=True, responses=None):
    """Sends raw bytes on a new connection; returns everything read until the
    server closes (or `timeout`, or once `responses` complete responses
    arrived), and whether it closed."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        out = b""
        closed = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            out += chunk
            if not read_all:
                break
            if responses is not None and _complete_responses(out) >= responses:
                break
        return out, closed
    finally:
        s.close()


def parse_response(buf, head_only=False):
    """One complete HTTP/1.1 response (Content-Length framed) from the front
    of buf -> ((status, headers{lower}, body bytes), rest), or None if it is
    not all there yet. `head_only`: the answer to a HEAD (no body); a 101
    has none either."""
    head, sep, rest = buf.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    n = 0 if head_only or status == 101 else int(headers.get("content-length", "0"))
    if len(rest) < n:
        return None
    return (status, headers, rest[:n]), rest[n:]


def split_responses(data):
    """Splits raw HTTP/1.1 responses (Content-Length framed) ->
    [(status, headers{lower}, body bytes)]."""
    out = []
    while data:
        got = parse_response(data)
        if got is None:
            raise AssertionError(f"incomplete response: {data[:200]!r}")
        out.append(got[0])
        data = got[1]
    return out


def _complete_responses(data):
    try:
        return len(split_responses(data))
    except (AssertionError, ValueError, IndexError):
        return 0
