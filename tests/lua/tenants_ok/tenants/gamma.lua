-- Tenant "gamma": a transform that drops everything but "keep" events.
return {
  transform = function(conn, ev)
    if ev.event ~= "keep" then return nil end
    return ev
  end,
}
