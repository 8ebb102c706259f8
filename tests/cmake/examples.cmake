# The out-of-tree example plugin: install, build it against the installed
# headers, load it into the installed binary.
add_test(NAME example_out_of_tree_plugin
  COMMAND ${MW_PYTHON} -m unittest -v test_out_of_tree_plugin
  WORKING_DIRECTORY ${CMAKE_CURRENT_LIST_DIR}/../examples)
set_tests_properties(example_out_of_tree_plugin PROPERTIES
  LABELS "integration;plugin" TIMEOUT 300
  ENVIRONMENT "MW_BUILD_DIR=${CMAKE_BINARY_DIR};MW_SOURCE_DIR=${CMAKE_SOURCE_DIR}")
