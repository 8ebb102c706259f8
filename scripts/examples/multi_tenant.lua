-- multi_tenant.lua: one server shared by several tenants (customers).
--
-- What it shows:
--   * identities that carry a tenant_id (here from a fixed token table, or
--     from a JWT's "tenant" claim when MOONWIRE_JWT_SECRET is set);
--   * tenant isolation, which needs no code at all: the server never delivers
--     an event whose data.tenant_id names another tenant to a connection of a
--     tenant (events without data.tenant_id are public and reach everyone);
--   * per-tenant rules in tenants/<tenant>.lua next to this file:
--     max_connections, allowed topic patterns and a transform of every
--     event delivered to that tenant (see tenants/acme.lua, tenants/globex.lua).
--
-- Publish a tenant's event from your backend with data.tenant_id set:
--   curl -d '{"topic":"public:news","event":"UPDATED",
--             "data":{"tenant_id":"acme","entity_id":"n1","payload":{}}}' \
--        localhost:8080/api/publish
-- Events a tenant's client publishes get data.tenant_id = its tenant.
--
-- Run:  moonwire --policy scripts/examples/multi_tenant.lua
-- (the tenants/ directory must sit next to the script; SIGHUP or
-- POST /api/reload re-reads both without dropping connections).

-- Demo credentials. In production, issue JWTs instead (see jwt_auth.lua);
-- never keep real secrets in a policy file.
local TOKENS = {
  ["acme-alice"]  = { user_id = "alice", tenant_id = "acme" },
  ["acme-bob"]    = { user_id = "bob",   tenant_id = "acme" },
  ["acme-carol"]  = { user_id = "carol", tenant_id = "acme" },
  ["globex-gina"] = { user_id = "gina",  tenant_id = "globex" },
  ["globex-hank"] = { user_id = "hank",  tenant_id = "globex" },
  -- A support console that must see every tenant: the only way to widen
  -- isolation is to say so explicitly with all_tenants = true.
  ["ops-console"] = { user_id = "ops", all_tenants = true },
}

local SECRET = os.getenv("MOONWIRE_JWT_SECRET")

function on_connect(req)
  local token = req.token
  if not token then
    return nil, 401, "missing token"
  end
  local who = TOKENS[token]
  if who then
    -- A fresh table: the server only reads it.
    return { user_id = who.user_id, tenant_id = who.tenant_id,
             all_tenants = who.all_tenants }
  end
  if SECRET and SECRET ~= "" then
    local claims, why = moonwire.jwt.verify(token, SECRET)
    if not claims then
      return nil, 401, why
    end
    if type(claims.sub) ~= "string" or type(claims.tenant) ~= "string" then
      return nil, 401, "token needs sub and tenant claims"
    end
    return { user_id = claims.sub, tenant_id = claims.tenant, claims = claims }
  end
  return nil, 401, "unknown token"
end

-- No on_subscribe: the tenants' topic patterns (tenants/*.lua) already
-- decide, in C, before any hook: acme may use "acme:*" and "public:*" only.
-- No on_deliver: isolation is built in, and acme's transform runs for acme.

-- Rules for a tenant without a file could also live here, e.g.
--   tenants = { initech = { max_connections = 100, topics = {"initech:*"} } }
-- (a tenants/<name>.lua file wins over an entry of this table).
