# Generates a C file holding any file as a byte array and its length:
#   cmake -DIN=file -DOUT=file.c -DSYMBOL=name -P embed_file.cmake
# defines  const unsigned char name[];  const size_t name_len;
# (a NUL follows the bytes, not counted in name_len).
if(NOT IN OR NOT OUT OR NOT SYMBOL)
  message(FATAL_ERROR "embed_file.cmake needs -DIN=... -DOUT=... -DSYMBOL=...")
endif()
file(READ ${IN} content HEX)
string(LENGTH "${content}" hexlen)
math(EXPR len "${hexlen} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${content}")
get_filename_component(name ${IN} NAME)
file(WRITE ${OUT} "/* Generated from ${name} by embed_file.cmake: do not edit. */\n"
  "#include <stddef.h>\n"
  "const unsigned char ${SYMBOL}[] = {${bytes} 0x00};\n"
  "const size_t ${SYMBOL}_len = ${len};\n")
