-- publish_validator.lua: check every published event before it is stored
-- and fanned out, and stamp the ones that pass.
--
-- on_publish runs for the server API (POST /api/publish, conn == nil) and for
-- clients publishing over WebSocket. A refusal answers the API with the code
-- (here 400) and {"error": reason}, and a client with an error frame.
--
-- Rules:
--   * event is ADDED, UPDATED, DELETED, STATUS_CHANGED, or "custom.<name>";
--   * data.entity_id is a non-empty string;
--   * data.payload is a table (a JSON object);
-- and each accepted event gets data.validated_at = the server time (seconds
-- since the epoch, with milliseconds).
--
-- Run:  moonwire --policy scripts/examples/publish_validator.lua

local KNOWN_EVENTS = {
  ADDED = true,
  UPDATED = true,
  DELETED = true,
  STATUS_CHANGED = true,
}

local function valid_event_name(name)
  return KNOWN_EVENTS[name] == true
      or (type(name) == "string" and name:sub(1, 7) == "custom." and #name > 7)
end

function on_publish(conn, event)
  if not valid_event_name(event.event) then
    return nil, 400,
        "event must be ADDED, UPDATED, DELETED, STATUS_CHANGED or custom.<name>"
  end
  local data = event.data
  if type(data.entity_id) ~= "string" or data.entity_id == "" then
    return nil, 400, "data.entity_id must be a non-empty string"
  end
  -- JSON lists are Lua tables too (marked with moonwire.json.array_mt):
  -- a payload must be an object.
  if type(data.payload) ~= "table"
      or getmetatable(data.payload) == moonwire.json.array_mt then
    return nil, 400, "data.payload must be an object"
  end
  data.validated_at = moonwire.now()
  return event -- the changed event is what gets stored and delivered
end
