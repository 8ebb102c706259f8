-- moonwire.* fixture for test_policy.c: on_connect runs one library call
-- chosen by the token and returns what it got as claims.
local secret = "s3cret"

local function deep_equal(a, b)
  if type(a) ~= type(b) then return false end
  if type(a) ~= "table" then return a == b end
  for k, v in pairs(a) do if not deep_equal(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

function on_connect(req)
  local op = req.token
  if op == "jwt" then
    local claims, why =
      moonwire.jwt.verify(req.query.jwt, req.query.secret or secret)
    if not claims then return {claims = {error = why}} end
    return {user_id = claims.sub, claims = claims}
  elseif op == "json" then
    local v = {a = 1, b = {1, 2, 3}, c = "x\"y", d = true, e = {}, f = 1.5,
               g = moonwire.json.null,
               h = setmetatable({}, moonwire.json.array_mt)}
    local s = moonwire.json.encode(v)
    local back = moonwire.json.decode(s)
    local again = moonwire.json.encode(back)
    local ok = s == again and back.a == 1 and back.b[3] == 3
      and back.c == "x\"y"
      and back.d == true and back.f == 1.5 and back.g == moonwire.json.null
    local bad, why = moonwire.json.decode("{nope")
    local e1 = pcall(moonwire.json.encode, {f = function() end})
    local cyc = {}
    cyc.self = cyc
    local e2, why2 = pcall(moonwire.json.encode, cyc)
    local deep = {}
    local cur = deep
    for i = 1, 40 do cur.x = {} cur = cur.x end
    local e3 = pcall(moonwire.json.encode, deep)
    return {claims = {encoded = s, ok = ok,
                      bad = bad == nil and type(why) == "string",
                      fn_err = not e1, cycle_err = not e2, cycle_msg = why2,
                      deep_err = not e3, scalar = moonwire.json.encode("s"),
                      list = moonwire.json.decode("[1,2]")}}
  elseif op == "match" then
    local m = moonwire.match
    return {claims = {m("gift-list:*", "gift-list:1"), m("*", ""),
                      m("a*b*c", "aXbYc"),
                      not m("a*b*c", "aXbY"), not m("gift-list:*", "other:1"),
                      m("a*", "a"), not m("", "x")}}
  elseif op == "copy" then
    local t = {a = {b = {1, 2}}, s = "x"}
    t.loop = t
    local c = moonwire.copy(t)
    c.a.b[1] = 99
    return {claims = {ok = t.a.b[1] == 1 and c.a.b[1] == 99 and c.loop == c
                      and c ~= t and deep_equal(c.a.b, {99, 2})}}
  elseif op == "log" then
    moonwire.log("info", "hello", 1, true, nil, {})
    local ok = pcall(moonwire.log, "loud", "x")
    return {claims = {bad_level = not ok}}
  elseif op == "now" then
    return {claims = {now = moonwire.now()}}
  end
  return nil
end
