# JavaScript client, demo page and React hook: Node's built-in test runner
# (node --test). Dependencies (ws, eventsource, playwright-core, react, ...)
# come from tests/js/package-lock.json; scripts/test.sh runs `npm ci` there,
# and the js.setup fixture does it when node_modules is missing.
#   unit:        fake transports and clocks, no server     (LABELS unit;js)
#   integration: the real binary, real ws/eventsource       (LABELS integration;js)
#   browser:     the demo page in headless Chromium         (LABELS browser;js)
find_program(MW_NODE node)
find_program(MW_NPM npm)
if(NOT MW_NODE OR NOT MW_NPM)
  message(STATUS "node/npm not found: JavaScript tests not registered (scripts/install-deps.sh installs them)")
  return()
endif()

set(MW_JS_DIR ${CMAKE_SOURCE_DIR}/tests/js)
add_test(NAME js.setup
  COMMAND sh -c "[ -d node_modules ] || ${MW_NPM} ci --no-audit --no-fund"
  WORKING_DIRECTORY ${MW_JS_DIR})
set_tests_properties(js.setup PROPERTIES FIXTURES_SETUP js_node_modules TIMEOUT 300)

function(mw_js_test name dir labels timeout)
  add_test(NAME js.${name}
    COMMAND ${MW_NODE} --test --test-reporter=spec ${dir}/
    WORKING_DIRECTORY ${MW_JS_DIR})
  set_tests_properties(js.${name} PROPERTIES
    LABELS "${labels}"
    TIMEOUT ${timeout}
    FIXTURES_REQUIRED js_node_modules
    ENVIRONMENT "MOONWIRE_BIN=$<TARGET_FILE:moonwire>;MW_SOURCE_DIR=${CMAKE_SOURCE_DIR}")
endfunction()

mw_js_test(unit unit "unit;js" 120)
mw_js_test(react react "unit;js" 120)
mw_js_test(integration integration "integration;js" 300)
mw_js_test(browser browser "browser;js" 600)
# Chromium and several servers: keep it off the others' toes under ctest -j.
set_tests_properties(js.browser PROPERTIES RUN_SERIAL TRUE)
