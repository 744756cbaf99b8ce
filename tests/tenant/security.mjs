// Tenant isolation over HTTP (issue 9's security acceptance): with --tenants a tenant can read
// nothing about another tenant — not through any endpoint (/metrics and /admin/config answer
// only the operator: an admin_tenant key, or loopback clients unless --admin-loopback 0), not
// through an error message or a rate-limit header — and no key material appears in the access
// log, the server's stderr, /metrics or the SQLite file. Everything stays on 127.0.0.1.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";

import { BIN, request, startServer, tinyModel } from "../server/lib.mjs";

const dir = mkdtempSync(path.join(os.tmpdir(), "moe-security-test-"));
process.on("exit", () => rmSync(dir, { recursive: true, force: true }));
const DB = path.join(dir, "tenants.db");
const LOG = path.join(dir, "access.log");
let model, srv, local;
const keys = {};

const tenants = (...args) => execFileSync(BIN, ["tenants", "--db", DB, ...args], { encoding: "utf8" });
const addTenant = (name, ...flags) => tenants("add", name, ...flags).trimEnd().split("\n").pop();
const auth = (key) => (key ? { authorization: `Bearer ${key}` } : {});
const BODY = { model: "tiny", prompt: [1, 2, 3], max_tokens: 4, ignore_eos: true };

before(async () => {
  ({ model } = tinyModel());
  // alice: small limits, so every kind of refusal can be provoked; bob: a big user (the secret)
  keys.alice = addTenant("alice", "--rps", "3", "--burst", "3", "--tpm", "400", "--budget", "100000");
  keys.bob = addTenant("bob", "--tpm", "1000000", "--budget", "987654321");
  keys.ops = addTenant("ops");
  tenants("set-quota", "bob", "--model", "tiny", "--rps", "77", "--concurrency", "5");
  srv = await startServer(model, ["--tenants", DB, "--admin-tenant", "ops", "--admin-loopback", "0",
    "--access-log", LOG, "--parallel", "2", "--ctx", "512"]);
  local = await startServer(model, ["--tenants", DB, "--access-log", "", "--parallel", "1", "--ctx", "256"]);
  for (let i = 0; i < 5; i++) {
    const r = await request(srv, "POST", "/v1/completions", BODY, auth(keys.bob));
    assert.equal(r.status, 200, r.body);
  }
});

after(async () => {
  for (const s of [srv, local]) {
    const r = await s.stop();
    assert.equal(r.code, 0, "exit status after SIGTERM\n" + s.log);
  }
});

// Every endpoint and method, every refusal alice can provoke: nothing names bob or his figures.
test("a tenant sees nothing of another tenant through any endpoint or error", async () => {
  const seen = [];
  const look = async (method, p, body, key) => {
    const r = await request(srv, method, p, body, auth(key));
    seen.push({ what: `${method} ${p} (${key === keys.alice ? "alice" : key ? "other" : "no key"})`, ...r });
    return r;
  };
  const paths = ["/metrics", "/admin/config", "/v1/models", "/health", "/ready", "/v1/completions",
    "/v1/chat/completions", "/v1/usage", "/usage", "/v1/dashboard/billing/usage", "/nope"];
  for (const key of [keys.alice, undefined, "sk-moe-" + "A".repeat(43)])
    for (const p of paths)
      for (const method of ["GET", "POST", "PUT"]) await look(method, p, method === "GET" ? undefined : BODY, key);
  // alice's own refusals: requests per second, tokens per minute, a prompt over her tpm
  const burst = await Promise.all(Array.from({ length: 6 }, () => look("POST", "/v1/completions", BODY, keys.alice)));
  assert.ok(burst.some((r) => r.status === 429), "alice hits her rps quota");
  await look("POST", "/v1/completions", { ...BODY, prompt: Array(450).fill(5), max_tokens: 2 }, keys.alice);
  await look("POST", "/v1/completions", { ...BODY, model: "tiny" }, keys.alice);
  const texts = seen.map((r) => `${r.what}\n${JSON.stringify(r.headers)}\n${r.body}`);
  for (const t of texts) {
    assert.ok(!/bob/i.test(t), `bob named in:\n${t}`);
    assert.ok(!/\b(987654321|1000000)\b/.test(t), `bob's limits in:\n${t}`); // whole numbers: ids hold digits too
    assert.ok(!t.includes("moe_tenant_"), `per-tenant metrics in:\n${t}`);
  }
  // the operator endpoints refuse tenants and anonymous clients alike (the 401 of an unknown key)
  for (const key of [keys.alice, keys.bob, undefined]) {
    const r = await request(srv, "GET", "/metrics", undefined, auth(key));
    assert.equal(r.status, 401, r.body);
    assert.equal(JSON.parse(r.body).error.code, "invalid_api_key");
  }
  // alice's headers carry her own limits only
  const own = seen.find((r) => r.headers["x-ratelimit-limit-tokens"]);
  assert.equal(own.headers["x-ratelimit-limit-tokens"], "400");
  assert.equal(own.headers["x-ratelimit-limit-requests"], "3");
});

