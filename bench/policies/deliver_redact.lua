-- bench: half of the connections (every other one, by connect order) get
-- each event as a copy without data.pad; the others get it unchanged.
local count = 0

function on_connect(req)
  count = count + 1
  return { user_id = "u" .. count, claims = { redact = count % 2 == 0 } }
end

function on_deliver(conn, event)
  if conn.claims.redact then
    local copy = moonwire.copy(event)
    copy.data.pad = nil
    return copy
  end
  return event
end
