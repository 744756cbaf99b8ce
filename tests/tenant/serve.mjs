// moe serve --tenants, end to end: a real redis-server on a free 127.0.0.1 port shared by two
// server replicas; a 10 s burst from many clients on one tenant's quota is admitted within 5%
// across both replicas, while another tenant's quota is unaffected; keys (openai client, 401
// shape, revocation), OpenAI-style rate-limit headers, usage via `moe tenants usage`, no key
// material in logs or metrics; killing Redis mid-test: the fail-closed replica answers 503,
// the fail-open replica keeps admitting, neither crashes. Then the priority rule: with one
// slot busy, a high-class request queued last is admitted before the low-class ones.
// Everything is written under mkdtemp folders; all traffic stays on 127.0.0.1.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";

import OpenAI from "../server/node_modules/openai/index.mjs";
import { BIN, json, metrics, request, sleep, startServer, tinyModel, waitFor } from "../server/lib.mjs";
import { freePort, startRedis } from "./redis.mjs";

const dir = mkdtempSync(path.join(os.tmpdir(), "moe-tenant-test-"));
process.on("exit", () => rmSync(dir, { recursive: true, force: true }));
const DB = path.join(dir, "tenants.db");
const SHARED = { rps: 20, burst: 20 };
const OTHER = { rps: 5, burst: 5 };
const BURST_S = 10;

let model, redis, redisPort, a, b, keys = {};

function tenants(...args) {
  return execFileSync(BIN, ["tenants", "--db", DB, ...args], { encoding: "utf8" });
}

function addTenant(name, ...flags) {
  const out = tenants("add", name, ...flags);
  const lines = out.trimEnd().split("\n");
  const key = lines[lines.length - 1];
  assert.match(key, /^sk-moe-[A-Za-z0-9_-]{43}$/, "key alone on the last line:\n" + out);
  assert.equal(out.split(key).length, 2, "the key is printed once");
  return key;
}


const BODY = { model: "tiny", prompt: [1, 2, 3], max_tokens: 1 };
const auth = (key) => ({ authorization: `Bearer ${key}` });

before(async () => {
  ({ model } = tinyModel());
  keys.shared = addTenant("shared", "--rps", String(SHARED.rps), "--burst", String(SHARED.burst));
  keys.other = addTenant("other", "--rps", String(OTHER.rps), "--burst", String(OTHER.burst));
  keys.plain = addTenant("plain", "--tpm", "100000");
  redisPort = await freePort();
  redis = await startRedis(redisPort, dir);
  const common = ["--tenants", DB, "--quota-backend", `redis://127.0.0.1:${redisPort}`, "--parallel", "4",
    "--ctx", "256", "--queue", "1024", "--max-connections", "1024"];
  a = await startServer(model, [...common, "--quota-fail", "closed", "--access-log", path.join(dir, "a.log")]);
  b = await startServer(model, [...common, "--quota-fail", "open", "--access-log", path.join(dir, "b.log")]);
});

after(async () => {
  for (const s of [a, b]) if (s) {
    const r = await s.stop();
    assert.equal(r.code, 0, "replica exits 0 after SIGTERM\n" + s.log);
  }
  if (redis && redis.exitCode === null) redis.kill("SIGKILL");
});

test("keys: openai client works with a key; unknown and malformed keys get the same 401", async () => {
  const client = new OpenAI({ baseURL: a.base + "/v1", apiKey: keys.plain, maxRetries: 0 });
  const r = await client.completions.create({ model: "tiny", prompt: "hello", max_tokens: 2 });
  assert.equal(r.object, "text_completion");
  const bad = new OpenAI({ baseURL: a.base + "/v1", apiKey: "sk-moe-" + "x".repeat(43), maxRetries: 0 });
  await assert.rejects(bad.completions.create({ model: "tiny", prompt: "hello", max_tokens: 2 }),
    (e) => e.status === 401 && e.code === "invalid_api_key");
  const bodies = new Set();
  for (const h of [{}, auth("nope"), { authorization: "Basic abc" }, auth(keys.plain.slice(0, -1) + (keys.plain.endsWith("A") ? "B" : "A") /* a different last character */)]) {
    const r2 = await json(a, "POST", "/v1/completions", BODY, h);
    assert.equal(r2.status, 401);
    assert.equal(r2.json.error.code, "invalid_api_key");
    bodies.add(r2.body);
  }
  assert.equal(bodies.size, 1, "one 401 body for every cause");
  const ok = await request(a, "POST", "/v1/completions", BODY, auth(keys.plain));
  assert.equal(ok.status, 200);
  assert.equal(ok.headers["x-ratelimit-limit-tokens"], "100000");
  assert.ok(Number(ok.headers["x-ratelimit-remaining-tokens"]) < 100000);
});

