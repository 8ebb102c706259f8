# Generates a C file holding scripts/default.lua as a string:
#   cmake -DIN=default.lua -DOUT=default_policy.c -P embed_default_policy.cmake
file(READ ${IN} text HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${text}")
file(WRITE ${OUT} "/* Generated from scripts/default.lua: do not edit. */\n"
  "const char mw__default_policy_lua[] = {${bytes} 0x00};\n")
