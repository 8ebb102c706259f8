# Plugin loader tests: test-only plugins (one good, several bad) built as
# MODULE libraries outside the real plugin dir, and the cmocka test that
# loads them with core/plugin_loader.c compiled standalone.
set(MW_TEST_PLUGIN_DIR ${CMAKE_BINARY_DIR}/tests/test_plugins)
set(MW_TEST_PLUGIN_SRC ${CMAKE_CURRENT_LIST_DIR}/../plugins)

# mw_test_plugin(name subdir): tests/plugins/<name>.c -> <subdir>/<name>.so
function(mw_test_plugin name subdir)
  add_library(mwtest_${name} MODULE ${MW_TEST_PLUGIN_SRC}/${name}.c)
  target_link_libraries(mwtest_${name} PRIVATE moonwire_headers)
  set_target_properties(mwtest_${name} PROPERTIES PREFIX "" OUTPUT_NAME ${name}
    LIBRARY_OUTPUT_DIRECTORY ${MW_TEST_PLUGIN_DIR}/${subdir})
endfunction()

mw_test_plugin(good good)
set(MW_TEST_BAD_PLUGINS bad_major bad_minor short_struct oversize no_symbol
                        bad_kind)
foreach(p ${MW_TEST_BAD_PLUGINS})
  mw_test_plugin(${p} bad)
endforeach()

add_executable(test_plugin_loader
  ${CMAKE_CURRENT_LIST_DIR}/../unit/test_plugin_loader.c
  ${CMAKE_SOURCE_DIR}/core/plugin_loader.c)
target_include_directories(test_plugin_loader PRIVATE
  ${CMAKE_SOURCE_DIR}/core ${CMOCKA_INCLUDE})
target_link_libraries(test_plugin_loader PRIVATE moonwire_headers
  ${CMOCKA_LIB} ${CMAKE_DL_LIBS})
target_compile_definitions(test_plugin_loader PRIVATE
  MWT_PLUGIN_DIR="${MW_TEST_PLUGIN_DIR}")
add_dependencies(test_plugin_loader mwtest_good)
foreach(p ${MW_TEST_BAD_PLUGINS})
  add_dependencies(test_plugin_loader mwtest_${p})
endforeach()

# The real memory storage plugin must pass the same checks.
if(TARGET storage_memory)
  target_compile_definitions(test_plugin_loader PRIVATE
    MWT_MEMORY_PLUGIN="$<TARGET_FILE:storage_memory>")
  add_dependencies(test_plugin_loader storage_memory)
endif()

add_test(NAME test_plugin_loader COMMAND test_plugin_loader)
set_tests_properties(test_plugin_loader PROPERTIES LABELS "unit;plugin")
