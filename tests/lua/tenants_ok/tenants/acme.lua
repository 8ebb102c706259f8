-- Rules of tenant "acme".
return {
  max_connections = 5,
  topics = {"acme:*", "public"},
  transform = function(conn, ev)
    local e = moonwire.copy(ev)
    e.data.transformed_for = conn.tenant_id
    return e
  end,
}
