-- moonwire's default policy: the one built into the binary and used when no
-- --policy is given. Everyone may connect (as an anonymous identity),
-- subscribe to any topic, publish, and receive every event. Tenant isolation
-- still applies (it is enforced in C before any hook), but anonymous
-- identities have no tenant, so they see every event.
--
-- Copy this file to start your own policy: each hook is optional, and a
-- missing hook means "allow" / "pass through unchanged". See docs/lua.md.

-- on_connect(req): who is this? req.transport, req.remote_addr,
-- req.headers (lower-case names), req.query, req.cookies, req.token.
-- Return an identity table, or nil, code, reason to refuse.
function on_connect(req)
  return { user_id = "anonymous" }
end

-- on_subscribe(conn, topic): may this connection subscribe to topic?
-- Return true (optionally true, {presence = true}), or false, code, reason.
function on_subscribe(conn, topic)
  return true
end

-- on_publish(conn, event): conn is nil for the server API. Return the event
-- (possibly changed), or nil, code, reason to refuse it.
-- (Not defined here: events pass unchanged, without any Lua call.)

-- on_deliver(conn, event): called per recipient. Return the event unchanged
-- (no re-encoding), a changed copy, or nil to drop it for this recipient.
-- (Not defined here: delivery costs no Lua call at all.)

-- on_disconnect(conn, reason): the connection is gone.
-- (Not defined here.)
