# Cursors (core/cursor.c), the SSE and long-poll transports: unit tests with
# the fake host (the plugins' sources compiled into each test), and the
# integration tests against the real binary.
set(MW_SSE_DIR ${PROJECT_SOURCE_DIR}/transports/sse)
set(MW_LONGPOLL_DIR ${PROJECT_SOURCE_DIR}/transports/longpoll)

add_executable(test_cursor ${PROJECT_SOURCE_DIR}/tests/unit/test_cursor.c)
target_include_directories(test_cursor PRIVATE ${CMOCKA_INCLUDE})
target_link_libraries(test_cursor PRIVATE mw_codec ${CMOCKA_LIB})
add_test(NAME unit.cursor COMMAND test_cursor)
set_tests_properties(unit.cursor PROPERTIES LABELS unit TIMEOUT 60)

foreach(t sse longpoll)
  if(t STREQUAL "sse")
    set(srcs ${MW_SSE_DIR}/sse.c ${MW_SSE_DIR}/topic_params.c)
  else()
    set(srcs ${MW_LONGPOLL_DIR}/longpoll.c ${MW_SSE_DIR}/topic_params.c)
  endif()
  add_executable(test_${t} ${PROJECT_SOURCE_DIR}/tests/unit/test_${t}.c
    ${PROJECT_SOURCE_DIR}/tests/unit/fake_host.c ${srcs})
  target_include_directories(test_${t} PRIVATE ${PROJECT_SOURCE_DIR}/tests/unit
    ${MW_SSE_DIR} ${CMOCKA_INCLUDE})
  target_link_libraries(test_${t} PRIVATE moonwire_headers mw_codec
    ${CMOCKA_LIB} PkgConfig::JANSSON PkgConfig::UV)
  add_test(NAME unit.${t} COMMAND test_${t})
  set_tests_properties(unit.${t} PROPERTIES LABELS unit TIMEOUT 60)
endforeach()

# End to end: needs both plugins in the binary's plugin dir.
if(TARGET sse AND TARGET longpoll)
  add_test(NAME integration.test_sse_longpoll
    COMMAND ${MW_PYTHON} -m unittest -v test_sse_longpoll
    WORKING_DIRECTORY ${CMAKE_SOURCE_DIR}/tests/integration)
  set_tests_properties(integration.test_sse_longpoll PROPERTIES
    LABELS integration
    TIMEOUT 300
    ENVIRONMENT "MOONWIRE_BIN=$<TARGET_FILE:moonwire>;PYTHONDONTWRITEBYTECODE=1;PYTHONUNBUFFERED=1")
endif()
