-- tenants/acme.lua: the rules of tenant "acme" (the file name is the
-- tenant id). Loaded with multi_tenant.lua and on every reload.
--
-- A rules file returns a table with any of:
--   max_connections  at most this many open connections for the tenant
--                    (across all workers; 0 or absent: no limit). The one
--                    past the limit is refused with 429.
--   topics           patterns of the topics the tenant may subscribe and
--                    publish to (absent: every topic); others get 403.
--   transform        function(conn, event) run for every event delivered to
--                    a connection of this tenant, before on_deliver. Return
--                    the event unchanged, a changed copy, or nil to drop it.

-- The transform's result for the event being delivered. The server delivers
-- one event to all its recipients before the next, so keeping one entry is
-- enough, and every acme recipient shares the same table: the server then
-- encodes the changed event once, not once per connection.
local cache = { id = nil, out = nil }

return {
  max_connections = 2,
  topics = { "acme:*", "public:*" },

  transform = function(conn, event)
    if cache.id ~= event.id then
      -- Never change `event` itself (it is shared by every recipient):
      -- work on a deep copy.
      local out = moonwire.copy(event)
      if type(out.data.payload) ~= "table" then
        out.data.payload = {}
      end
      out.data.payload.tenant_label = "ACME Corporation"
      cache.id, cache.out = event.id, out
    end
    return cache.out
  end,
}
