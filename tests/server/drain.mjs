// moe serve lifecycle: SIGTERM lets running streams finish and exits 0; with a short
// --shutdown-timeout, streams still running are cut with an error event and it still exits 0;
// the access log is JSON lines with id, status, tokens and latency.
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import { test } from "node:test";
import OpenAI from "openai";

import { request, startServer, tinyModel, waitFor, metrics } from "./lib.mjs";

const { dir, model } = tinyModel();

test("SIGTERM drains: the running stream completes, new connections are refused, exit 0", async () => {
  const log = path.join(dir, "access.jsonl");
  const srv = await startServer(model, ["--parallel", "2", "--ctx", "1024", "--access-log", log]);
  const client = new OpenAI({ baseURL: srv.base + "/v1", apiKey: "unused", maxRetries: 0 });
  const s = await client.completions.create({ model: "tiny", prompt: "go", max_tokens: 300, stream: true, ignore_eos: true });
  const it = s[Symbol.asyncIterator]();
  const first = await it.next();
  assert.ok(!first.done);
  srv.child.kill("SIGTERM");
  // the listening socket closes soon
  const refused = await waitFor(() => new Promise((resolve) => {
    const c = net.connect(srv.port, "127.0.0.1");
    c.on("connect", () => { c.destroy(); resolve(false); });
    c.on("error", () => resolve(true));
  }), 3000, 20);
  assert.ok(refused, "still accepting after SIGTERM");
  let text = "", finish = null;
  for (let x = await it.next(); !x.done; x = await it.next()) {
    text += x.value.choices[0]?.text ?? "";
    finish = x.value.choices[0]?.finish_reason ?? finish;
  }
  assert.equal(finish, "length");
  const r = await srv.exited;
  assert.equal(r.code, 0, srv.log);
  assert.match(srv.log, /draining/);
  const lines = readFileSync(log, "utf8").trim().split("\n").map((l) => JSON.parse(l));
  const gen = lines.find((l) => l.path === "/v1/completions");
  assert.ok(gen, "access log line for the completion");
  assert.equal(gen.status, 200);
  assert.match(gen.id, /^cmpl-/);
  assert.equal(gen.completion_tokens, 300);
  assert.ok(gen.prompt_tokens >= 1 && gen.latency_ms > 0 && gen.ttft_ms >= 0 && typeof gen.ts === "string");
});

test("SIGTERM with a short shutdown timeout cancels what is left and exits 0", async () => {
  const srv = await startServer(model, ["--parallel", "1", "--ctx", "4096", "--shutdown-timeout", "0.3", "--access-log", ""]);
  const body = { model: "tiny", prompt: "go", max_tokens: 4000, stream: true, ignore_eos: true };
  const resP = request(srv, "POST", "/v1/completions", body);
  // a second request waits in the queue; it is cancelled with 503 semantics
  await waitFor(async () => (await metrics(srv)).get("moe_requests_running") === 1, 3000, 10);
  const queued = request(srv, "POST", "/v1/completions", { ...body, stream: false, max_tokens: 5 });
  await waitFor(async () => (await metrics(srv)).get("moe_requests_waiting") === 1, 3000, 10);
  const t0 = Date.now();
  srv.child.kill("SIGTERM");
  const res = await resP;
  const events = res.body.split("\n\n").filter((e) => e);
  const last = events.at(-1);
  assert.ok(last.startsWith("data: {\"error\""), "stream ends with an error event: " + last.slice(0, 200));
  assert.ok(!res.body.includes("[DONE]"));
  const q = await queued;
  assert.equal(q.status, 503, q.body);
  const r = await srv.exited;
  assert.equal(r.code, 0, srv.log);
  assert.ok(Date.now() - t0 < 8000, "drain took too long");
});

