# Integration tests of the Lua policy (SPEC §4): the real moonwire binary with
# the example policies of scripts/examples and small inline scripts, driven by
# real clients (python3-websockets), stdlib unittest; JWTs are built in the
# test. See tests/integration/test_policy.py.
add_test(NAME integration.test_policy
  COMMAND ${MW_PYTHON} -m unittest -v test_policy
  WORKING_DIRECTORY ${CMAKE_SOURCE_DIR}/tests/integration)
set_tests_properties(integration.test_policy PROPERTIES
  LABELS "integration;lua"
  TIMEOUT 300
  ENVIRONMENT "MOONWIRE_BIN=$<TARGET_FILE:moonwire>;PYTHONDONTWRITEBYTECODE=1;PYTHONUNBUFFERED=1")

# on_deliver's read-only event view: in-place writes, copies, shared results.
add_test(NAME integration.test_policy_deliver_view
  COMMAND ${MW_PYTHON} -m unittest -v test_policy_deliver_view
  WORKING_DIRECTORY ${CMAKE_SOURCE_DIR}/tests/integration)
set_tests_properties(integration.test_policy_deliver_view PROPERTIES
  LABELS "integration;lua"
  TIMEOUT 300
  ENVIRONMENT "MOONWIRE_BIN=$<TARGET_FILE:moonwire>;PYTHONDONTWRITEBYTECODE=1;PYTHONUNBUFFERED=1")
