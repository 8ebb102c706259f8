# Integration tests: the real moonwire binary (and its plugins, from the
# binary's default plugin dir) driven by real clients from Debian's python3
# (python3-websockets, python3-msgpack), stdlib unittest. Each module starts
# its own server(s) on 127.0.0.1 port 0; see tests/integration/mwtest.py.
set(MW_INTEGRATION_MODULES
  test_cli
  test_http
  test_http_pipelining
  test_websocket
  test_badinput
  test_slow_consumer
  test_overload
  test_idle_memory
  test_fanout)
foreach(module ${MW_INTEGRATION_MODULES})
  add_test(NAME integration.${module}
    COMMAND ${MW_PYTHON} -m unittest -v ${module}
    WORKING_DIRECTORY ${CMAKE_SOURCE_DIR}/tests/integration)
  set_tests_properties(integration.${module} PROPERTIES
    LABELS integration
    TIMEOUT 300
    ENVIRONMENT "MOONWIRE_BIN=$<TARGET_FILE:moonwire>;PYTHONDONTWRITEBYTECODE=1;PYTHONUNBUFFERED=1")
endforeach()
# Many sockets at once: keep them off each other's toes under ctest -j.
set_tests_properties(integration.test_fanout integration.test_badinput
  integration.test_idle_memory PROPERTIES RUN_SERIAL TRUE)

# Presence and WebSocket recovery.
add_test(NAME integration.test_presence_recovery
  COMMAND ${MW_PYTHON} -m unittest -v test_presence_recovery
  WORKING_DIRECTORY ${CMAKE_SOURCE_DIR}/tests/integration)
set_tests_properties(integration.test_presence_recovery PROPERTIES
  LABELS integration TIMEOUT 300
  ENVIRONMENT "MOONWIRE_BIN=$<TARGET_FILE:moonwire>;PYTHONDONTWRITEBYTECODE=1")

# CORS: origin checks and preflights.
add_test(NAME integration.test_cors
  COMMAND ${MW_PYTHON} -m unittest -v test_cors
  WORKING_DIRECTORY ${CMAKE_SOURCE_DIR}/tests/integration)
set_tests_properties(integration.test_cors PROPERTIES
  LABELS integration TIMEOUT 120
  ENVIRONMENT "MOONWIRE_BIN=$<TARGET_FILE:moonwire>;PYTHONDONTWRITEBYTECODE=1")

# The policy on SSE and long-poll.
if(TARGET sse AND TARGET longpoll)
  add_test(NAME integration.test_transports_policy
    COMMAND ${MW_PYTHON} -m unittest -v test_transports_policy
    WORKING_DIRECTORY ${CMAKE_SOURCE_DIR}/tests/integration)
  set_tests_properties(integration.test_transports_policy PROPERTIES
    LABELS "integration;lua" TIMEOUT 120
    ENVIRONMENT "MOONWIRE_BIN=$<TARGET_FILE:moonwire>;PYTHONDONTWRITEBYTECODE=1")
endif()
