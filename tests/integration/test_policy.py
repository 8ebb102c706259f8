"""SPEC §4: Lua policy hooks against the real binary, with real clients.

The example policies of scripts/examples/ are used where they fit (each copied
into a temp dir of its own, so that a tenants/ directory is next to the
script only when the test wants one); the rest are small inline scripts.
JWTs are built here (HS256, stdlib hmac/hashlib/base64).

Rules (as in mwtest): no sleep used as synchronisation; every wait is a poll
with a deadline or a blocking call with a timeout. A later event on the same
topic serves as a fence: when it arrives, an earlier one that did not arrive
was not delivered.
"""
import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import tempfile
import threading
import time
import unittest

import websockets

from mwtest import DumpOnFailure, Server, ServerTestCase, raw_http, run_async, \
    split_responses, wait_for, ws_recv, ws_request, ws_send, ws_subscribe

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.normpath(os.path.join(HERE, "..", "..", "scripts", "examples"))
SECRET = "integration-test-secret"
WS_GAUGE = 'moonwire_connections{transport="websocket"}'
BUDGET_CONFIG = "return { limits = { hook_budget_ms = 50 } }"


# --- helpers ------------------------------------------------------------------

def b64url(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def make_jwt(claims, secret=SECRET, alg="HS256"):
    """An HS256 (or HS384/HS512) JWT for `claims`."""
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384,
              "HS512": hashlib.sha512}[alg]
    head = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    signing = f"{head}.{body}".encode()
    sig = b64url(hmac.new(secret.encode(), signing, digest).digest())
    return f"{head}.{body}.{sig}"


