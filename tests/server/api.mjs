// moe serve through the official openai client: chat and completions, streaming and not,
// usage, stop sequences, seed reproducibility, /v1/models, /health, /ready.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import OpenAI from "openai";

import { json, request, startServer, tinyModel } from "./lib.mjs";

let srv, client;
const MODEL = "tiny";

before(async () => {
  const { model } = tinyModel();
  srv = await startServer(model, ["--parallel", "2", "--ctx", "512"]);
  client = new OpenAI({ baseURL: srv.base + "/v1", apiKey: "unused", maxRetries: 0, timeout: 60000 });
});

after(async () => {
  const r = await srv.stop();
  assert.equal(r.code, 0, "exit status after SIGTERM\n" + srv.log);
});

test("health, ready, models", async () => {
  assert.equal((await request(srv, "GET", "/health")).status, 200);
  assert.equal((await request(srv, "GET", "/ready")).status, 200);
  const models = await client.models.list();
  assert.deepEqual(models.data.map((m) => m.id), [MODEL]);
});

test("chat, non-streaming, with usage", async () => {
  const r = await client.chat.completions.create({
    model: MODEL,
    messages: [{ role: "system", content: "be brief" }, { role: "user", content: "Hello there" }],
    max_tokens: 12,
    temperature: 0.7,
    seed: 1,
    ignore_eos: true,
  });
  assert.equal(r.object, "chat.completion");
  assert.match(r.id, /^chatcmpl-/);
  assert.equal(r.model, MODEL);
  assert.equal(r.choices.length, 1);
  assert.equal(r.choices[0].message.role, "assistant");
  assert.equal(typeof r.choices[0].message.content, "string");
  assert.equal(r.choices[0].finish_reason, "length");
  assert.equal(r.usage.completion_tokens, 12);
  assert.ok(r.usage.prompt_tokens > 3);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + 12);
});

test("completions, non-streaming", async () => {
  const r = await client.completions.create({ model: MODEL, prompt: "Once upon a time", max_tokens: 8, ignore_eos: true });
  assert.equal(r.object, "text_completion");
  assert.equal(typeof r.choices[0].text, "string");
  assert.equal(r.choices[0].finish_reason, "length");
  assert.equal(r.usage.completion_tokens, 8);
});

test("chat streaming: role chunk, content, finish_reason, include_usage, [DONE]", async () => {
  const stream = await client.chat.completions.create({
    model: MODEL,
    messages: [{ role: "user", content: "Tell me a story" }],
    max_tokens: 20,
    seed: 5,
    stream: true,
    stream_options: { include_usage: true },
    ignore_eos: true,
  });
  let text = "", role = null, finish = null, usage = null, n = 0;
  for await (const chunk of stream) {
    n++;
    assert.equal(chunk.object, "chat.completion.chunk");
    if (chunk.choices.length) {
      const c = chunk.choices[0];
      if (c.delta.role) role = c.delta.role;
      if (c.delta.content) text += c.delta.content;
      if (c.finish_reason) finish = c.finish_reason;
      assert.equal(chunk.usage, null, "usage: null on content chunks with include_usage");
    } else {
      usage = chunk.usage;
    }
  }
  assert.equal(role, "assistant");
  assert.equal(finish, "length");
  assert.ok(usage, "usage chunk");
  assert.equal(usage.completion_tokens, 20);
  assert.ok(n >= 3);
  // the same request without streaming gives the same text (same seed)
  const r = await client.chat.completions.create({
    model: MODEL, messages: [{ role: "user", content: "Tell me a story" }], max_tokens: 20, seed: 5, ignore_eos: true,
  });
  assert.equal(r.choices[0].message.content, text);
});

test("completions streaming ends with [DONE] on the wire", async () => {
  const r = await request(srv, "POST", "/v1/completions", { model: MODEL, prompt: "abc", max_tokens: 5, stream: true, ignore_eos: true });
  assert.equal(r.status, 200);
  assert.match(r.headers["content-type"], /text\/event-stream/);
  const events = r.body.split("\n\n").filter((e) => e);
  for (const e of events) assert.match(e, /^data: /);
  assert.equal(events.at(-1), "data: [DONE]");
  const chunks = events.slice(0, -1).map((e) => JSON.parse(e.slice(6)));
  assert.equal(chunks.at(-1).choices[0].finish_reason, "length");
  assert.ok(!("usage" in chunks[0]), "no usage key without include_usage");
});

test("seed reproducibility; different seeds differ", async () => {
  const ask = (seed) =>
    client.completions.create({ model: MODEL, prompt: "The", max_tokens: 24, temperature: 1.0, seed, ignore_eos: true });
  const a = await ask(42), b = await ask(42), c = await ask(43);
  assert.equal(a.choices[0].text, b.choices[0].text);
  assert.notEqual(a.choices[0].text, c.choices[0].text);
});

test("stop sequences cut the text before the match", async () => {
  // find a greedy continuation, then ask again stopping at a piece of it
  const base = await client.completions.create({ model: MODEL, prompt: "Hello", max_tokens: 40, temperature: 0, ignore_eos: true });
  const full = base.choices[0].text;
  const cut = [...full].slice(6, 9).join("");
  assert.ok(cut.length > 0, "greedy text long enough: " + JSON.stringify(full));
  const idx = full.indexOf(cut);
  const r = await client.completions.create({ model: MODEL, prompt: "Hello", max_tokens: 40, temperature: 0, stop: [cut, "zzzz-never"], ignore_eos: true });
  assert.equal(r.choices[0].finish_reason, "stop");
  assert.equal(r.choices[0].text, full.slice(0, idx));
  // streaming gives the same cut
  const s = await client.completions.create({ model: MODEL, prompt: "Hello", max_tokens: 40, temperature: 0, stop: cut, stream: true, ignore_eos: true });
  let text = "", finish = null;
  for await (const ch of s) {
    text += ch.choices[0]?.text ?? "";
    finish = ch.choices[0]?.finish_reason ?? finish;
  }
  assert.equal(text, full.slice(0, idx));
  assert.equal(finish, "stop");
});

test("unknown fields are ignored, nulls are absent", async () => {
  const r = await json(srv, "POST", "/v1/chat/completions", {
    model: MODEL, messages: [{ role: "user", content: "hi", name: "bob" }], max_tokens: 3, frequency_penalty: 0,
    logit_bias: null, user: "x", tools: null, some_future_field: { a: [1, 2] }, temperature: null, ignore_eos: true,
  });
  assert.equal(r.status, 200, r.body);
  assert.equal(r.json.usage.completion_tokens, 3);
  assert.equal(r.headers["x-request-id"], r.json.id);
});
