// Runs connect() from gateway/static/notifications.js and records what it does.
import net from "node:net";
import { before, after } from "node:test";
import WebSocket, { WebSocketServer } from "ws";
import { connect } from "../../../gateway/static/notifications.js";
import { waitFor, freePort } from "./procs.mjs";

/** A `ws` WebSocket that records the URLs it opened and the frames it sent. */
export function recordingWebSocket() {
  const opened = [];
  const sent = [];
  class Recording extends WebSocket {
    constructor(url) {
      super(url);
      opened.push(url);
    }
    send(data, ...rest) {
      sent.push(data);
      return super.send(data, ...rest);
    }
  }
  return { Recording, opened, sent };
}

export function track(options) {
  const { Recording, opened, sent } = recordingWebSocket();
  const states = [];
  const messages = [];
  const frames = []; // onMessage's second argument, one per message
  const recoveries = []; // onRecovery's argument, with the index into messages
  const tokenCalls = [];
  const getToken = options.getToken;
  const conn = connect({
    WebSocketImpl: Recording,
    onError: () => {},
    ...options,
    getToken: getToken
      ? async (context) => {
          tokenCalls.push(context);
          return getToken(context);
        }
      : undefined,
    onMessage: (message, frame) => {
      messages.push(message);
      frames.push(frame);
    },
    onRecovery: (status) => recoveries.push({ ...status, afterMessages: messages.length, at: Date.now() }),
    onStateChange: (state, detail) => states.push({ state, ...detail, at: Date.now() }),
  });
  return {
    conn,
    states,
    messages,
    frames,
    recoveries,
    opened,
    sent,
    tokenCalls,
    /** Resolves with the first recorded state (after index `from`) matching. */
    waitState(name, { from = 0, timeoutMs = 15000, where = () => true } = {}) {
      return waitFor(() => states.slice(from).find((s) => s.state === name && where(s)), {
        timeoutMs,
        what: `state ${name} (seen: ${states.map((s) => `${s.state}${s.code ? `:${s.code}` : ""}`).join(" ")})`,
      });
    },
    waitMessage(message, { timeoutMs = 15000 } = {}) {
      return waitFor(() => messages.includes(message), { timeoutMs, what: `message ${message}` });
    },
  };
}

/** A TCP proxy whose existing connections can be frozen (a half-open link). */
export async function freezableProxy(targetPort) {
  const port = await freePort();
  const pairs = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect({ port: targetPort, host: "127.0.0.1" });
    const pair = { client, upstream, frozen: false };
    pairs.add(pair);
    client.on("data", (chunk) => pair.frozen || upstream.write(chunk));
    upstream.on("data", (chunk) => pair.frozen || client.write(chunk));
    const end = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("error", end);
    upstream.on("error", end);
    client.on("close", () => pair.frozen || end());
    upstream.on("close", () => pair.frozen || end());
  });
  await new Promise((resolve) => server.listen(port, "127.0.0.1", resolve));
  return {
    port,
    freeze() {
      for (const pair of pairs) pair.frozen = true;
    },
    close() {
      for (const pair of pairs) {
        pair.client.destroy();
        pair.upstream.destroy();
      }
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

/**
 * Called inside a describe(): a small `ws` server that plays the gateway's
 * part for the suite, started before its tests and closed after them. Each
 * connection is recorded in `seen` ({ url, at }) and handed to the next
 * step of the plan `reset(steps)` set (one function per connection).
 */
export function scriptedServer() {
  const scripted = { url: null, seen: [], plan: [], server: null };
  scripted.reset = (steps) => {
    scripted.plan = steps;
    scripted.seen.length = 0;
  };
  before(async () => {
    const port = await freePort();
    scripted.server = new WebSocketServer({ port, host: "127.0.0.1" });
    scripted.server.on("connection", (socket, request) => {
      scripted.seen.push({ url: request.url, at: Date.now() });
      const step = scripted.plan.shift();
      if (step) step(socket);
    });
    await new Promise((resolve) => scripted.server.once("listening", resolve));
    scripted.url = `ws://127.0.0.1:${port}/ws/notifications/`;
  });
  after(() => new Promise((resolve) => scripted.server.close(resolve)));
  return scripted;
}
