# WebSocket transport unit tests: the plugin's sources compiled into the test
# together with the fake host (no sockets, no core).
add_executable(test_websocket
  ${PROJECT_SOURCE_DIR}/tests/unit/test_websocket.c
  ${PROJECT_SOURCE_DIR}/tests/unit/fake_host.c
  ${MW_WEBSOCKET_SOURCES})
target_include_directories(test_websocket PRIVATE
  ${PROJECT_SOURCE_DIR}/tests/unit
  ${PROJECT_SOURCE_DIR}/transports/websocket
  ${WSLAY_INCLUDE} ${CMOCKA_INCLUDE})
target_link_libraries(test_websocket PRIVATE moonwire_headers mw_codec
  ${WSLAY_LIB} ${CMOCKA_LIB} OpenSSL::Crypto PkgConfig::JANSSON
  PkgConfig::MSGPACK PkgConfig::UV)
add_test(NAME unit.websocket COMMAND test_websocket)
set_tests_properties(unit.websocket PROPERTIES LABELS unit TIMEOUT 60)
