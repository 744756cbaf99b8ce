// Shared helpers for the moe serve integration tests: a tiny model in a mkdtemp folder, the
// real binary (MOE_BIN) on a free loopback port (--port 0; the bound port is read from the
// "listening on" line), raw HTTP, metrics parsing. Everything stays on 127.0.0.1.
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";

export const BIN = process.env.MOE_BIN;
if (!BIN) {
  console.error("MOE_BIN must point to the moe binary");
  process.exit(2);
}

const tmpdirs = [];
process.on("exit", () => {
  for (const d of tmpdirs) rmSync(d, { recursive: true, force: true });
});

export function tinyModel() {
  const dir = mkdtempSync(path.join(os.tmpdir(), "moe-server-test-"));
  tmpdirs.push(dir);
  const model = path.join(dir, "tiny.gguf");
  execFileSync(BIN, ["init", "--preset", "tiny", "--seed", "3", "-o", model], { stdio: "ignore" });
  return { dir, model };
}

// Start `moe serve`; resolves once it listens. args: extra flags.
export async function startServer(model, args = []) {
  const child = spawn(BIN, ["serve", "-m", model, "--host", "127.0.0.1", "--port", "0", "--threads", "1", ...args], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  const exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("server did not start:\n" + stderr)), 30000);
    child.stderr.on("data", (d) => {
      stderr += d.toString();
      const m = stderr.match(/listening on http:\/\/[^ ]+:(\d+)/);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code} before listening:\n${stderr}`));
    });
  });
  const srv = {
    child,
    port,
    base: `http://127.0.0.1:${port}`,
    exited,
    get log() {
      return stderr;
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      return exited;
    },
  };
  return srv;
}

// Raw HTTP request; resolves {status, headers, body}.
export function request(srv, method, p, body, headers = {}) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : typeof body === "string" || Buffer.isBuffer(body) ? body : JSON.stringify(body);
    const req = http.request(
      { host: "127.0.0.1", port: srv.port, method, path: p, agent: false,
        headers: { "content-type": "application/json", ...(data !== undefined ? { "content-length": Buffer.byteLength(data) } : {}), ...headers } },
      (res) => {
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString() }));
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    if (data !== undefined) req.write(data);
    req.end();
  });
}

export async function json(srv, method, p, body, headers) {
  const r = await request(srv, method, p, body, headers);
  let parsed = null;
  try {
    parsed = JSON.parse(r.body);
  } catch {}
  return { ...r, json: parsed };
}

// Send raw bytes over a socket and read the reply until the server closes or timeoutMs.
export function rawExchange(srv, bytes, timeoutMs = 5000) {
  return new Promise((resolve) => {
    const s = net.connect(srv.port, "127.0.0.1");
    let got = "";
    const timer = setTimeout(() => {
      s.destroy();
      resolve(got);
    }, timeoutMs);
    s.on("data", (d) => (got += d.toString()));
    s.on("close", () => {
      clearTimeout(timer);
      resolve(got);
    });
    s.on("error", () => {});
    s.write(bytes);
  });
}

// Prometheus text → Map "name{labels}" → number
export async function metrics(srv) {
  const r = await request(srv, "GET", "/metrics");
  const m = new Map();
  for (const line of r.body.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const i = line.lastIndexOf(" ");
    m.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  m.text = r.body;
  return m;
}

export async function waitFor(fn, timeoutMs = 5000, stepMs = 25) {
  const t0 = Date.now();
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() - t0 > timeoutMs) return v;
    await new Promise((r) => setTimeout(r, stepMs));
  }
}

export function checkErrorShape(assert, j, status) {
  assert.ok(j && j.error, `error body expected for ${status}: ${JSON.stringify(j)}`);
  assert.equal(typeof j.error.message, "string");
  assert.ok(j.error.message.length > 0);
  assert.equal(typeof j.error.type, "string");
  assert.ok("param" in j.error && "code" in j.error, "param and code keys");
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
