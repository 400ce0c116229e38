// Processes the tests start themselves: redis-server, the gateway, a
// channels_redis publisher. Loopback only, free ports, stopped by PID.
import { before, after } from "node:test";
import { spawn, execFileSync } from "node:child_process";
import net from "node:net";
import fs from "node:fs";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
export const ARTIFACTS = path.join(REPO, "tests", "artifacts");
export const SECRET = "e2e-secret-not-for-production";

const children = new Set();
function killAll() {
  for (const child of children) {
    try {
      process.kill(child.pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
}
process.on("exit", killAll);
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => {
    killAll();
    process.exit(130);
  });
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** An error that makes waitFor give up at once (a process died). */
export const fatal = (message) => Object.assign(new Error(message), { fatal: true });

export async function waitFor(check, { timeoutMs = 15000, intervalMs = 50, what = "condition" } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch (error) {
      if (error && error.fatal) throw error;
      // not yet
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(intervalMs);
  }
}

function logFile(name) {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  return fs.openSync(path.join(ARTIFACTS, `${name}.log`), "a");
}

/** Spawns a long-running process whose output goes to tests/artifacts/NAME.log. */
export function start(name, command, args, { env = {}, cwd = REPO, stdin = "ignore" } = {}) {
  const fd = logFile(name);
  const child = spawn(command, args, {
    cwd,
    env: { ...process.env, ...env },
    stdio: [stdin, fd, fd],
  });
  fs.closeSync(fd);
  children.add(child);
  child.exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
  child.exited.then(() => children.delete(child));
  return child;
}

/** SIGTERM, then SIGKILL after graceMs; resolves once the process is gone. */
export async function stop(child, { signal = "SIGTERM", graceMs = 5000 } = {}) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(child.pid, signal);
  } catch {
    return;
  }
  const timer = setTimeout(() => {
    try {
      process.kill(child.pid, "SIGKILL");
    } catch {
      // gone
    }
  }, graceMs);
  await child.exited;
  clearTimeout(timer);
}

export async function startRedis() {
  const port = await freePort();
  const child = start(`redis-${port}`, "redis-server", [
    "--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
  ]);
  await waitFor(() => tcpOpen(port), { what: `redis on ${port}` });
  return { port, url: `redis://127.0.0.1:${port}`, child };
}

export function tcpOpen(port) {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: "127.0.0.1" }, () => {
      socket.destroy();
      resolve(true);
    });
    socket.on("error", () => resolve(false));
  });
}

export function gatewayBin() {
  const bin = process.env.GATEWAY_BIN || path.join(REPO, "target", "debug", "gateway");
  if (!fs.existsSync(bin)) throw new Error(`gateway binary ${bin} missing: run cargo build -p gateway`);
  return bin;
}

export function gatewayEnv({ redisUrl, port, adminPort, extra = {} }) {
  return {
    GATEWAY_AUTH_JWT_SECRET: SECRET,
    GATEWAY_LAYER_HOSTS: JSON.stringify([redisUrl]),
    GATEWAY_SERVER_LISTEN: `127.0.0.1:${port}`,
    GATEWAY_SERVER_ADMIN_LISTEN: `127.0.0.1:${adminPort}`,
    GATEWAY_LOG_FORMAT: "json",
    // As scripts/quickstart runs it: reconnecting clients get what they missed.
    GATEWAY_LAYER_RECOVERY: "true",
    RUST_LOG: process.env.RUST_LOG || "info",
    ...extra,
  };
}

/** Starts the gateway and waits for /readyz. Reuses ports when given (restart). */
export async function startGateway({ redisUrl, port, adminPort, extra } = {}) {
  port = port || (await freePort());
  adminPort = adminPort || (await freePort());
  const env = gatewayEnv({ redisUrl, port, adminPort, extra });
  const child = start(`gateway-${port}`, gatewayBin(), ["serve"], { env });
  await waitFor(
    async () => {
      if (child.exitCode !== null) throw fatal("gateway exited (see tests/artifacts/gateway-*.log)");
      const response = await fetch(`http://127.0.0.1:${adminPort}/readyz`);
      return response.ok;
    },
    { timeoutMs: 20000, what: `gateway /readyz on ${adminPort}` },
  );
  return { port, adminPort, child, url: `ws://127.0.0.1:${port}/ws/notifications/`, env };
}

/** A token minted by the gateway itself (`gateway gen-token`). */
export function genToken(userId, extraArgs = []) {
  return execFileSync(gatewayBin(), ["gen-token", "--user-id", String(userId), ...extraArgs], {
    env: { ...process.env, GATEWAY_AUTH_JWT_SECRET: SECRET },
    encoding: "utf8",
  }).trim();
}

export function venvPython() {
  const python = path.join(REPO, ".venv", "bin", "python");
  if (!fs.existsSync(python)) throw new Error(`${python} missing: run python3 tests/py/ensure_venv.py`);
  return python;
}

/** Publisher with acknowledged sends: await publish(group, message). */
export async function publisher(redisUrl) {
  const child = spawn(venvPython(), [path.join(REPO, "tests", "e2e", "publish.py"), redisUrl], {
    cwd: REPO,
    stdio: ["pipe", "pipe", "inherit"],
  });
  children.add(child);
  child.exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
  child.exited.then(() => children.delete(child));
  const lines = readline.createInterface({ input: child.stdout });
  const waiting = [];
  lines.on("line", (line) => {
    const next = waiting.shift();
    if (next) next(line);
  });
  await new Promise((resolve) => waiting.push(resolve)); // "ready"
  return {
    child,
    publish(group, message) {
      return new Promise((resolve) => {
        waiting.push(resolve);
        child.stdin.write(JSON.stringify({ group, message }) + "\n");
      });
    },
    stop: () => {
      child.stdin.end();
      return stop(child);
    },
  };
}

/**
 * Called inside a describe(): a real redis-server, a gateway on it and a
 * channels_redis publisher for the suite's tests, started before them and
 * stopped after them. Returns the object whose `redis`, `gateway` and `pub`
 * they read once started.
 */
export function realStack() {
  const stack = { redis: null, gateway: null, pub: null };
  before(async () => {
    stack.redis = await startRedis();
    stack.gateway = await startGateway({ redisUrl: stack.redis.url });
    stack.pub = await publisher(stack.redis.url);
  });
  after(async () => {
    if (stack.pub) await stack.pub.stop();
    if (stack.gateway) await stop(stack.gateway.child);
    if (stack.redis) await stop(stack.redis.child);
  });
  return stack;
}
