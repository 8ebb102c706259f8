# Redis storage (issue #5).
# Unit: the plugin's pure logic (URL, envelope parts, reply validation),
# compiled from plugins/storage_redis/redis_proto.c.
add_executable(test_storage_redis
  ${CMAKE_CURRENT_LIST_DIR}/../unit/test_storage_redis.c
  ${CMAKE_SOURCE_DIR}/plugins/storage_redis/redis_proto.c)
target_include_directories(test_storage_redis PRIVATE
  ${CMAKE_SOURCE_DIR}/plugins/storage_redis ${CMOCKA_INCLUDE})
target_link_libraries(test_storage_redis PRIVATE moonwire_headers
  PkgConfig::HIREDIS ${CMOCKA_LIB})
add_test(NAME test_storage_redis COMMAND test_storage_redis)
set_tests_properties(test_storage_redis PROPERTIES LABELS "unit;redis")

# Integration: a real redis-server (started by the test on a free loopback
# port, no persistence) shared by two or three moonwire nodes.
add_test(NAME integration.test_redis
  COMMAND ${MW_PYTHON} -m unittest -v test_redis
  WORKING_DIRECTORY ${CMAKE_SOURCE_DIR}/tests/integration)
set_tests_properties(integration.test_redis PROPERTIES
  LABELS "integration;redis" TIMEOUT 600 RUN_SERIAL TRUE
  ENVIRONMENT "MOONWIRE_BIN=$<TARGET_FILE:moonwire>;PYTHONDONTWRITEBYTECODE=1;PYTHONUNBUFFERED=1")