test("the operator (admin_tenant key, or loopback unless admin_loopback 0) reads /metrics", async () => {
  const r = await request(srv, "GET", "/metrics", undefined, auth(keys.ops));
  assert.equal(r.status, 200);
  assert.match(r.body, /moe_tenant_requests_total\{tenant="bob"\} 5/, "the secret exists, for the operator");
  const l = await request(local, "GET", "/metrics");
  assert.equal(l.status, 200, "loopback client, admin_loopback 1 (the default)");
  assert.equal((await request(local, "GET", "/metrics", undefined, auth(keys.alice))).status, 200);
});

test("no key material in the access log, stderr, /metrics or the SQLite file", async () => {
  const m = (await request(srv, "GET", "/metrics", undefined, auth(keys.ops))).body;
  const texts = { "access log": readFileSync(LOG, "utf8"), stderr: srv.log + local.log, metrics: m,
    "tenants.db": readFileSync(DB).toString("latin1") };
  for (const [where, t] of Object.entries(texts))
    for (const [who, k] of Object.entries(keys)) {
      assert.ok(!t.includes(k.slice(7)), `${who}'s key in the ${where}`);
      assert.ok(!t.includes(k.slice(7, 27)), `part of ${who}'s key in the ${where}`);
    }
  assert.ok(!texts.metrics.includes("sk-moe-") && !texts["access log"].includes("sk-moe-"));
  assert.match(texts["access log"], /"tenant":"alice"/);
});

test("/admin/config: the operator reads the settings and changes reloadable ones; tenants cannot", async () => {
  const ops = { ...auth(keys.ops), "content-type": "application/json" };
  let r = await request(srv, "GET", "/admin/config", undefined, auth(keys.ops));
  assert.equal(r.status, 200, r.body);
  const get = (body, name) => JSON.parse(body).settings.find((x) => x.name === name);
  assert.deepEqual({ ...get(r.body, "queue"), help: undefined }, { name: "queue", value: 64, type: "int", reloadable: true, help: undefined });
  assert.equal(get(r.body, "admin_tenant").value, "ops");
  r = await request(srv, "PUT", "/admin/config", { queue: 5, shutdown_timeout: 2.5 }, auth(keys.ops));
  assert.equal(r.status, 200, r.body);
  assert.equal(get(r.body, "queue").value, 5);
  assert.equal(get((await request(srv, "GET", "/admin/config", undefined, ops)).body, "shutdown_timeout").value, 2.5);
  for (const [body, param] of [[{ parallel: 3 }, "parallel"], [{ queue: -1 }, "queue"], [{ nope: 1 }, "nope"],
    [{ queue: 7, max_tokens: "x" }, "max_tokens"], [[1], null]]) {
    r = await request(srv, "PUT", "/admin/config", body, auth(keys.ops));
    assert.equal(r.status, 400, `${JSON.stringify(body)}: ${r.body}`);
    assert.equal(JSON.parse(r.body).error.param, param);
  }
  assert.equal(get((await request(srv, "GET", "/admin/config", undefined, ops)).body, "queue").value, 5, "nothing applied");
  for (const key of [keys.alice, undefined]) {
    assert.equal((await request(srv, "PUT", "/admin/config", { queue: 1 }, auth(key))).status, 401);
    assert.equal((await request(srv, "GET", "/admin/config", undefined, auth(key))).status, 401);
  }
  assert.equal((await request(local, "GET", "/admin/config")).status, 200, "loopback operator");
});
