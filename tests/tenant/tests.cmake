# tests/tenant: tenants, keys, quotas. test_redis_quota starts a real redis-server on a free
# 127.0.0.1 port (Debian package redis-server), so it carries the "network" label too.
set_tests_properties(tenant_test_redis_quota PROPERTIES LABELS "tenant;network" TIMEOUT 120)
# serve.mjs: two `moe serve --tenants` replicas sharing a Redis quota (10 s burst), key and
# revocation checks, Redis killed mid-test, the priority rule. Uses tests/server/lib.mjs and its
# node_modules (the openai client; scripts/install-deps.sh installs them). About 25 s.
find_program(MOE_NODE node)
if(MOE_NODE)
  add_test(NAME tenant_serve COMMAND ${MOE_NODE} --test-concurrency=1 ${CMAKE_SOURCE_DIR}/tests/tenant/serve.mjs
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR}/tests/tenant)
  set_tests_properties(tenant_serve PROPERTIES LABELS "tenant;integration;network" ENVIRONMENT "${MOE_TEST_ENV}"
                       TIMEOUT 240)
endif()
# tpm.mjs: tokens per minute charged as they are used — a long stream against a small quota is
# throttled (local and Redis backends), a cancelled stream is charged exactly, fail-open
# admissions are charged to Redis once it is back. About 15 s.
if(MOE_NODE)
  add_test(NAME tenant_tpm COMMAND ${MOE_NODE} --test-concurrency=1 ${CMAKE_SOURCE_DIR}/tests/tenant/tpm.mjs
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR}/tests/tenant)
  set_tests_properties(tenant_tpm PROPERTIES LABELS "tenant;integration;network" ENVIRONMENT "${MOE_TEST_ENV}"
                       TIMEOUT 120)
endif()
# security.mjs: no tenant sees another's usage through any endpoint, error or header (/metrics
# and /admin/config are the operator's); no key material in logs, metrics or the database.
if(MOE_NODE)
  add_test(NAME tenant_security COMMAND ${MOE_NODE} --test-concurrency=1 ${CMAKE_SOURCE_DIR}/tests/tenant/security.mjs
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR}/tests/tenant)
  set_tests_properties(tenant_security PROPERTIES LABELS "tenant;integration;network" ENVIRONMENT "${MOE_TEST_ENV}"
                       TIMEOUT 120)
endif()
