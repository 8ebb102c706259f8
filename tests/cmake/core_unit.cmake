# Unit tests of core files (cmocka). Each links mw_core and the fixture.
add_library(mw_test_fixture STATIC
  ${CMAKE_CURRENT_LIST_DIR}/../unit/core_fixture.c)
target_include_directories(mw_test_fixture PUBLIC ${CMOCKA_INCLUDE}
  ${CMAKE_CURRENT_LIST_DIR}/../unit)
target_link_libraries(mw_test_fixture PUBLIC mw_core ${CMOCKA_LIB})

foreach(name http hub event config codec admission conn)
  add_executable(test_${name} ${CMAKE_CURRENT_LIST_DIR}/../unit/test_${name}.c)
  target_link_libraries(test_${name} PRIVATE mw_test_fixture)
  add_test(NAME test_${name} COMMAND test_${name})
  set_tests_properties(test_${name} PROPERTIES LABELS "unit" TIMEOUT 60)
endforeach()
