"""SPEC §4 / docs/lua.md "Cost: encode once": the event handed to on_deliver
is one read-only view per event, shared by every recipient. Against the real
binary with real WebSocket clients:

- a hook that returns the event unchanged sends the shared bytes;
- a hook that writes to the event (a field, a nested array through
  table.insert) sends that recipient a changed event, and only that one:
  recipients after it get the event as published;
- reads through pairs / # / moonwire.copy see the event;
- equal copies made per recipient are sent as byte-identical frames.

Rules (as in mwtest): no sleep used as synchronisation; every wait is a poll
with a deadline or a blocking call with a timeout.
"""
import asyncio
import json
import unittest

import websockets

from mwtest import run_async, ws_subscribe
from test_policy import PolicyCase, recv_raw_event

POLICY = r'''
function on_connect(req)
  return { user_id = req.token or "anon" }
end

function on_deliver(conn, event)
  local u = conn.user_id
  if u == "inplace" then
    event.data.stamp = "x"
    return event
  elseif u == "push" then
    table.insert(event.data.list, 9)
    return event
  elseif u:sub(1, 6) == "redact" then
    local c = moonwire.copy(event)
    c.data.secret = nil
    return c
  elseif u == "iter" then
    local n = 0
    for k, v in pairs(event.data) do n = n + 1 end
    local c = moonwire.copy(event)
    c.data = { nkeys = n, len = #event.data.list, first = event.data.list[1] }
    return c
  end
  return event
end
'''

# The hub delivers in one order per event; the writers sit between the
# plain recipients whatever that order is.
USERS = ["plain1", "inplace", "plain2", "push", "redact1", "plain3",
         "redact2", "iter", "plain4"]


def connect(srv, token):
    return websockets.connect(
        f"ws://127.0.0.1:{srv.port}/ws?token={token}", compression=None,
        ping_interval=None, open_timeout=10, close_timeout=5)


class DeliverView(PolicyCase):
    POLICY_INLINE = POLICY
    EXTRA_FLAGS = ("--workers", "1")

    def test_writes_stay_with_their_recipient(self):
        data = {"secret": "s3", "list": [1, 2], "n": 1}

        async def go():
            socks = {}
            try:
                for u in USERS:
                    socks[u] = await connect(self.srv, u)
                    await ws_subscribe(socks[u], ["view:1"])
                for n in (1, 2, 3):
                    d = dict(data, n=n)
                    await asyncio.to_thread(self.srv.publish, "view:1",
                                            "UPDATED", data=d)
                    raw = {u: await recv_raw_event(socks[u]) for u in USERS}
                    got = {u: json.loads(r) for u, r in raw.items()}
                    for u in USERS:
                        self.assertEqual(got[u]["seq"], n, u)
                    plain = [u for u in USERS if u.startswith("plain")]
                    # The event as published (the server may add fields,
                    # such as a timestamp).
                    base = got[plain[0]]["data"]
                    self.assertEqual({k: base[k] for k in d}, d)
                    for u in plain:
                        self.assertEqual(raw[u], raw[plain[0]],
                                         "unchanged: the shared bytes")
                    self.assertEqual(got["inplace"]["data"],
                                     dict(base, stamp="x"))
                    self.assertEqual(got["push"]["data"],
                                     dict(base, list=[1, 2, 9]))
                    redacted = dict(base)
                    del redacted["secret"]
                    self.assertEqual(got["redact1"]["data"], redacted)
                    self.assertEqual(raw["redact1"], raw["redact2"],
                                     "equal copies: byte-identical frames")
                    self.assertEqual(got["iter"]["data"],
                                     {"nkeys": len(base), "len": 2,
                                      "first": 1})
                    # Apart from data, a changed event is the event.
                    for u in ("inplace", "push", "redact1", "iter"):
                        a, b = dict(got[u]), dict(got["plain1"])
                        a.pop("data")
                        b.pop("data")
                        self.assertEqual(a, b, u)
            finally:
                for ws in socks.values():
                    await ws.close()
        run_async(go(), 60)
        self.assertEqual(
            self.srv.metric('moonwire_policy_failures_total{hook="on_deliver",'
                            'status="error"}'), 0)
        self.assertServerAlive()


if __name__ == "__main__":
    unittest.main()