test(`two replicas share one quota over a ${BURST_S} s burst (within 5%), another tenant unaffected`, async () => {
  const count = { shared: [0, 0], other: [0, 0], refused: 0, errors: 0 };
  let sampleRefusal = null;
  const t0 = Date.now(), tEnd = t0 + BURST_S * 1000;
  async function client(name, srv, idx) {
    while (Date.now() < tEnd) {
      const r = await request(srv, "POST", "/v1/completions", BODY, auth(keys[name])).catch(() => ({ status: 0 }));
      if (r.status === 200) count[name][idx]++;
      else if (r.status === 429) {
        count.refused++;
        if (!sampleRefusal && name === "shared") sampleRefusal = r;
        await sleep(2);
      } else count.errors++;
    }
  }
  const clients = [];
  for (let i = 0; i < 12; i++) clients.push(client("shared", i % 2 ? b : a, i % 2));
  for (let i = 0; i < 4; i++) clients.push(client("other", i % 2 ? b : a, i % 2));
  await Promise.all(clients);
  const elapsed = (Date.now() - t0) / 1000;
  const shared = count.shared[0] + count.shared[1], other = count.other[0] + count.other[1];
  const wantShared = SHARED.burst + SHARED.rps * BURST_S, wantOther = OTHER.burst + OTHER.rps * BURST_S;
  console.log(`burst ${elapsed.toFixed(1)} s: shared admitted ${count.shared[0]} + ${count.shared[1]} = ${shared} ` +
    `(quota ${wantShared}, ${(100 * (shared - wantShared) / wantShared).toFixed(1)}%), other ${other} (quota ${wantOther}), ` +
    `${count.refused} refused with 429, ${count.errors} errors`);
  assert.equal(count.errors, 0);
  assert.ok(Math.abs(shared - wantShared) <= 0.05 * wantShared, `shared admitted ${shared}, quota ${wantShared}`);
  assert.ok(count.shared[0] > 0.2 * wantShared && count.shared[1] > 0.2 * wantShared, "both replicas admit");
  assert.ok(Math.abs(other - wantOther) <= 0.05 * wantOther + 1, `other admitted ${other}, quota ${wantOther}`);
  assert.ok(count.refused > 100, "the burst was over quota");
  // the refusal is OpenAI-shaped with Retry-After and x-ratelimit-* headers
  const j = JSON.parse(sampleRefusal.body);
  assert.equal(j.error.code, "rate_limit_exceeded");
  assert.equal(j.error.type, "requests");
  assert.ok(Number(sampleRefusal.headers["retry-after"]) >= 1);
  assert.ok(Number(sampleRefusal.headers["retry-after-ms"]) > 0);
  assert.equal(sampleRefusal.headers["x-ratelimit-limit-requests"], String(SHARED.burst));
  assert.equal(sampleRefusal.headers["x-ratelimit-remaining-requests"], "0");
  assert.match(sampleRefusal.headers["x-ratelimit-reset-requests"], /^\d+(ms|(\.\d+)?s)$/);
  // per-tenant metrics on both replicas add up to what the clients saw
  const [ma, mb] = [await metrics(a), await metrics(b)];
  const sum = (k) => (ma.get(k) || 0) + (mb.get(k) || 0);
  assert.equal(sum('moe_tenant_requests_total{tenant="shared"}'), shared);
  assert.ok(sum('moe_tenant_rate_limited_total{tenant="shared",limit="requests"}') > 0);
  assert.equal(ma.get('moe_quota_backend_up{backend="redis"}'), 1);
});

test("revoking a tenant: its key gets 401 on every replica within seconds", async () => {
  tenants("revoke", "other");
  for (const s of [a, b])
    await waitFor(async () => (await request(s, "POST", "/v1/completions", BODY, auth(keys.other))).status === 401, 5000, 100);
  assert.equal((await request(a, "POST", "/v1/completions", BODY, auth(keys.plain))).status, 200, "others unaffected");
});