test("ready is 503 while draining", async () => {
  // the stream must outlive the 100 ms below: 400 tokens of the tiny model took ~80 ms on a quiet
  // machine (ECONNREFUSED: the server had drained and exited); 4000 take ~0.8 s at full speed
  const srv = await startServer(model, ["--parallel", "1", "--ctx", "4096", "--max-tokens", "4000", "--shutdown-timeout",
    "60", "--access-log", ""]);
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const get = (p) => new Promise((resolve, reject) => {
    const req = http.request({ host: "127.0.0.1", port: srv.port, path: p, agent }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode));
    });
    req.on("error", reject);
    req.end();
  });
  assert.equal(await get("/ready"), 200);
  const client = new OpenAI({ baseURL: srv.base + "/v1", apiKey: "unused", maxRetries: 0 });
  const s = await client.completions.create({ model: "tiny", prompt: "go", max_tokens: 4000, stream: true, ignore_eos: true });
  const it = s[Symbol.asyncIterator]();
  await it.next();
  srv.child.kill("SIGTERM");
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(await get("/ready"), 503);
  for (let x = await it.next(); !x.done; x = await it.next());
  agent.destroy();
  const r = await srv.exited;
  assert.equal(r.code, 0, srv.log);
});

test("YAML config is applied, flags override it, SIGHUP reloads reloadable settings", async () => {
  const cfg = path.join(dir, "moe.yaml");
  writeFileSync(cfg, "# server settings\nparallel: 1\nctx: 300\nmax_tokens: 50\nmodel_name: from-yaml\nretry_after: 3\n");
  const srv = await startServer(model, ["--config", cfg, "--retry-after", "4", "--access-log", ""]);
  const m = await metrics(srv);
  assert.equal(m.get("moe_kv_cache_capacity_tokens"), 300);
  const models = JSON.parse((await request(srv, "GET", "/v1/models")).body);
  assert.equal(models.data[0].id, "from-yaml");
  let r = await request(srv, "POST", "/v1/completions", { prompt: "x", max_tokens: 60 });
  assert.equal(r.status, 400, r.body);
  writeFileSync(cfg, "parallel: 1\nctx: 300\nmax_tokens: 80\nmodel_name: from-yaml\n");
  srv.child.kill("SIGHUP");
  assert.ok(await waitFor(() => /reloaded/.test(srv.log), 3000), srv.log);
  r = await request(srv, "POST", "/v1/completions", { prompt: "x", max_tokens: 60, ignore_eos: true });
  assert.equal(r.status, 200, r.body);
  // a bad config on reload keeps the running settings
  writeFileSync(cfg, "max_tokens: lots\n");
  srv.child.kill("SIGHUP");
  assert.ok(await waitFor(() => /reload failed.*max_tokens/.test(srv.log), 3000), srv.log);
  assert.equal((await request(srv, "POST", "/v1/completions", { prompt: "x", max_tokens: 70, ignore_eos: true })).status, 200);
  assert.equal((await srv.stop()).code, 0);
});

test("bad settings exit 1 with a message naming the setting", async () => {
  const { spawnSync } = await import("node:child_process");
  let p = spawnSync(process.env.MOE_BIN, ["serve", "-m", model, "--parallel", "0"], { encoding: "utf8" });
  assert.equal(p.status, 1);
  assert.match(p.stderr, /parallel/);
  p = spawnSync(process.env.MOE_BIN, ["serve", "-m", model, "--bogus", "1"], { encoding: "utf8" });
  assert.equal(p.status, 1);
  assert.match(p.stderr, /--bogus/);
  const cfg = path.join(dir, "bad.yaml");
  writeFileSync(cfg, "port: 1\nnot_a_setting: 2\n");
  p = spawnSync(process.env.MOE_BIN, ["serve", "-m", model, "--config", cfg], { encoding: "utf8" });
  assert.equal(p.status, 1);
  assert.match(p.stderr, /line 2.*not_a_setting/);
  p = spawnSync(process.env.MOE_BIN, ["serve", "-m", path.join(dir, "missing.gguf"), "--port", "0"], { encoding: "utf8" });
  assert.equal(p.status, 1);
});