def policy_dir(*example_files, inline=None, name="policy.lua"):
    """A temp dir holding copies of the given example files (paths relative to
    scripts/examples, e.g. "tenants/acme.lua"), or an inline script as
    `name`. Returns (dir, path of the first file or of `name`)."""
    d = tempfile.mkdtemp(prefix="mw-pol-")
    first = None
    for rel in example_files:
        dst = os.path.join(d, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(os.path.join(EXAMPLES, rel), dst)
        first = first or dst
    if inline is not None:
        first = os.path.join(d, name)
        write_atomic(first, inline)
    return d, first


def write_atomic(path, text):
    """Replaces the file in one rename, so a reload never reads half of it."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def connect(srv, path="/ws", headers=None, timeout=10.0):
    """websockets.connect to `path` (which may carry a query) with extra
    headers; `await` it or use `async with`."""
    return websockets.connect(
        f"ws://127.0.0.1:{srv.port}{path}", extra_headers=headers or {},
        compression=None, ping_interval=None, open_timeout=timeout,
        close_timeout=5, max_size=16 * 1024 * 1024)


def ws_upgrade_raw(srv, path="/ws", headers=None, timeout=10.0):
    """A WebSocket upgrade request on a raw socket -> (status, headers, body).
    For refusals, whose JSON body a WebSocket library does not show."""
    key = base64.b64encode(os.urandom(16)).decode()
    req = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
           f"Sec-WebSocket-Version: 13\r\n")
    for k, v in (headers or {}).items():
        req += f"{k}: {v}\r\n"
    out, _ = raw_http(srv.port, (req + "\r\n").encode(), timeout=timeout, responses=1)
    status, hdrs, body = split_responses(out)[0]
    return status, hdrs, body


async def expect_close(ws, timeout=5.0):
    """Reads until the server closes; -> (code, reason)."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except websockets.exceptions.ConnectionClosed as e:
        return e.code, e.reason


async def recv_events(ws, n, timeout=5.0):
    """The next n messages of type "event"."""
    out = []
    while len(out) < n:
        m = await ws_recv(ws, timeout)
        if m.get("type") == "event":
            out.append(m)
    return out


async def recv_raw_event(ws, timeout=5.0):
    """The next event frame as received (the text, unparsed)."""
    while True:
        raw = await asyncio.wait_for(ws.recv(), timeout)
        if json.loads(raw).get("type") == "event":
            return raw


def apublish(srv, *a, **kw):
    return asyncio.to_thread(srv.publish, *a, **kw)


class PolicyCase(ServerTestCase):
    """A server with one policy for the class. POLICY_FILES are copied from
    scripts/examples (the first one is --policy), or POLICY_INLINE is
    written to a temp dir."""
    POLICY_FILES = ()
    POLICY_INLINE = None
    EXTRA_FLAGS = ("--workers", "2")

    @classmethod
    def setUpClass(cls):
        cls.policy_dir, cls.policy_path = policy_dir(*cls.POLICY_FILES,
                                                     inline=cls.POLICY_INLINE)
        cls.SERVER_FLAGS = list(cls.EXTRA_FLAGS) + ["--policy", cls.policy_path]
        try:
            super().setUpClass()
        except BaseException:
            shutil.rmtree(cls.policy_dir, ignore_errors=True)
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            shutil.rmtree(cls.policy_dir, ignore_errors=True)

    def arun(self, coro, timeout=30):
        return run_async(coro, timeout)

    def wait_no_ws(self):
        """Every WebSocket of earlier tests is gone (limits released)."""
        self.srv.wait_metric(WS_GAUGE, lambda v: v == 0, timeout=10,
                             what="no open WebSocket connections")


# --- jwt_auth.lua ---------------------------------------------------------------

class JwtAuth(PolicyCase):
    POLICY_FILES = ("jwt_auth.lua",)
    SERVER_ENV = {"MOONWIRE_JWT_SECRET": SECRET}

    def token(self, sub="u1", **claims):
        c = {"sub": sub, "topics": ["gift-list:*", "news"],
             "exp": int(time.time()) + 600}
        c.update(claims)
        return make_jwt(c)

    def test_bad_token_refused_before_upgrade(self):
        now = int(time.time())
        cases = [
            ("garbage", "malformed token"),
            (self.token()[:-3] + "AAA", "bad signature"),
            (make_jwt({"sub": "u1"}, secret="another-secret"), "bad signature"),
            (self.token(exp=now - 60), "expired"),
            (self.token(nbf=now + 3600), "not yet valid"),
        ]
        before = self.srv.metric('moonwire_rejected_total{reason="connect_denied"}')
        for tok, reason in cases:
            with self.subTest(reason=reason):
                status, headers, body = ws_upgrade_raw(self.srv, f"/ws?token={tok}")
                self.assertEqual(status, 401, body)
                self.assertNotIn("sec-websocket-accept", headers)
                self.assertEqual(json.loads(body), {"error": reason})
        # The same refusal through the Authorization header.
        status, _, body = ws_upgrade_raw(self.srv, "/ws",
                                         {"Authorization": "Bearer garbage"})
        self.assertEqual((status, json.loads(body)), (401, {"error": "malformed token"}))
        self.srv.wait_metric('moonwire_rejected_total{reason="connect_denied"}',
                             lambda v: v >= before + len(cases) + 1)

        # A bad token in a first message: close 1008 with the reason.
        async def go():
            async with connect(self.srv) as ws:
                await ws_send(ws, {"type": "auth", "id": "a1", "token": "garbage"})
                return await expect_close(ws)
        self.assertEqual(self.arun(go()), (1008, "malformed token"))
        self.assertServerAlive()

    def test_token_sources_accepted(self):
        async def via_upgrade(path, headers, sub):
            async with connect(self.srv, path, headers) as ws:
                # Only user `sub` may subscribe to user:<sub>: the identity
                # on_connect returned is the token's.
                reply = await ws_subscribe(ws, [f"user:{sub}"], rid="s-own")
                self.assertEqual(reply["id"], "s-own")
                other, _ = await ws_request(ws, {"type": "subscribe", "id": "s-other",
                                                 "topics": ["user:somebody-else"]})
                self.assertEqual(other["type"], "error")
                self.assertEqual(other["code"], 403)
                # A publish carries the connection's user id.
                await ws_subscribe(ws, ["news"], rid="s-news")
                ack, _ = await ws_request(ws, {"type": "publish", "id": "p1", "topic": "news",
                                               "event": "UPDATED", "data": {"x": 1}})
                self.assertEqual(ack["type"], "ack", ack)
                ev = (await recv_events(ws, 1))[0]
                self.assertEqual(ev["data"]["user_id"], sub)

        async def via_first_message(sub):
            async with connect(self.srv) as ws:
                reply, _ = await ws_request(ws, {"type": "auth", "id": "a1",
                                                 "token": self.token(sub, tenant="t9")})
                self.assertEqual(reply["type"], "ack", reply)
                self.assertEqual(reply["id"], "a1")
                self.assertEqual(reply["data"]["user_id"], sub)
                self.assertEqual(reply["data"]["tenant_id"], "t9")
                self.assertIsInstance(reply["data"]["client_id"], str)
                await ws_subscribe(ws, [f"user:{sub}"])

        async def go():
            await via_upgrade(f"/ws?token={self.token('q-user')}", None, "q-user")
            await via_upgrade("/ws", {"Authorization": f"Bearer {self.token('h-user')}"},
                              "h-user")
            await via_upgrade("/ws", {"Cookie": f"a=b; moonwire_token={self.token('c-user')}"},
                              "c-user")
            await via_first_message("m-user")
        self.arun(go())

    def test_subscribe_denied_with_request_id(self):
        async def go():
            async with connect(self.srv, f"/ws?token={self.token('u7')}") as ws:
                await ws_subscribe(ws, ["gift-list:family-1", "news"], rid="ok")
                reply, _ = await ws_request(ws, {"type": "subscribe", "id": "req-42",
                                                 "topics": ["secret:plans"]})
                self.assertEqual(reply, {"type": "error", "id": "req-42", "code": 403,
                                         "reason": "topic not in token"})
                # The connection stays usable.
                pong, _ = await ws_request(ws, {"type": "ping", "id": "p"})
                self.assertEqual(pong["type"], "pong")
        self.arun(go())


# --- publish_validator.lua ----------------------------------------------------

class PublishValidator(PolicyCase):
    POLICY_FILES = ("publish_validator.lua",)

    def test_publish_transformed_for_all_subscribers(self):
        async def go():
            async with connect(self.srv) as a, connect(self.srv) as b:
                await ws_subscribe(a, ["orders:1"])
                await ws_subscribe(b, ["orders:1"])
                t0 = time.time()
                pub = await apublish(self.srv, "orders:1", "UPDATED",
                                     data={"entity_id": "o-1", "payload": {"qty": 2}})
                t1 = time.time()
                ea = (await recv_events(a, 1))[0]
                eb = (await recv_events(b, 1))[0]
                for ev in (ea, eb):
                    self.assertEqual(ev["seq"], pub["seq"])
                    self.assertEqual(ev["event"], "UPDATED")
                    self.assertEqual(ev["data"]["entity_id"], "o-1")
                    self.assertEqual(ev["data"]["payload"], {"qty": 2})
                    v = ev["data"]["validated_at"]
                    self.assertIsInstance(v, (int, float))
                    self.assertTrue(t0 - 1 <= v <= t1 + 1, (t0, v, t1))
                self.assertEqual(ea, eb)
                # A client's publish goes through the same hook.
                ack, _ = await ws_request(a, {"type": "publish", "id": "m1", "topic": "orders:1",
                                              "event": "custom.note",
                                              "data": {"entity_id": "o-1", "payload": {}}})
                self.assertEqual(ack["type"], "ack", ack)
                for ws in (a, b):
                    ev = (await recv_events(ws, 1))[0]
                    self.assertEqual(ev["event"], "custom.note")
                    self.assertIn("validated_at", ev["data"])
        self.arun(go())

    def test_publish_rejected_by_validator(self):
        bad = [
            ("NOPE", {"entity_id": "e", "payload": {}},
             "event must be ADDED, UPDATED, DELETED, STATUS_CHANGED or custom.<name>"),
            ("custom.", {"entity_id": "e", "payload": {}},
             "event must be ADDED, UPDATED, DELETED, STATUS_CHANGED or custom.<name>"),
            ("ADDED", {"payload": {}}, "data.entity_id must be a non-empty string"),
            ("ADDED", {"entity_id": "", "payload": {}},
             "data.entity_id must be a non-empty string"),
            ("ADDED", {"entity_id": 7, "payload": {}},
             "data.entity_id must be a non-empty string"),
            ("ADDED", {"entity_id": "e"}, "data.payload must be an object"),
            ("ADDED", {"entity_id": "e", "payload": "text"}, "data.payload must be an object"),
            ("ADDED", {"entity_id": "e", "payload": [1, 2]}, "data.payload must be an object"),
        ]

        async def go():
            async with connect(self.srv) as ws:
                await ws_subscribe(ws, ["val:1"])
                for event, data, reason in bad:
                    status, js, r = await asyncio.to_thread(
                        self.srv.http_json, "POST", "/api/publish",
                        {"topic": "val:1", "event": event, "data": data})
                    self.assertEqual(status, 400, (event, data, r))
                    self.assertEqual(js, {"error": reason})
                # A client's refused publish: an error frame with the code.
                reply, _ = await ws_request(ws, {"type": "publish", "id": "m-bad",
                                                 "topic": "val:1", "event": "ADDED",
                                                 "data": {"payload": {}}})
                self.assertEqual(reply, {"type": "error", "id": "m-bad", "code": 400,
                                         "reason": "data.entity_id must be a non-empty string"})
                # Nothing was stored or delivered: the first good event is seq 1
                # and is the first event this subscriber sees.
                pub = await apublish(self.srv, "val:1", "DELETED",
                                     data={"entity_id": "e", "payload": {}})
                self.assertEqual(pub["seq"], 1)
                ev = (await recv_events(ws, 1))[0]
                self.assertEqual((ev["seq"], ev["event"]), (1, "DELETED"))
        self.arun(go())


# --- on_deliver drop (inline) -------------------------------------------------

DROP_POLICY = r'''
local USERS = { ["t-ann"] = "ann", ["t-ben"] = "ben" }

function on_connect(req)
  local user = req.token and USERS[req.token]
  if not user then return nil, 401, "unknown token" end
  return { user_id = user }
end

-- Drops the event for the user it is hidden from.
function on_deliver(conn, event)
  if event.data.hidden_from == conn.user_id then
    return nil
  end
  return event
end
'''


class DeliverDrop(PolicyCase):
    POLICY_INLINE = DROP_POLICY

    def test_deliver_dropped_for_one_subscriber_only(self):
        key = 'moonwire_events_dropped_total{reason="policy"}'
        before = self.srv.metric(key)

        async def go():
            async with connect(self.srv, "/ws?token=t-ann") as ann, \
                    connect(self.srv, "/ws?token=t-ben") as ben:
                await ws_subscribe(ann, ["notes:1"])
                await ws_subscribe(ben, ["notes:1"])
                await apublish(self.srv, "notes:1", "ADDED",
                               data={"hidden_from": "ben", "n": 1})
                await apublish(self.srv, "notes:1", "ADDED", data={"n": 2})
                got_ann = await recv_events(ann, 2)
                self.assertEqual([e["data"]["n"] for e in got_ann], [1, 2])
                # ben's first event is the second one: the first was dropped.
                got_ben = await recv_events(ben, 1)
                self.assertEqual((got_ben[0]["seq"], got_ben[0]["data"]["n"]), (2, 2))
        self.arun(go())
        self.srv.wait_metric(key, lambda v: v == before + 1)


# --- redact_by_role.lua -------------------------------------------------------

class RedactByRole(PolicyCase):
    POLICY_FILES = ("redact_by_role.lua",)
    SERVER_ENV = {"MOONWIRE_JWT_SECRET": SECRET}
    EXTRA_FLAGS = ("--workers", "1")  # byte-identical: the same worker's encoding

    def test_redaction_by_role(self):
        admin = make_jwt({"sub": "root", "role": "admin"})
        u1 = make_jwt({"sub": "u1", "role": "user"})
        u2 = make_jwt({"sub": "u2"})
        payload = {"name": "Ann", "email": "ann@example.com", "phone": "+1 555 0100"}

        async def go():
            async with connect(self.srv, f"/ws?token={admin}") as wa, \
                    connect(self.srv, f"/ws?token={u1}") as w1, \
                    connect(self.srv, f"/ws?token={u2}") as w2:
                for ws in (wa, w1, w2):
                    await ws_subscribe(ws, ["contacts:1"])
                await apublish(self.srv, "contacts:1", "UPDATED",
                               data={"entity_id": "c1", "payload": payload})
                ra, r1, r2 = [await recv_raw_event(ws) for ws in (wa, w1, w2)]
                ea, e1 = json.loads(ra), json.loads(r1)
                self.assertEqual(ea["data"]["payload"], payload)
                self.assertEqual(e1["data"]["payload"], {"name": "Ann"})
                self.assertEqual(r1, r2, "non-admins must get byte-identical frames")
                # Apart from the payload, the redacted event is the event.
                ea["data"].pop("payload")
                e1["data"].pop("payload")
                self.assertEqual(ea, e1)
                # Nothing private: everyone gets the event unchanged.
                await apublish(self.srv, "contacts:1", "UPDATED",
                               data={"entity_id": "c1", "payload": {"name": "Bo"}})
                ra, r1, r2 = [await recv_raw_event(ws) for ws in (wa, w1, w2)]
                self.assertEqual(ra, r1)
                self.assertEqual(r1, r2)
                self.assertEqual(json.loads(ra)["data"]["payload"], {"name": "Bo"})
        self.arun(go())


# --- multi_tenant.lua + tenants/ ----------------------------------------------

class MultiTenant(PolicyCase):
    POLICY_FILES = ("multi_tenant.lua", "tenants/acme.lua", "tenants/globex.lua")

    def setUp(self):
        self.wait_no_ws()

    def test_cross_tenant_event_never_delivered(self):
        iso = 'moonwire_events_dropped_total{reason="tenant_isolation"}'
        before = self.srv.metric(iso)

        async def go():
            async with connect(self.srv, "/ws?token=acme-alice") as acme, \
                    connect(self.srv, "/ws?token=ops-console") as ops:
                await ws_subscribe(acme, ["public:news"])
                await ws_subscribe(ops, ["public:news"])
                await apublish(self.srv, "public:news", "UPDATED",
                               data={"tenant_id": "globex", "entity_id": "g",
                                     "payload": {"secret": "globex only"}})
                await apublish(self.srv, "public:news", "UPDATED",
                               data={"entity_id": "p", "payload": {"text": "for all"}})
                await apublish(self.srv, "public:news", "UPDATED",
                               data={"tenant_id": "acme", "entity_id": "a", "payload": {}})
                got = await recv_events(acme, 2)
                # seq 1 (globex's) never reached acme; the public one did,
                # through acme's transform.
                self.assertEqual([e["seq"] for e in got], [2, 3])
                self.assertEqual(got[0]["data"]["payload"],
                                 {"text": "for all", "tenant_label": "ACME Corporation"})
                self.assertNotIn("tenant_id", got[0]["data"])
                self.assertEqual(got[1]["data"]["tenant_id"], "acme")
                self.assertEqual(got[1]["data"]["payload"]["tenant_label"], "ACME Corporation")
                for e in got:
                    self.assertNotIn("globex", json.dumps(e))
                # The console widened isolation explicitly: it sees all three,
                # without acme's transform.
                seen = await recv_events(ops, 3)
                self.assertEqual([e["seq"] for e in seen], [1, 2, 3])
                self.assertEqual(seen[0]["data"]["tenant_id"], "globex")
                self.assertNotIn("tenant_label", seen[1]["data"]["payload"])
                # A tenant's client cannot publish into another tenant...
                reply, _ = await ws_request(acme, {
                    "type": "publish", "id": "x1", "topic": "public:news", "event": "ADDED",
                    "data": {"tenant_id": "globex"}})
                self.assertEqual((reply["type"], reply["code"]), ("error", 403), reply)
                # ...and what it publishes is stamped with its tenant.
                ack, _ = await ws_request(acme, {"type": "publish", "id": "x2",
                                                 "topic": "public:news", "event": "ADDED",
                                                 "data": {}})
                self.assertEqual(ack["type"], "ack", ack)
                ev = (await recv_events(ops, 1))[0]
                self.assertEqual((ev["data"]["tenant_id"], ev["data"]["user_id"]),
                                 ("acme", "alice"))
        self.arun(go())
        self.srv.wait_metric(iso, lambda v: v >= before + 1)

    def test_non_string_tenant_id_is_not_public(self):
        """Isolation must not fail open when a backend sends a tenant id that
        is not a string (a number, a boolean): such an event is either
        refused at publish or kept from every tenant's connection; today it
        reaches all of them (hub.c reads data.tenant_id with
        json_string_value, NULL for a number, i.e. "public")."""
        async def go():
            async with connect(self.srv, "/ws?token=acme-alice") as acme:
                await ws_subscribe(acme, ["public:odd"])
                for tid in (43, True, ["globex"]):
                    await apublish(self.srv, "public:odd", "UPDATED",
                                   data={"tenant_id": tid, "n": 1}, expect=None)
                pub = await apublish(self.srv, "public:odd", "UPDATED", data={"n": 2})
                ev = (await recv_events(acme, 1))[0]
                # The first event acme sees must be the public fence.
                self.assertEqual((ev["seq"], ev["data"]["n"]), (pub["seq"], 2), ev)
        self.arun(go())

    def test_tenant_connection_limit(self):
        key = 'moonwire_rejected_total{reason="max_connections_per_tenant"}'
        before = self.srv.metric(key)

        async def go():
            alice = await connect(self.srv, "/ws?token=acme-alice")
            bob = await connect(self.srv, "/ws?token=acme-bob")
            try:
                # Another tenant is not affected by acme's limit.
                async with connect(self.srv, "/ws?token=globex-gina") as gina:
                    await ws_subscribe(gina, ["globex:x"])
                # The third acme connection: refused before the upgrade...
                status, _, body = await asyncio.to_thread(
                    ws_upgrade_raw, self.srv, "/ws?token=acme-carol")
                self.assertEqual(status, 429, body)
                self.assertEqual(json.loads(body),
                                 {"error": "too many connections for this tenant"})
                # ...or, authenticating by first message, closed with 1008.
                async with connect(self.srv) as late:
                    await ws_send(late, {"type": "auth", "id": "a", "token": "acme-carol"})
                    self.assertEqual(await expect_close(late),
                                     (1008, "too many connections for this tenant"))
                await alice.close()
                # Wait for the server to see the close.
                await asyncio.to_thread(self.srv.wait_metric, WS_GAUGE, lambda v: v == 1)
                async with connect(self.srv, "/ws?token=acme-carol") as carol:
                    await ws_subscribe(carol, ["acme:board"])
            finally:
                await alice.close()
                await bob.close()
        self.arun(go())
        self.srv.wait_metric(key, lambda v: v >= before + 2)

    def test_tenant_topic_patterns(self):
        async def go():
            async with connect(self.srv, "/ws?token=acme-alice") as acme, \
                    connect(self.srv, "/ws?token=globex-gina") as globex:
                await ws_subscribe(acme, ["acme:x", "public:y"])
                reply, _ = await ws_request(acme, {"type": "subscribe", "id": "g1",
                                                   "topics": ["globex:x"]})
                self.assertEqual(reply["type"], "error")
                self.assertEqual((reply["id"], reply["code"]), ("g1", 403))
                self.assertIn("globex:x", reply["reason"])
                await ws_subscribe(globex, ["globex:x"])
                reply, _ = await ws_request(globex, {"type": "subscribe", "id": "g2",
                                                     "topics": ["public:y"]})
                self.assertEqual((reply["type"], reply["code"]), ("error", 403))
                # Publishing outside the patterns is refused too.
                reply, _ = await ws_request(acme, {"type": "publish", "id": "p", "event": "E",
                                                   "topic": "globex:x", "data": {}})
                self.assertEqual((reply["type"], reply["code"]), ("error", 403))
        self.arun(go())


# --- failing hooks (inline) ---------------------------------------------------

FAILING_POLICY = r'''
function on_subscribe(conn, topic)
  if topic == "boom" then
    local t = nil
    return t.field                      -- attempt to index a nil value
  elseif topic == "loop:while" then
    while true do end
  elseif topic == "loop:for" then
    local x
    for i = 1, 1e15 do x = i end        -- a loop the JIT would compile
    return x ~= nil
  elseif topic == "loop:pcall" then
    while true do pcall(function() while true do end end) end
  end
  return true
end
'''


class FailingHooks(PolicyCase):
    POLICY_INLINE = FAILING_POLICY
    SERVER_CONFIG = BUDGET_CONFIG

    def subscribe_timed(self, topic):
        """Subscribes to `topic` on a new connection -> (reply, seconds)."""
        async def go():
            async with connect(self.srv) as ws:
                t0 = time.monotonic()
                reply, _ = await ws_request(ws, {"type": "subscribe", "id": "s1",
                                                 "topics": [topic]}, timeout=10)
                took = time.monotonic() - t0
                # The same connection still works afterwards.
                await ws_subscribe(ws, ["fine:1"], rid="s2")
                return reply, took
        return self.arun(go())

    def test_runtime_error_denies(self):
        key = 'moonwire_policy_failures_total{hook="on_subscribe",status="error"}'
        before = self.srv.metric(key)
        reply, _ = self.subscribe_timed("boom")
        self.assertEqual(reply, {"type": "error", "id": "s1", "code": 403,
                                 "reason": "policy error"})
        self.assertServerAlive()
        self.srv.wait_metric(key, lambda v: v == before + 1)

    def check_loop(self, topic):
        key = 'moonwire_policy_failures_total{hook="on_subscribe",status="timeout"}'
        before = self.srv.metric(key)
        health = []
        stop = threading.Event()

        def poll_health():
            while not stop.is_set():
                t0 = time.monotonic()
                status, _, _ = self.srv.http_json("GET", "/healthz", timeout=5)
                health.append((status, time.monotonic() - t0))

        th = threading.Thread(target=poll_health)
        th.start()
        try:
            results = [self.subscribe_timed(topic) for _ in range(3)]
        finally:
            stop.set()
            th.join(10)
        for reply, took in results:
            self.assertEqual(reply, {"type": "error", "id": "s1", "code": 403,
                                     "reason": "policy error"})
            self.assertLess(took, 2.0, f"{topic}: refused after {took:.2f} s")
        self.assertTrue(health, "no /healthz answer while the loops ran")
        for status, took in health:
            self.assertEqual(status, 200)
            self.assertLess(took, 2.0)
        self.assertServerAlive()
        self.srv.wait_metric(key, lambda v: v == before + 3)

    def test_infinite_while_loop(self):
        self.check_loop("loop:while")

    def test_infinite_numeric_for_loop(self):
        self.check_loop("loop:for")

    def test_infinite_loop_behind_pcall(self):
        self.check_loop("loop:pcall")


# --- reload (inline scripts rewritten) ----------------------------------------

RELOAD_V1 = r'''
function on_connect(req)
  return { user_id = req.token or "anon" }
end
function on_subscribe(conn, topic)
  return true
end
'''

RELOAD_V2 = r'''
function on_connect(req)
  return { user_id = req.token or "anon" }
end
function on_subscribe(conn, topic)
  if moonwire.match("room:*", topic) then
    return false, 403, "rooms closed for " .. conn.user_id
  end
  return true
end
'''

RELOAD_BROKEN = r'''
function on_subscribe(conn, topic)
  return true
end
function on_connect(req     -- a syntax error on this line
  return {}
end
'''


class Reload(DumpOnFailure):
    """Each test has its own server, whose script it rewrites."""

    def setUp(self):
        self.dir, self.path = policy_dir(inline=RELOAD_V1)
        self.srv = Server(["--workers", "2", "--policy", self.path], name=self.id()).start()
        self.addCleanup(shutil.rmtree, self.dir, True)

    def tearDown(self):
        self.srv.stop()

    def arun(self, coro, timeout=30):
        return run_async(coro, timeout)

    def reload(self):
        return self.srv.http_json("POST", "/api/reload", b"")

    async def attempt(self, ws, topic, rid):
        reply, events = await ws_request(ws, {"type": "subscribe", "id": rid,
                                              "topics": [topic]})
        return reply, events

    async def check_old_subscription(self, ws, topic):
        pub = await apublish(self.srv, topic, "UPDATED", data={"after": "reload"})
        ev = (await recv_events(ws, 1))[0]
        self.assertEqual((ev["topic"], ev["seq"]), (topic, pub["seq"]))
        pong, _ = await ws_request(ws, {"type": "ping", "id": "alive"})
        self.assertEqual(pong["type"], "pong")

    def test_reload_changes_behaviour_keeps_connections(self):
        async def go():
            async with connect(self.srv, "/ws?token=u5") as ws:
                await ws_subscribe(ws, ["room:a"], rid="before")
                write_atomic(self.path, RELOAD_V2)
                status, js, _ = await asyncio.to_thread(self.reload)
                self.assertEqual((status, js), (200, {"status": "reloaded"}))
                reply, _ = await self.attempt(ws, "room:b", "after")
                # The identity survives the reload (conn.user_id is still u5).
                self.assertEqual(reply, {"type": "error", "id": "after", "code": 403,
                                         "reason": "rooms closed for u5"})
                await ws_subscribe(ws, ["lobby"], rid="other")
                await self.check_old_subscription(ws, "room:a")
                self.assertEqual(self.srv.metric(WS_GAUGE), 1)
        self.arun(go())

    def test_broken_reload_keeps_old_policy(self):
        async def go():
            async with connect(self.srv, "/ws?token=u6") as ws:
                await ws_subscribe(ws, ["room:a"])
                write_atomic(self.path, RELOAD_BROKEN)
                status, js, r = await asyncio.to_thread(self.reload)
                self.assertEqual(status, 400, r)
                self.assertRegex(js["error"], "^" + re.escape(self.path) + r":\d+: ")
                # The old policy is still in force, for this connection and
                # for new ones.
                await ws_subscribe(ws, ["room:b"], rid="still")
                async with connect(self.srv, "/ws?token=u7") as ws2:
                    await ws_subscribe(ws2, ["room:c"], rid="new")
                await self.check_old_subscription(ws, "room:a")
                # Fixing the file and reloading works.
                write_atomic(self.path, RELOAD_V2)
                status, js = (await asyncio.to_thread(self.reload))[:2]
                self.assertEqual((status, js), (200, {"status": "reloaded"}))
                reply, _ = await self.attempt(ws, "room:d", "fixed")
                self.assertEqual((reply["type"], reply["code"]), ("error", 403))
        self.arun(go())

    def test_sighup_reload(self):
        async def go():
            async with connect(self.srv, "/ws?token=u8") as ws:
                await ws_subscribe(ws, ["room:a"])
                write_atomic(self.path, RELOAD_V2)
                self.srv.proc.send_signal(signal.SIGHUP)
                # Poll this connection's behaviour until the new policy shows.
                deadline = time.monotonic() + 10
                n = 0
                while True:
                    n += 1
                    reply, _ = await self.attempt(ws, f"room:p{n}", f"poll{n}")
                    if reply["type"] == "error":
                        self.assertEqual((reply["code"], reply["reason"]),
                                         (403, "rooms closed for u8"))
                        break
                    await ws_request(ws, {"type": "unsubscribe", "id": f"u{n}",
                                          "topics": [f"room:p{n}"]})
                    self.assertLess(time.monotonic(), deadline,
                                    "SIGHUP did not change the policy in 10 s")
                    await asyncio.sleep(0.02)  # poll interval, not a synchronisation
                await self.check_old_subscription(ws, "room:a")
                # A broken script on SIGHUP: logged, old policy kept.
                write_atomic(self.path, RELOAD_BROKEN)
                self.srv.proc.send_signal(signal.SIGHUP)
                await asyncio.to_thread(
                    wait_for, lambda: "reload failed, keeping the old policy"
                    in self.srv.stderr(), 10, 0.02, "the failed reload logged")
                reply, _ = await self.attempt(ws, "room:z", "after-broken")
                self.assertEqual((reply["type"], reply["code"]), ("error", 403))
                await ws_subscribe(ws, ["lobby"], rid="lobby")
        self.arun(go())


if __name__ == "__main__":
    unittest.main()