test("usage is queryable with moe tenants usage; no key material in logs or metrics", async () => {
  await sleep(1500); // servers write usage once a second
  const u = JSON.parse(tenants("usage", "shared", "--json"));
  assert.equal(u.length, 1);
  const [ma, mb] = [await metrics(a), await metrics(b)];
  const admitted = (ma.get('moe_tenant_requests_total{tenant="shared"}') || 0) + (mb.get('moe_tenant_requests_total{tenant="shared"}') || 0);
  assert.equal(u[0].requests, admitted);
  assert.equal(u[0].prompt_tokens, 3 * admitted);
  assert.ok(u[0].rejected > 0);
  const all = JSON.parse(tenants("usage", "--json"));
  assert.deepEqual(new Set(all.map((r) => r.name)), new Set(["shared", "other", "plain"]));
  const texts = [readFileSync(path.join(dir, "a.log"), "utf8"), readFileSync(path.join(dir, "b.log"), "utf8"), a.log, b.log,
    (await request(a, "GET", "/metrics")).body, readFileSync(DB).toString("latin1")];
  for (const t of texts) for (const k of Object.values(keys)) assert.ok(!t.includes(k.slice(7)), "a key leaked");
  assert.match(readFileSync(path.join(dir, "a.log"), "utf8"), /"tenant":"shared"/);
});

test("Redis killed mid-test: fail-closed answers 503, fail-open admits, neither crashes", async () => {
  redis.kill("SIGKILL");
  await new Promise((r) => redis.on("exit", r));
  const ra = await json(a, "POST", "/v1/completions", BODY, auth(keys.plain));
  assert.equal(ra.status, 503);
  assert.equal(ra.json.error.code, "quota_unavailable");
  assert.ok(Number(ra.headers["retry-after"]) >= 1);
  for (let i = 0; i < 20; i++) {
    assert.equal((await request(b, "POST", "/v1/completions", BODY, auth(keys.shared))).status, 200, "fail-open admits");
    assert.equal((await request(a, "POST", "/v1/completions", BODY, auth(keys.shared))).status, 503, "fail-closed refuses");
  }
  for (const s of [a, b]) {
    assert.equal((await request(s, "GET", "/health")).status, 200);
    const m = await metrics(s);
    assert.equal(m.get('moe_quota_backend_up{backend="redis"}'), 0);
  }
  assert.ok((await metrics(a)).get('moe_quota_policy_decisions_total{policy="fail_closed"}') >= 21);
  assert.ok((await metrics(b)).get('moe_quota_policy_decisions_total{policy="fail_open"}') >= 20);
  assert.match(a.log, /unreachable.*failing closed/);
  assert.match(b.log, /unreachable.*failing open/);
  // Redis comes back: both replicas recover
  redis = await startRedis(redisPort, dir);
  await waitFor(async () => (await request(a, "POST", "/v1/completions", BODY, auth(keys.plain))).status === 200, 5000, 100);
  assert.match(a.log, /reachable again/);
});

test("priority: with the slot busy, a high-class request queued last is admitted first", async () => {
  const pdb = path.join(dir, "prio.db");
  const add = (name, prio) => execFileSync(BIN, ["tenants", "--db", pdb, "add", name, "--priority", String(prio)], { encoding: "utf8" })
    .trimEnd().split("\n").pop();
  const low = add("low", 0), high = add("high", 5);
  const s = await startServer(model, ["--tenants", pdb, "--parallel", "1", "--ctx", "4096", "--max-tokens", "4000", "--priority-aging", "1000"]);
  try {
    const done = [];
    const go = (key, tag, n) => request(s, "POST", "/v1/completions",
      { model: "tiny", prompt: [1, 2], max_tokens: n, ignore_eos: true }, auth(key)).then((r) => {
      assert.equal(r.status, 200);
      done.push(tag);
    });
    const all = [go(low, "L0", 4000)]; // ~1 s of decoding on the only slot
    await waitFor(async () => (await metrics(s)).get("moe_requests_running") === 1, 5000, 10);
    for (const tag of ["L1", "L2", "L3"]) {
      all.push(go(low, tag, 300));
      await sleep(30);
    }
    all.push(go(high, "H", 300));
    await waitFor(async () => (await metrics(s)).get("moe_requests_waiting") === 4, 5000, 10);
    assert.equal(done.length, 0, "L0 still running while the others wait");
    await Promise.all(all);
    console.log("completion order:", done.join(" "));
    // L0's long body may arrive after H's short one: the order that matters is among the queued
    assert.deepEqual(done.filter((t) => t !== "L0"), ["H", "L1", "L2", "L3"]);
  } finally {
    await s.stop();
  }
});
