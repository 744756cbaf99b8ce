# tests/server: the integration tests start the real `moe serve` (MOE_BIN) on a free loopback port
# and drive it with the official openai npm client (tests/server/node_modules, installed by
# scripts/install-deps.sh with `npm ci --prefix tests/server`). Labels: server, integration,
# network (loopback only). All together take about 15 s, so they stay in the default run.
find_program(MOE_NODE node)
if(MOE_NODE)
  foreach(t api limits concurrency drain)
    add_test(NAME server_${t} COMMAND ${MOE_NODE} ${CMAKE_SOURCE_DIR}/tests/server/${t}.mjs
             WORKING_DIRECTORY ${CMAKE_SOURCE_DIR}/tests/server)
    set_tests_properties(server_${t} PROPERTIES LABELS "server;integration;network" ENVIRONMENT "${MOE_TEST_ENV}"
                         TIMEOUT 180)
  endforeach()
else()
  message(STATUS "moekit: node not found: server integration tests (tests/server/*.mjs) not registered")
endif()
# the unit test (parsers, framing, settings) also joins the sanitizer pass
set_tests_properties(server_test_server_units PROPERTIES LABELS "server;asan")
# the issue's load test: 64 concurrent streams for 60 s, only 429s allowed, every stream complete,
# RSS stable (label slow: `make test-slow` / ctest -L slow)
if(MOE_NODE)
  add_test(NAME server_soak COMMAND ${MOE_NODE} ${CMAKE_SOURCE_DIR}/tests/server/load.mjs soak --streams 64 --seconds 60
           --tokens 48 -- --parallel 16 --queue 32 WORKING_DIRECTORY ${CMAKE_SOURCE_DIR}/tests/server)
  set_tests_properties(server_soak PROPERTIES LABELS "server;slow;integration;network" ENVIRONMENT "${MOE_TEST_ENV}"
                       TIMEOUT 300)
endif()
