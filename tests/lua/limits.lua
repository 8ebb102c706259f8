-- Budget, memory and sandbox fixture for test_policy.c.
counter = 0

local function spin_for()
  local x = 0
  for i = 1, 1e12 do x = i end
  return x
end

local function spin_while()
  while true do end
end

function on_subscribe(conn, topic)
  if topic == "while" then
    while true do end
  elseif topic == "for" then
    for i = 1, 1e12 do counter = i end
  elseif topic == "helper-for" then
    spin_for()
  elseif topic == "helper-while" then
    spin_while()
  elseif topic == "pcall-loop" then
    while true do pcall(spin_while) end
  elseif topic == "hog" then
    -- Distinct strings: identical ones are interned once.
    local t = {}
    while true do t[#t + 1] = string.rep("x", 1e6) .. #t end
  elseif topic == "pcall-hog" then
    local ok = pcall(function()
      local t = {}
      while true do t[#t + 1] = string.rep("x", 1e6) .. #t end
    end)
    return not ok
  elseif topic == "global" then
    undeclared_x = 1
  elseif topic == "read-undeclared" then
    return undeclared_y == nil
  elseif topic == "sandbox" then
    return io == nil and os.execute == nil and os.exit == nil
      and type(os.getenv) == "function" and os.execute == nil
      and require == nil and package == nil and debug == nil
      and load == nil and loadstring == nil and loadfile == nil
      and dofile == nil
      and collectgarbage == nil and jit == nil and getfenv == nil
      and setfenv == nil and _G == nil and newproxy == nil and print == nil
      and string.dump == nil and ("x").dump == nil
      and type(os.time()) == "number" and type(os.clock()) == "number"
      and type(os.date("%Y")) == "string" and math.floor(2.5) == 2
      and table.concat({"a", "b"}) == "ab" and string.upper("a") == "A"
      and ("a"):rep(2) == "aa" and type(moonwire.now()) == "number"
  elseif topic == "global-write" then
    counter = counter + 1
    return counter > 0
  end
  return true
end
