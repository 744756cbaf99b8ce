// moe serve lifecycle: SIGTERM lets running streams finish and exits 0; with a short
// --shutdown-timeout, streams still running are cut with an error event and it still exits 0;
// the access log is JSON lines with id, status, tokens and latency.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
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
  const srv = await startServer(model, ["--parallel", "1", "--ctx", "4096", "--shutdown-timeout", "5", "--access-log", ""]);
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
  const s = await client.completions.create({ model: "tiny", prompt: "go", max_tokens: 400, stream: true, ignore_eos: true });
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
