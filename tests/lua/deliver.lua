-- on_deliver / on_publish fixture for test_policy.c: the recipient's claims
-- choose the behaviour.
local seen = setmetatable({}, {__mode = "k"})
distinct = 0
calls = 0
local shared, mutable

function on_connect(req)
  return {user_id = req.token, claims = {mode = req.query.mode or "pass"}}
end

function on_subscribe(conn, topic)
  if topic == "stats" then
    return false, 299, distinct .. "/" .. calls
  end
  return true
end

function on_deliver(conn, ev)
  calls = calls + 1
  if not seen[ev] then
    seen[ev] = true
    distinct = distinct + 1
  end
  local mode = conn.claims.mode
  if mode == "drop" then
    return nil
  elseif mode == "inplace" then
    ev.data.extra = 1
    return ev
  elseif mode == "inplace-topic" then
    ev.topic = "elsewhere"
    return ev
  elseif mode == "new" then
    return {event = "NEW", data = {who = conn.user_id, list = {1, 2}}}
  elseif mode == "copy" then
    local e = moonwire.copy(ev)
    e.data.who = conn.user_id
    return e
  elseif mode == "shared" then
    shared = shared or {event = "SHARED", data = {k = 1}}
    return shared
  elseif mode == "mutate" then
    mutable = mutable or {event = "MUT", data = {}}
    mutable.data.who = conn.user_id
    return mutable
  elseif mode == "bad-event" then
    return {event = 5, data = {}}
  elseif mode == "bad-data" then
    return {event = "E", data = {1, 2, 3}}
  elseif mode == "bad-type" then
    return "nope"
  elseif mode == "error" then
    ev.data.dirty = true
    error("deliver failed")
  elseif mode == "check" then
    -- The table the hook sees is the event's envelope.
    if ev.type == "event" and ev.topic == "room:1" and ev.event == "UPDATED"
       and ev.seq == 7 and ev.id == "room:1:7" and ev.trace_id == "tr-1"
       and ev.data.name == "Bike" and ev.data.tags[2] == "b" then
      return ev
    end
    return nil
  end
  return ev
end

function on_publish(conn, ev)
  local mode = ev.data.mode
  if mode == "deny" then
    return nil, 429, "slow down"
  elseif mode == "deny-default" then
    return nil
  elseif mode == "inplace" then
    ev.data.stamped = conn and conn.user_id or "server"
    return ev
  elseif mode == "new" then
    return {event = "REWRITTEN", data = {n = 1}, trace_id = "new-trace"}
  elseif mode == "new-notrace" then
    return {event = "REWRITTEN", data = {}}
  elseif mode == "bad" then
    return true
  elseif mode == "topic" then
    ev.topic = "other"   -- ignored: the topic cannot change
    return ev
  end
  return ev
end
