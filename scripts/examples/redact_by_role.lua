-- redact_by_role.lua: everyone receives the events, but only admins see the
-- personal fields. Non-admins get data.payload.email and data.payload.phone
-- removed.
--
-- The role comes from the "role" claim of an HS256 JWT signed with
-- MOONWIRE_JWT_SECRET (claims: sub, role = "admin" | anything else).
--
-- Cost matters here: on_deliver runs once per recipient. Admins get the
-- event itself back (no copy, no re-encoding); all non-admins share ONE
-- redacted copy per event, so the server encodes that copy once and sends
-- the same bytes to each of them.
--
-- Run:  MOONWIRE_JWT_SECRET=change-me moonwire --policy scripts/examples/redact_by_role.lua

local SECRET = os.getenv("MOONWIRE_JWT_SECRET")
assert(SECRET and SECRET ~= "",
       "redact_by_role.lua needs the environment variable MOONWIRE_JWT_SECRET")

-- The fields of data.payload that only admins may see.
local PRIVATE = { "email", "phone" }

function on_connect(req)
  if not req.token then
    return nil, 401, "missing token"
  end
  local claims, why = moonwire.jwt.verify(req.token, SECRET)
  if not claims then
    return nil, 401, why
  end
  if type(claims.sub) ~= "string" then
    return nil, 401, "token has no sub"
  end
  return { user_id = claims.sub, claims = { role = claims.role } }
end

local function is_admin(conn)
  return conn ~= nil and conn.claims ~= nil and conn.claims.role == "admin"
end

-- Redacted copies, by event id. The server hands one event to all its
-- recipients before the next, so the table only ever needs the current
-- event: it is replaced when a new id comes (memory stays bounded).
local redacted = {}

local function redact(event)
  local copy = redacted[event.id]
  if copy then
    return copy
  end
  local payload = event.data.payload
  local private = false
  if type(payload) == "table" then
    for _, field in ipairs(PRIVATE) do
      if payload[field] ~= nil then
        private = true
      end
    end
  end
  if private then
    -- Never modify `event` (shared by all recipients): a deep copy.
    copy = moonwire.copy(event)
    for _, field in ipairs(PRIVATE) do
      copy.data.payload[field] = nil
    end
  else
    copy = event -- nothing to hide: unchanged, no re-encoding
  end
  redacted = { [event.id] = copy }
  return copy
end

function on_deliver(conn, event)
  if is_admin(conn) then
    return event
  end
  return redact(event)
end
