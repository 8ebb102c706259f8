-- Main script of the tenants fixture: rules from tenants/*.lua win over the
-- global `tenants` table.
tenants = {
  beta = {max_connections = 2, topics = {"beta:*"}},
  acme = {max_connections = 99},
}

function on_connect(req)
  return {user_id = req.token, tenant_id = req.query.tenant}
end
