"""The policy applies to SSE and long-poll exactly as to WebSocket:
on_connect, on_subscribe, on_deliver, tenant isolation, tenant connection
limits; and presence counts their subscribers."""
import json
import os
import tempfile
import unittest

import mwtest
from mwtest import wait_for
from test_sse_longpoll import SSE, poll

POLICY = """
local who = {
  ["tok-acme"] = {user_id = "ann", tenant_id = "acme"},
  ["tok-acme2"] = {user_id = "abe", tenant_id = "acme"},
  ["tok-globex"] = {user_id = "gus", tenant_id = "globex"},
  ["tok-tiny"] = {user_id = "tia", tenant_id = "tiny"},
  ["tok-tiny2"] = {user_id = "tom", tenant_id = "tiny"},
  ["tok-quiet"] = {user_id = "quiet"},
}
function on_connect(req)
  local id = who[req.token or ""]
  if not id then return nil, 401, "unknown token" end
  return id
end
function on_subscribe(conn, topic)
  if topic == "secret" then return false, 403, "no secrets here" end
  return true
end
function on_deliver(conn, event)
  if conn.user_id == "quiet" and event.event == "NOISE" then return nil end
  return event
end
tenants = { tiny = { max_connections = 1 } }
"""


class PolicyOnEveryTransport(mwtest.ServerTestCase):
    @classmethod
    def setUpClass(cls):
        d = tempfile.mkdtemp(prefix="mw-tp-")
        path = os.path.join(d, "policy.lua")
        with open(path, "w") as f:
            f.write(POLICY)
        cls.SERVER_FLAGS = ("--policy", path)
        super().setUpClass()

    def sse(self, topics, token=None):
        path = "/sse?topics=" + topics + (f"&token={token}" if token else "")
        return SSE(self.srv.port, path)

    def test_on_connect_refuses_without_a_good_token(self):
        s = self.sse("a")
        self.assertEqual(s.status, 401)
        self.assertEqual(s.body["error"], "unknown token")
        s.close()
        r = poll(self.srv, "a", timeout=0, headers={"Authorization": "Bearer nope"})
        self.assertEqual(r.status, 401)
        r = poll(self.srv, "a", timeout=0, headers={"Cookie": "moonwire_token=tok-acme"})
        self.assertEqual(r.status, 200)

    def test_on_subscribe_refusal(self):
        r = poll(self.srv, "secret", timeout=0, headers={"Authorization": "Bearer tok-acme"})
        self.assertEqual(r.status, 403)
        self.assertEqual(json.loads(r.body)["error"], "no secrets here")
        s = self.sse("secret,open", "tok-acme")
        self.assertEqual(s.status, 200)
        name, data, _ = s.message()
        self.assertEqual(name, "error")
        self.assertEqual((data["topic"], data["code"], data["reason"]),
                         ("secret", 403, "no secrets here"))
        s.close()

    def test_tenant_isolation_on_sse_and_poll(self):
        s = self.sse("shared", "tok-acme")
        s.wait_ready()
        first = self.srv.publish("shared", "OTHER", {"tenant_id": "globex"})["seq"]
        self.srv.publish("shared", "MINE", {"tenant_id": "acme"})
        self.srv.publish("shared", "PUBLIC", {"x": 1})
        got = [s.event()["event"] for _ in range(2)]
        self.assertEqual(got, ["MINE", "PUBLIC"])
        s.close()
        # A poll replaying the same events skips the other tenant's too.
        cursor = poll_cursor(self.srv, "shared", "tok-acme", first - 1)
        r = poll(self.srv, cursor=cursor, timeout=1,
                 headers={"Authorization": "Bearer tok-acme"})
        self.assertEqual(r.status, 200)
        self.assertEqual([e["event"] for e in json.loads(r.body)["events"]], ["MINE", "PUBLIC"])

    def test_on_deliver_drop_on_poll(self):
        cursor = poll_cursor(self.srv, "noisy", "tok-quiet", 0)
        self.srv.publish("noisy", "NOISE")
        self.srv.publish("noisy", "SIGNAL")
        r = poll(self.srv, cursor=cursor, timeout=1,
                 headers={"Authorization": "Bearer tok-quiet"})
        self.assertEqual([e["event"] for e in json.loads(r.body)["events"]], ["SIGNAL"])

    def test_tenant_connection_limit_across_transports(self):
        s = self.sse("t", "tok-tiny")
        s.wait_ready()
        s2 = self.sse("t", "tok-tiny2")
        self.assertEqual(s2.status, 429)
        s2.close()
        r = poll(self.srv, "t", timeout=0, headers={"Authorization": "Bearer tok-tiny2"})
        self.assertEqual(r.status, 429)
        s.close()
        wait_for(lambda: poll(self.srv, "t", timeout=0,
                              headers={"Authorization": "Bearer tok-tiny2"}).status == 200,
                 10, what="the tenant's slot freed after the stream closed")

    def test_presence_counts_sse_subscribers(self):
        s = self.sse("room:sse", "tok-acme2")
        s.wait_ready()
        status, js, _ = self.srv.http_json("GET", "/api/presence?topic=room:sse")
        self.assertEqual(status, 200)
        self.assertEqual(js["users"], ["abe"])
        s.close()
        wait_for(lambda: self.srv.http_json("GET", "/api/presence?topic=room:sse")[1]["clients"] == 0,
                 10, what="presence gone with the stream")


def poll_cursor(srv, topic, token, seq):
    """A cursor for `topic` at `seq` in the server's current epoch."""
    import base64
    r = poll(srv, topic, timeout=0, headers={"Authorization": "Bearer " + token})
    assert r.status == 200, r
    c = json.loads(r.body)["cursor"]
    pos = json.loads(base64.urlsafe_b64decode(c + "=" * (-len(c) % 4)))
    epoch = pos[topic][1]
    raw = json.dumps({topic: [seq, epoch]}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


if __name__ == "__main__":
    unittest.main()
