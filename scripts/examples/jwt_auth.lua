-- jwt_auth.lua: authenticate every connection with an HS256 JWT and let it
-- subscribe only to the topics its token names.
--
-- The token (from ?token=, "Authorization: Bearer ...", the moonwire_token
-- cookie, or a first WebSocket message {"type":"auth","token":...}) must be
-- signed with the secret in the environment variable MOONWIRE_JWT_SECRET and
-- carry these claims:
--
--   sub     the user id (required)                     "u42"
--   tenant  the tenant id (optional; turns on isolation) "acme"
--   topics  topic patterns this user may subscribe to  ["gift-list:*", "news"]
--   exp/nbf checked by moonwire.jwt.verify
--
-- Every user may also subscribe to their own topic "user:<sub>".
--
-- Run:  MOONWIRE_JWT_SECRET=change-me moonwire --policy scripts/examples/jwt_auth.lua

-- Read the secret once, when the script loads (and again on every reload).
-- Refusing to load without it is better than accepting tokens signed with "".
local SECRET = os.getenv("MOONWIRE_JWT_SECRET")
assert(SECRET and SECRET ~= "",
       "jwt_auth.lua needs the environment variable MOONWIRE_JWT_SECRET")

-- on_connect(req): who is this? Returns the identity, or nil, code, reason
-- (the client gets HTTP 401 {"error": reason} before the WebSocket upgrade,
-- or a close 1008 with the reason when the token came in a first message).
function on_connect(req)
  if not req.token then
    return nil, 401, "missing token"
  end
  -- Checks the signature, "alg" and exp/nbf; returns the claims table, or
  -- nil and a short reason ("bad signature", "expired", "malformed token"...).
  local claims, why = moonwire.jwt.verify(req.token, SECRET)
  if not claims then
    return nil, 401, why
  end
  if type(claims.sub) ~= "string" or claims.sub == "" then
    return nil, 401, "token has no sub"
  end
  if claims.tenant ~= nil and type(claims.tenant) ~= "string" then
    return nil, 401, "tenant claim must be a string"
  end
  return {
    user_id = claims.sub,
    tenant_id = claims.tenant, -- nil: no tenant (no isolation)
    claims = claims,           -- kept with the connection: conn.claims below
  }
end

-- on_subscribe(conn, topic): may this connection subscribe to `topic`?
function on_subscribe(conn, topic)
  -- Everyone may listen to their own user topic.
  if topic == "user:" .. conn.user_id then
    return true
  end
  -- Otherwise one of the token's patterns must match ("*" matches any run
  -- of characters: "gift-list:*" matches "gift-list:family-123").
  local patterns = conn.claims and conn.claims.topics
  if type(patterns) == "table" then
    for _, pattern in ipairs(patterns) do
      if type(pattern) == "string" and moonwire.match(pattern, topic) then
        return true
      end
    end
  end
  return false, 403, "topic not in token"
end
