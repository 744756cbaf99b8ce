// Tokens per minute are charged as they are used (issue 9): one long stream against a small
// tpm quota gets the bucket's burst and is then throttled to the refill rate (not cut), with
// the local backend and with a real redis-server on a free 127.0.0.1 port; a cancelled
// stream is charged exactly the tokens it generated; a request admitted while Redis is down
// (fail-open) is charged to Redis once it is back. Everything stays on 127.0.0.1.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";

import { BIN, json, metrics, request, sleep, startServer, tinyModel, waitFor } from "../server/lib.mjs";
import { freePort, startRedis } from "./redis.mjs";

const dir = mkdtempSync(path.join(os.tmpdir(), "moe-tpm-test-"));
process.on("exit", () => rmSync(dir, { recursive: true, force: true }));
const DB = path.join(dir, "tenants.db");
const TPM = 600; // 10 tokens per second
const GRANT = 16; // src/server/server.c GRANT_TOKENS: tokens charged ahead of use

let model, redis, redisPort;
const keys = {};
const servers = [];

const tenants = (...args) => execFileSync(BIN, ["tenants", "--db", DB, ...args], { encoding: "utf8" });
const addTenant = (name, ...flags) => tenants("add", name, ...flags).trimEnd().split("\n").pop();
const auth = (key) => ({ authorization: `Bearer ${key}` });


async function serve(...args) {
  const s = await startServer(model, ["--tenants", DB, "--parallel", "2", "--ctx", "4096", "--max-tokens", "4000",
    "--access-log", "", ...args]);
  servers.push(s);
  return s;
}

before(async () => {
  ({ model } = tinyModel());
  keys.local = addTenant("meter_local", "--tpm", String(TPM));
  keys.redis = addTenant("meter_redis", "--tpm", String(TPM));
  keys.recon = addTenant("recon", "--tpm", "60");
  redisPort = await freePort();
  redis = await startRedis(redisPort, dir);
});

after(async () => {
  for (const s of servers) {
    const r = await s.stop();
    assert.equal(r.code, 0, "server exits 0 after SIGTERM\n" + s.log);
  }
  if (redis && redis.exitCode === null) redis.kill("SIGKILL");
});

const generated = async (srv) => (await metrics(srv)).get("moe_generation_tokens_total") || 0;

// One stream of up to 3000 tokens against a 600-token-per-minute quota, read for 3.5 s, then
// cancelled by the client.
async function longStream(srv, key, name) {
  const g0 = await generated(srv);
  const t0 = Date.now();
  const body = JSON.stringify({ model: "tiny", prompt: [1, 2, 3], max_tokens: 3000, ignore_eos: true, temperature: 0,
    stream: true });
  let status = 0, bytes = 0;
  const req = http.request({ host: "127.0.0.1", port: srv.port, method: "POST", path: "/v1/completions", agent: false,
    headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body), ...auth(key) } },
  (res) => {
    status = res.statusCode;
    res.on("data", (d) => (bytes += d.length));
    res.on("error", () => {});
  });
  req.on("error", () => {});
  req.end(body);
  // the ceiling: the full bucket + the refill since the start + one grant charged ahead − the prompt
  const ceiling = (t) => TPM + (TPM / 60) * t + GRANT - 3;
  await sleep(2000);
  const g1 = (await generated(srv)) - g0, t1 = (Date.now() - t0) / 1000;
  await sleep(1500);
  const g2 = (await generated(srv)) - g0, t2 = (Date.now() - t0) / 1000;
  console.log(`${name}: ${g1} tokens after ${t1.toFixed(2)} s (ceiling ${ceiling(t1).toFixed(0)}), ` +
    `${g2} after ${t2.toFixed(2)} s (ceiling ${ceiling(t2).toFixed(0)})`);
  assert.equal(status, 200);
  assert.ok(g1 >= TPM - 3 - 2 * GRANT, `${name}: the stream got the bucket's burst (${g1})`);
  assert.ok(g1 <= ceiling(t1), `${name}: ${g1} tokens after ${t1} s overran the quota`);
  assert.ok(g2 <= ceiling(t2), `${name}: ${g2} tokens after ${t2} s overran the quota`);
  assert.ok(g2 > g1, `${name}: throttled, not cut: the stream still flows (${g1} → ${g2})`);
  assert.ok(bytes > 0);
  req.destroy(); // the client goes away mid-stream
  await waitFor(async () => (await metrics(srv)).get("moe_requests_running") === 0, 5000, 20);
  const gen = (await generated(srv)) - g0;
  assert.ok(gen < 3000 && gen >= g2);
  // exactly what it used: usage (written once a second) and the tenant metrics
  await sleep(1300);
  const u = JSON.parse(tenants("usage", `meter_${name}`, "--json"));
  assert.equal(u.length, 1);
  assert.equal(u[0].prompt_tokens, 3);
  assert.equal(u[0].completion_tokens, gen, `${name}: the cancelled stream is charged the ${gen} tokens it generated`);
  const m = await metrics(srv);
  assert.equal(m.get(`moe_tenant_tokens_total{tenant="meter_${name}",kind="completion"}`), gen);
}

test("a long stream against a small tpm quota is throttled to the quota (local backend)", async () => {
  const s = await serve();
  await longStream(s, keys.local, "local");
});

test("a long stream against a small tpm quota is throttled to the quota (Redis backend)", async () => {
  const s = await serve("--quota-backend", `redis://127.0.0.1:${redisPort}`);
  await longStream(s, keys.redis, "redis");
});

test("fail-open: a request admitted while Redis is down is charged to Redis once it is back", async () => {
  const s = await serve("--quota-backend", `redis://127.0.0.1:${redisPort}`, "--quota-fail", "open");
  redis.kill("SIGKILL");
  await new Promise((r) => redis.on("exit", r));
  const body = { model: "tiny", prompt: [1, 2, 3], max_tokens: 20, ignore_eos: true, temperature: 0 };
  const r = await json(s, "POST", "/v1/completions", body, auth(keys.recon));
  assert.equal(r.status, 200, r.body);
  assert.equal(r.json.usage.completion_tokens, 20);
  assert.equal((await metrics(s)).get("moe_quota_unreconciled_tokens"), 23, "3 prompt + 20 generated owed");
  redis = await startRedis(redisPort, dir); // an empty Redis: the tenant's bucket is full again (60)
  assert.ok(await waitFor(async () => (await metrics(s)).get("moe_quota_unreconciled_tokens") === 0, 8000, 100),
    "the owed tokens were charged");
  // 60 − 23 owed − 3 prompt − 1 generated (+ at most a few seconds' refill at 1/s); unreconciled: 56
  const r2 = await request(s, "POST", "/v1/completions", JSON.stringify({ ...body, max_tokens: 1 }), auth(keys.recon));
  assert.equal(r2.status, 200, r2.body);
  const left = Number(r2.headers["x-ratelimit-remaining-tokens"]);
  console.log(`recon: ${left} tokens left after reconciliation (60 − 23 − 3 − 1 + refill)`);
  assert.ok(left >= 33 && left <= 42, `remaining ${left}`);
});
