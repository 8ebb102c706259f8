-- bench: every connection gets a tenant (from its token "t<k>", or round
-- robin over two tenants without one), so the core's tenant isolation runs
-- for every recipient before the hook; on_deliver passes the event through.
-- mw_loadgen --tenants K gives subscriber i the token t<i % K> and tags event
-- n with data.tenant_id = t<n % K>.
local next_tenant = 0

function on_connect(req)
  local tenant = req.token
  if not tenant or not tenant:match("^t%d+$") then
    tenant = "t" .. next_tenant
    next_tenant = (next_tenant + 1) % 2
  end
  return { user_id = "u-" .. tenant, tenant_id = tenant }
end

function on_deliver(conn, event)
  return event
end
