# tests/tenant: tenants, keys, quotas. test_redis_quota starts a real redis-server on a free
# 127.0.0.1 port (Debian package redis-server), so it carries the "network" label too.
set_tests_properties(tenant_test_redis_quota PROPERTIES LABELS "tenant;network" TIMEOUT 120)
# Node test files run against the real server (tests/server/lib.mjs and its node_modules: the
# openai client, installed by scripts/install-deps.sh); Redis ones start a redis-server via
# tests/tenant/redis.mjs.
#  - serve.mjs: two `moe serve --tenants` replicas sharing a Redis quota (10 s burst), key and
#    revocation checks, Redis killed mid-test, the priority rule. About 25 s.
#  - tpm.mjs: tokens per minute charged as they are used — a long stream against a small quota
#    is throttled (local and Redis backends), a cancelled stream is charged exactly, fail-open
#    admissions are charged to Redis once it is back. About 15 s.
#  - security.mjs: no tenant sees another's usage through any endpoint, error or header
#    (/metrics and /admin/config are the operator's); no key material in logs, metrics or the
#    database.
find_program(MOE_NODE node)
if(MOE_NODE)
  foreach(t serve:240 tpm:120 security:120)
    string(REPLACE ":" ";" parts ${t})
    list(GET parts 0 name)
    list(GET parts 1 limit)
    add_test(NAME tenant_${name} COMMAND ${MOE_NODE} --test-concurrency=1 ${CMAKE_SOURCE_DIR}/tests/tenant/${name}.mjs
             WORKING_DIRECTORY ${CMAKE_SOURCE_DIR}/tests/tenant)
    set_tests_properties(tenant_${name} PROPERTIES LABELS "tenant;integration;network" ENVIRONMENT "${MOE_TEST_ENV}"
                         TIMEOUT ${limit})
  endforeach()
endif()
