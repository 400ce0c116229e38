// gateway/static/notifications.js against a REAL gateway process, a real
// redis-server and the real channels_redis publishing, all on free loopback
// ports. Run: node --test tests/e2e/client.test.mjs (after cargo build -p
// gateway and python3 tests/py/ensure_venv.py), or bash tests/e2e/run.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { realStack, startRedis, startGateway, genToken, publisher, stop, sleep, freePort, waitFor } from "./lib/procs.mjs";
import { track, freezableProxy } from "./lib/track.mjs";

describe("notifications.js against a real gateway", { timeout: 120000 }, () => {
  const stack = realStack();

  it("delivers {message} frames of the user's group to onMessage, and only those", async () => {
    const token = genToken(101);
    const t = track({ url: stack.gateway.url, getToken: async () => token });
    await t.waitState("open");
    assert.ok(t.opened[0].includes(`?token=${token}`), "token sent as ?token=");
    await stack.pub.publish("user_102", "for someone else");
    await stack.pub.publish("user_101", "hello 101");
    await t.waitMessage("hello 101");
    await stack.pub.publish("user_101", { nested: ["json", 1] });
    await waitForLength(t.messages, 2);
    assert.deepEqual(t.messages, ["hello 101", { nested: ["json", 1] }]);
    t.conn.close();
    assert.equal(t.conn.state, "closed");
  });

  it("sends application pings when idle; the gateway's pongs keep it open", async () => {
    const token = genToken(103);
    const t = track({ url: stack.gateway.url, getToken: () => token, pingIntervalMs: 200, pongTimeoutMs: 600 });
    await t.waitState("open");
    await sleep(1500);
    const pings = t.sent.filter((frame) => frame === '{"type":"ping"}').length;
    assert.ok(pings >= 3, `expected at least 3 pings, saw ${pings}`);
    assert.equal(t.conn.state, "open");
    assert.equal(t.opened.length, 1, "no reconnect while pongs arrive");
    t.conn.close();
  });

  it("drops a dead (half-open) connection after the pong timeout and reconnects", async () => {
    const proxy = await freezableProxy(stack.gateway.port);
    try {
      const token = genToken(104);
      const t = track({
        url: `ws://127.0.0.1:${proxy.port}/ws/notifications/`,
        getToken: () => token,
        pingIntervalMs: 300,
        pongTimeoutMs: 700,
        baseDelayMs: 100,
      });
      await t.waitState("open");
      const frozenAt = Date.now();
      proxy.freeze();
      const dead = await t.waitState("waiting", { where: (s) => s.dead, timeoutMs: 5000 });
      const detectMs = dead.at - frozenAt;
      assert.ok(detectMs <= 300 + 700 + 1100, `dead link noticed after ${detectMs} ms`);
      const reopened = await t.waitState("open", { from: t.states.indexOf(dead) });
      console.log(`dead link noticed in ${detectMs} ms, open again after ${reopened.at - frozenAt} ms`);
      await stack.pub.publish("user_104", "after the dead link");
      await t.waitMessage("after the dead link");
      t.conn.close();
    } finally {
      await proxy.close();
    }
  });

  it("backs off after a refused handshake (401) and asks getToken again", async () => {
    const good = genToken(105);
    let calls = 0;
    const t = track({
      url: stack.gateway.url,
      getToken: () => (++calls === 1 ? "not-a-jwt" : good),
      baseDelayMs: 100,
    });
    const waiting = await t.waitState("waiting");
    assert.equal(waiting.code, 1006, "a refused handshake shows as 1006 in browsers and ws");
    await t.waitState("open");
    assert.equal(t.tokenCalls.length, 2);
    await stack.pub.publish("user_105", "after 401");
    await t.waitMessage("after 401");
    t.conn.close();
  });

  it("stops for good after 1003 (binary frame) and 1009 (frame too large)", async () => {
    for (const [code, misbehave] of [
      [1003, (socket) => socket.send(Buffer.from([1, 2, 3]))],
      [1009, (socket) => socket.send("x".repeat(20000))],
    ]) {
      const token = genToken(106);
      const t = track({ url: stack.gateway.url, getToken: () => token, baseDelayMs: 50 });
      await t.waitState("open");
      misbehave(t.conn.socket);
      const closed = await t.waitState("closed");
      assert.equal(closed.code, code);
      assert.equal(closed.final, true);
      await sleep(500);
      assert.equal(t.opened.length, 1, `no reconnect after ${code}`);
      assert.equal(t.tokenCalls.length, 1);
    }
  });

  it("close() stops reconnecting, even while waiting", async () => {
    const nobody = await freePort(); // nothing listens there
    const t = track({ url: `ws://127.0.0.1:${nobody}/ws/notifications/`, getToken: () => "x", baseDelayMs: 100 });
    await t.waitState("waiting");
    t.conn.close();
    const calls = t.tokenCalls.length;
    await sleep(600);
    assert.equal(t.tokenCalls.length, calls);
    assert.equal(t.conn.state, "closed");
  });

  it("SIGTERM: honours the 1001 retry_after_ms hint and reconnects to the restarted gateway", async () => {
    const extra = { GATEWAY_SERVER_DRAIN_RECONNECT_JITTER: "2s" };
    let gw = await startGateway({ redisUrl: stack.redis.url, extra });
    try {
      const token = genToken(107);
      const t = track({ url: gw.url, getToken: () => token, hintJitterMs: 200, baseDelayMs: 100 });
      await t.waitState("open");
      const killedAt = Date.now();
      await stop(gw.child);
      const waiting = await t.waitState("waiting");
      assert.equal(waiting.code, 1001);
      assert.match(waiting.reason, /retry_after_ms=\d+/);
      assert.ok(waiting.retryAfterMs >= 0 && waiting.retryAfterMs <= 2000, `hint ${waiting.retryAfterMs}`);
      assert.ok(waiting.delayMs >= waiting.retryAfterMs && waiting.delayMs < waiting.retryAfterMs + 200);
      gw = await startGateway({ redisUrl: stack.redis.url, port: gw.port, adminPort: gw.adminPort, extra });
      const reopened = await t.waitState("open", { from: t.states.indexOf(waiting) });
      assert.ok(
        reopened.at - waiting.at >= waiting.retryAfterMs,
        "no attempt succeeded before the hinted delay",
      );
      console.log(
        `hint ${waiting.retryAfterMs} ms, waited ${waiting.delayMs} ms, reconnected ${reopened.at - killedAt} ms after SIGTERM`,
      );
      await stack.pub.publish("user_107", "after restart");
      await t.waitMessage("after restart");
      t.conn.close();
    } finally {
      await stop(gw.child);
    }
  });
});

