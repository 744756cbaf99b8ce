// moe serve load and throughput, with the official openai client on loopback.
//
//   node tests/server/load.mjs bench [--model M.gguf] [--streams 1,4,16] [--tokens 64] [-- serve flags]
//     total generated tokens/s at each concurrency (each stream: max_tokens, ignore_eos)
//   node tests/server/load.mjs soak  [--model M.gguf] [--streams 64] [--seconds 60] [-- serve flags]
//     N clients loop for the duration; fails on any error other than 429, an incomplete stream,
//     or server RSS growing by more than 25% between the first and last quarter of the run.
// Without --model a tiny random model is made in a temp folder. MOE_BIN points to the binary.
// Prints one JSON line per result; the last line is "N passed, M failed".
import { readFileSync } from "node:fs";
import OpenAI from "openai";

import { metrics, startServer, tinyModel } from "./lib.mjs";

const argv = process.argv.slice(2);
const mode = argv[0] ?? "bench";
const dd = argv.indexOf("--");
const serveArgs = dd >= 0 ? argv.slice(dd + 1) : [];
const opts = dd >= 0 ? argv.slice(1, dd) : argv.slice(1);
const opt = (name, def) => {
  const i = opts.indexOf("--" + name);
  return i >= 0 ? opts[i + 1] : def;
};
const model = opt("model", null) ?? tinyModel().model;
const tokens = Number(opt("tokens", 64));
let passed = 0, failed = 0;
const check = (ok, what) => {
  if (ok) passed++;
  else {
    failed++;
    console.error("FAIL: " + what);
  }
};

function rssKiB(pid) {
  const m = readFileSync(`/proc/${pid}/status`, "utf8").match(/VmRSS:\s+(\d+)/);
  return m ? Number(m[1]) : 0;
}

async function oneStream(client, maxTokens, seed) {
  const s = await client.completions.create({
    model: "m", prompt: "The history of mixture-of-experts models", max_tokens: maxTokens, stream: true,
    stream_options: { include_usage: true }, ignore_eos: true, seed, temperature: 0.8,
  });
  let usage = null, finish = null;
  for await (const ch of s) {
    if (ch.choices.length) finish = ch.choices[0].finish_reason ?? finish;
    else usage = ch.usage;
  }
  return { usage, finish };
}

const maxStreams = Math.max(...String(opt("streams", mode === "soak" ? "64" : "1,4,16")).split(",").map(Number));
const srv = await startServer(model, ["--model-name", "m", "--access-log", "", "--queue", "1024",
  "--parallel", String(Math.min(maxStreams, 64)), "--ctx", String(Math.max(256, tokens + 64)), ...serveArgs]);
const client = new OpenAI({ baseURL: srv.base + "/v1", apiKey: "unused", maxRetries: 0, timeout: 600000 });

if (mode === "bench") {
  await oneStream(client, 4, 0); // warm-up
  for (const n of String(opt("streams", "1,4,16")).split(",").map(Number)) {
    const m0 = await metrics(srv);
    const t0 = performance.now();
    const res = await Promise.all(Array.from({ length: n }, (_, i) => oneStream(client, tokens, i)));
    const dt = (performance.now() - t0) / 1000;
    const m1 = await metrics(srv);
    const gen = res.reduce((a, r) => a + (r.usage?.completion_tokens ?? 0), 0);
    check(gen === n * tokens, `streams=${n}: generated ${gen} of ${n * tokens}`);
    const steps = m1.get("moe_engine_steps_total") - m0.get("moe_engine_steps_total");
    const stepSec = m1.get("moe_engine_step_seconds_sum") - m0.get("moe_engine_step_seconds_sum");
    console.log(JSON.stringify({
      streams: n, tokens_per_stream: tokens, seconds: +dt.toFixed(3), generated_tokens_per_s: +(gen / dt).toFixed(1),
      engine_busy: +(stepSec / dt).toFixed(3), steps, tokens_per_step: +((m1.get("moe_engine_step_tokens_sum") - m0.get("moe_engine_step_tokens_sum")) / steps).toFixed(2),
    }));
  }
} else {
  const seconds = Number(opt("seconds", 60));
  const n = maxStreams;
  const until = Date.now() + seconds * 1000;
  const rss = [];
  const sampler = setInterval(() => rss.push(rssKiB(srv.child.pid)), 250);
  let ok = 0, rejected = 0, errors = 0, incomplete = 0;
  await Promise.all(Array.from({ length: n }, async (_, i) => {
    for (let k = 0; Date.now() < until; k++) {
      try {
        const r = await oneStream(client, 8 + ((i * 7 + k) % tokens), i * 1000 + k);
        if (r.finish === "length" && r.usage) ok++;
        else incomplete++;
      } catch (e) {
        if (e.status === 429) {
          rejected++;
          await new Promise((r) => setTimeout(r, 100)); // a polite client backs off (Retry-After is 1 s)
        }
        else {
          errors++;
          if (errors < 5) console.error(String(e));
        }
      }
    }
  }));
  clearInterval(sampler);
  const q = Math.max(1, Math.floor(rss.length / 4));
  const avg = (a) => a.reduce((x, y) => x + y, 0) / a.length;
  const early = avg(rss.slice(0, q)), late = avg(rss.slice(-q));
  const m = await metrics(srv);
  console.log(JSON.stringify({ streams: n, seconds, completed: ok, rejected_429: rejected, errors, incomplete,
    rss_early_kib: Math.round(early), rss_late_kib: Math.round(late), generated: m.get("moe_generation_tokens_total") }));
  check(errors === 0, `${errors} errors other than 429`);
  check(incomplete === 0, `${incomplete} incomplete streams`);
  check(ok > n, `only ${ok} streams completed`);
  check(late <= early * 1.25, `RSS grew from ${early} to ${late} KiB`);
  check(m.get("moe_requests_running") === 0 && m.get("moe_requests_waiting") === 0, "requests left running");
}
const r = await srv.stop();
check(r.code === 0, `server exit ${r.code}`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
