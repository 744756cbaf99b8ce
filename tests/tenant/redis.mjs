// A real redis-server for the tenant tests, on a free 127.0.0.1 port, no persistence.
import { spawn } from "node:child_process";
import net from "node:net";

import { waitFor } from "../server/lib.mjs";

export function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });
}

// Starts redis-server on `port` with its working files in `dir`; resolves once it accepts
// connections, throws if it does not within 10 s.
export async function startRedis(port, dir) {
  const child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
    "--dir", dir], { stdio: "ignore" });
  const up = await waitFor(() => new Promise((resolve) => {
    const s = net.connect(port, "127.0.0.1", () => { s.destroy(); resolve(true); });
    s.on("error", () => resolve(false));
  }), 10000, 50);
  if (!up) {
    child.kill("SIGKILL");
    throw new Error(`redis-server did not start on port ${port}`);
  }
  return child;
}