// Recovery (docs/recovery.md) with the gateway's layer.recovery on, as
// lib/procs.mjs starts it: what Django publishes while a client has no open
// socket reaches it after the reconnect, once and in order.
describe("notifications.js recovery against a real gateway", { timeout: 180000 }, () => {
  let redis;
  let pub;
  const POSITION = /^[0-9a-f]{24}$/;
  const recoverParam = (url) => new URL(url).searchParams.get("recover");

  before(async () => {
    redis = await startRedis();
    pub = await publisher(redis.url);
  });

  after(async () => {
    if (pub) await pub.stop();
    if (redis) await stop(redis.child);
  });

  /** Positions strictly grow, every message frame has one, and onMessage got the bare message. */
  function assertPositioned(t) {
    t.frames.forEach((frame, i) => {
      assert.match(frame.position, POSITION, `message ${i} positioned`);
      assert.deepEqual(frame.message, t.messages[i], "onMessage gets the message without its position");
      if (i > 0) assert.ok(frame.position > t.frames[i - 1].position, `position ${i} grows`);
    });
  }

  it("gateway SIGTERM and restart: the messages published meanwhile arrive once, in order", async () => {
    const extra = { GATEWAY_SERVER_DRAIN_RECONNECT_JITTER: "1s" };
    let gw = await startGateway({ redisUrl: redis.url, extra });
    try {
      const token = genToken(201);
      const t = track({ url: gw.url, getToken: () => token, hintJitterMs: 200, baseDelayMs: 100 });
      await t.waitState("open");
      assert.equal(recoverParam(t.opened[0]), "", "recover= on the first attempt");
      assert.ok(t.opened[0].includes(`?token=${token}&recover=`));
      await waitFor(() => t.recoveries.length === 1, { what: "first recovery status" });
      assert.equal(t.recoveries[0].recovered, true);
      assert.equal(t.recoveries[0].replayed, 0);
      await pub.publish("user_201", "before");
      await t.waitMessage("before");
      const held = t.conn.position;
      assert.ok(held >= t.frames[0].position, "the greatest position seen is held");

      await stop(gw.child);
      const waiting = await t.waitState("waiting");
      assert.equal(waiting.code, 1001);
      const missed = ["missed 1", { missed: 2 }, "missed 3", "missed 4", "missed 5"];
      for (const message of missed) await pub.publish("user_201", message);
      await pub.publish("user_202", "someone else's");
      gw = await startGateway({ redisUrl: redis.url, port: gw.port, adminPort: gw.adminPort, extra });
      await waitFor(() => t.recoveries.length === 2, { timeoutMs: 20000, what: "recovery after the restart" });
      const reconnect = t.opened[t.opened.length - 1];
      assert.equal(recoverParam(reconnect), held, "reconnects with the greatest position seen");
      assert.deepEqual(t.messages, ["before", ...missed]);
      const { recovered, replayed, position, afterMessages } = t.recoveries[1];
      assert.deepEqual({ recovered, replayed, afterMessages }, { recovered: true, replayed: 5, afterMessages: 6 });
      assert.ok(position >= t.frames[5].position);

      await pub.publish("user_201", "live again");
      await t.waitMessage("live again");
      await sleep(500);
      assert.deepEqual(t.messages, ["before", ...missed, "live again"], "nothing twice, nothing else");
      assertPositioned(t);
      console.log(
        `recovered ${replayed} messages ${t.recoveries[1].at - waiting.at} ms after the drain close ` +
          `(${t.opened.length} attempts)`,
      );
      t.conn.close();
    } finally {
      await stop(gw.child);
    }
  });

  it("a dead (half-open) socket: what was written into it comes back after the reconnect", async () => {
    const gw = await startGateway({ redisUrl: redis.url });
    const proxy = await freezableProxy(gw.port);
    try {
      const token = genToken(203);
      const t = track({
        url: `ws://127.0.0.1:${proxy.port}/ws/notifications/`,
        getToken: () => token,
        pingIntervalMs: 300,
        pongTimeoutMs: 700,
        baseDelayMs: 100,
      });
      await waitFor(() => t.recoveries.length === 1, { what: "first recovery status" });
      await pub.publish("user_203", "seen");
      await t.waitMessage("seen");
      const held = t.conn.position;
      proxy.freeze();
      // The gateway still has the socket: these are written to it and lost in the frozen link.
      const lost = ["lost 1", "lost 2", "lost 3"];
      for (const message of lost) await pub.publish("user_203", message);
      await t.waitState("waiting", { where: (s) => s.dead, timeoutMs: 5000 });
      await waitFor(() => t.recoveries.length === 2, { what: "recovery after the dead link" });
      assert.equal(recoverParam(t.opened[1]), held);
      assert.deepEqual(t.messages, ["seen", ...lost]);
      assert.equal(t.recoveries[1].recovered, true);
      assert.equal(t.recoveries[1].replayed, 3);
      await pub.publish("user_203", "after");
      await t.waitMessage("after");
      await sleep(300);
      assert.deepEqual(t.messages, ["seen", ...lost, "after"]);
      assertPositioned(t);
      t.conn.close();
    } finally {
      await proxy.close();
      await stop(gw.child);
    }
  });

  it("recover: false: no recover parameter, frames as before, and what a dead link swallowed stays lost", async () => {
    const gw = await startGateway({ redisUrl: redis.url });
    const proxy = await freezableProxy(gw.port);
    try {
      const token = genToken(204);
      const t = track({
        url: `ws://127.0.0.1:${proxy.port}/ws/notifications/`,
        getToken: () => token,
        recover: false,
        pingIntervalMs: 300,
        pongTimeoutMs: 700,
        baseDelayMs: 100,
      });
      await t.waitState("open");
      assert.equal(recoverParam(t.opened[0]), null);
      await pub.publish("user_204", "plain");
      await t.waitMessage("plain");
      assert.deepEqual(t.frames, [{ message: "plain" }]);
      proxy.freeze();
      await pub.publish("user_204", "swallowed");
      const dead = await t.waitState("waiting", { where: (s) => s.dead, timeoutMs: 5000 });
      await t.waitState("open", { from: t.states.indexOf(dead) });
      await pub.publish("user_204", "after");
      await t.waitMessage("after");
      await sleep(300);
      assert.deepEqual(t.messages, ["plain", "after"]);
      assert.deepEqual(t.frames, [{ message: "plain" }, { message: "after" }]);
      assert.equal(t.recoveries.length, 0);
      assert.equal(t.conn.position, null);
      assert.equal(recoverParam(t.opened[1]), null);
      t.conn.close();
    } finally {
      await proxy.close();
      await stop(gw.child);
    }
  });

  it("a gateway without layer.recovery ignores recover=: frames as before, no status", async () => {
    const gw = await startGateway({ redisUrl: redis.url, extra: { GATEWAY_LAYER_RECOVERY: "false" } });
    try {
      const token = genToken(205);
      const t = track({ url: gw.url, getToken: () => token });
      await t.waitState("open");
      assert.equal(recoverParam(t.opened[0]), "", "the client asks by default");
      await pub.publish("user_205", "unpositioned");
      await t.waitMessage("unpositioned");
      await sleep(300);
      assert.deepEqual(t.frames, [{ message: "unpositioned" }]);
      assert.equal(t.recoveries.length, 0);
      assert.equal(t.conn.position, null);
      t.conn.close();
    } finally {
      await stop(gw.child);
    }
  });
});

async function waitForLength(list, length) {
  const deadline = Date.now() + 10000;
  while (list.length < length) {
    if (Date.now() > deadline) throw new Error(`only ${list.length} of ${length} items`);
    await sleep(20);
  }
}
