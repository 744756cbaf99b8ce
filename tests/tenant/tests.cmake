# tests/tenant: tenants, keys, quotas. test_redis_quota starts a real redis-server on a free
# 127.0.0.1 port (Debian package redis-server), so it carries the "network" label too.
set_tests_properties(tenant_test_redis_quota PROPERTIES LABELS "tenant;network" TIMEOUT 120)
