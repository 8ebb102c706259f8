-- on_connect / on_subscribe fixture for test_policy.c: the token (or the
-- topic) selects the behaviour.
function on_connect(req)
  local t = req.token
  if t == "alice" then
    return {user_id = "alice", tenant_id = "acme",
            claims = {role = "admin", n = 3}}
  elseif t == "num" then
    return {user_id = 42, all_tenants = true}
  elseif t == "deny" then
    return nil, 403, "go away"
  elseif t == "deny-default" then
    return false
  elseif t == "bad" then
    return "yes"
  elseif t == "bad-uid" then
    return {user_id = {}}
  elseif t == "bad-code" then
    return nil, "401"
  elseif t == "boom" then
    error("boom")
  elseif t == "arith" then
    local x = nil
    return x + 1
  elseif t == "req" then
    return {user_id = table.concat({req.headers["x-user"], req.query.q,
      req.cookies.c, req.remote_addr, req.transport}, "|")}
  end
  return nil
end

function on_subscribe(conn, topic)
  if topic == "presence:room" then
    return true, {presence = true}
  elseif topic == "private" then
    return false, 451, "not yours"
  elseif topic == "nil" then
    return nil
  elseif topic == "bad" then
    return 1
  elseif topic == "bad-presence" then
    return true, {presence = "yes"}
  elseif topic == "whoami" then
    return conn ~= nil and conn.user_id == "alice" and conn.tenant_id == "acme"
      and conn.claims.role == "admin" and conn.transport == "websocket"
      and conn.id == "c-1"
  elseif topic == "anon" then
    return conn ~= nil and conn.user_id == nil and conn.id == "c-2"
  end
  return true
end
