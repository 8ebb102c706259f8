-- bench: on_deliver runs for every recipient and returns the event
-- unchanged (the core then sends the shared, already-encoded bytes).
function on_deliver(conn, event)
  return event
end
