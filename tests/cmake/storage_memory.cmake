# Memory storage unit test: storage_memory.c is #included by the test (to
# reach its clock hook) and driven through a fake host table.
add_executable(test_storage_memory
  ${CMAKE_CURRENT_LIST_DIR}/../unit/test_storage_memory.c)
target_include_directories(test_storage_memory PRIVATE
  ${CMAKE_SOURCE_DIR}/plugins/storage_memory ${UTHASH_INCLUDE}
  ${CMOCKA_INCLUDE})
target_link_libraries(test_storage_memory PRIVATE moonwire_headers
  ${CMOCKA_LIB} pthread)

add_test(NAME test_storage_memory COMMAND test_storage_memory)
set_tests_properties(test_storage_memory PROPERTIES LABELS "unit")
