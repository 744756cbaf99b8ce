// moe serve: continuous batching with more concurrent clients than --parallel, a disconnect
// mid-stream frees its slot at once (seen in /metrics), a disconnect while queued too.
import assert from "node:assert/strict";
import http from "node:http";
import { after, before, test } from "node:test";
import OpenAI from "openai";

import { metrics, startServer, tinyModel, waitFor } from "./lib.mjs";

let srv, client;

before(async () => {
  const { model } = tinyModel();
  srv = await startServer(model, ["--parallel", "3", "--ctx", "1024", "--queue", "32", "--prefill-chunk", "16"]);
  client = new OpenAI({ baseURL: srv.base + "/v1", apiKey: "unused", maxRetries: 0, timeout: 120000 });
});

after(async () => {
  const r = await srv.stop();
  assert.equal(r.code, 0, "exit status after SIGTERM\n" + srv.log);
});

test("10 concurrent streams on 3 slots all complete; steps batch several sequences", async () => {
  const N = 10;
  const jobs = [];
  for (let i = 0; i < N; i++) {
    jobs.push((async () => {
      const s = await client.chat.completions.create({
        model: "tiny", messages: [{ role: "user", content: `request number ${i} `.repeat(1 + (i % 4) * 10) }],
        max_tokens: 30 + i, stream: true, stream_options: { include_usage: true }, seed: i, ignore_eos: true,
      });
      let text = "", usage = null, finish = null;
      for await (const ch of s) {
        if (ch.choices.length) {
          text += ch.choices[0].delta.content ?? "";
          finish = ch.choices[0].finish_reason ?? finish;
        } else usage = ch.usage;
      }
      return { i, text, usage, finish };
    })());
  }
  const res = await Promise.all(jobs);
  for (const r of res) {
    assert.equal(r.finish, "length");
    assert.equal(r.usage.completion_tokens, 30 + r.i);
  }
  const m = await metrics(srv);
  assert.equal(m.get("moe_requests_running"), 0);
  assert.equal(m.get("moe_requests_waiting"), 0);
  const steps = m.get("moe_engine_steps_total");
  const tokens = m.get("moe_engine_step_tokens_sum");
  const gen = m.get("moe_generation_tokens_total");
  assert.ok(gen >= 10 * 30, `generated ${gen}`);
  // with 3 slots busy most of the time, a step carries well over one token on average
  assert.ok(tokens / steps > 1.5, `tokens per step ${tokens}/${steps}`);
  assert.ok(m.get("moe_request_queue_seconds_count") >= N);
  assert.ok(m.get('moe_request_finish_total{reason="length"}') >= N);
  // results of a seeded request do not depend on what else was in the batch
  const alone = await client.chat.completions.create({
    model: "tiny", messages: [{ role: "user", content: `request number 5 `.repeat(1 + (5 % 4) * 10) }],
    max_tokens: 35, seed: 5, ignore_eos: true,
  });
  assert.equal(alone.choices[0].message.content, res[5].text);
});

test("client disconnect mid-stream frees the slot at once", async () => {
  const before_ = await metrics(srv);
  const cancelled0 = before_.get('moe_request_finish_total{reason="cancelled"}') ?? 0;
  const ac = new AbortController();
  const s = await client.completions.create(
    { model: "tiny", prompt: "a very long story", max_tokens: 1000, stream: true, ignore_eos: true },
    { signal: ac.signal },
  );
  let n = 0;
  try {
    for await (const ch of s) {
      if (++n === 5) ac.abort();
    }
  } catch (e) {
    assert.ok(/abort/i.test(String(e.name) + String(e.message)), String(e));
  }
  const t0 = Date.now();
  const ok = await waitFor(async () => {
    const m = await metrics(srv);
    return m.get("moe_requests_running") === 0 && m.get('moe_request_finish_total{reason="cancelled"}') === cancelled0 + 1 && m;
  }, 3000, 10);
  assert.ok(ok, "slot not freed within 3 s");
  const dt = Date.now() - t0;
  assert.ok(dt < 1000, `slot freed after ${dt} ms`);
  assert.ok(ok.get("moe_generation_tokens_total") < before_.get("moe_generation_tokens_total") + 500, "generation stopped early");
  assert.ok(ok.get('moe_http_requests_total{code="499"}') >= 1);
});

test("disconnect of a non-streaming request frees the slot", async () => {
  const m0 = await metrics(srv);
  const cancelled0 = m0.get('moe_request_finish_total{reason="cancelled"}');
  const body = JSON.stringify({ model: "tiny", prompt: "x", max_tokens: 1000, ignore_eos: true });
  const req = http.request({ host: "127.0.0.1", port: srv.port, method: "POST", path: "/v1/completions", agent: false,
    headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) } });
  req.on("error", () => {});
  req.end(body);
  await waitFor(async () => (await metrics(srv)).get("moe_requests_running") === 1, 3000, 10);
  req.destroy();
  const ok = await waitFor(async () => {
    const m = await metrics(srv);
    return m.get("moe_requests_running") === 0 && m.get('moe_request_finish_total{reason="cancelled"}') === cancelled0 + 1;
  }, 3000, 10);
  assert.ok(ok, "slot not freed after the client left");
});
