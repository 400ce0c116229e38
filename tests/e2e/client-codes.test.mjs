// The close codes the gateway can send but a test cannot make it send on
// demand (4003-4007, 1011, ...): a small `ws` server plays the gateway's part.
// Recovery's bookkeeping against frames the test writes itself (positions,
// the status frame). Plus the pure helpers (backoff, hint parsing).
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { backoffDelay, parseRetryAfter, closeAdvice, isPosition } from "../../gateway/static/notifications.js";
import { sleep, waitFor } from "./lib/procs.mjs";
import { scriptedServer, track } from "./lib/track.mjs";

describe("close codes (scripted server)", { timeout: 60000 }, () => {
  const scripted = scriptedServer();
  const { seen, reset } = scripted;

  it("4001/4002: asks getToken for a fresh token and reconnects at once", async () => {
    for (const code of [4001, 4002]) {
      reset([(s) => s.close(code, "token")]);
      let n = 0;
      const t = track({ url: scripted.url, getToken: () => `token-${++n}`, baseDelayMs: 100 });
      await t.waitState("open", { where: () => seen.length === 2 });
      assert.deepEqual(
        t.tokenCalls.map((c) => c.forceRefresh),
        [false, true],
      );
      // recover= rides along by default (recovery, see below).
      assert.equal(seen[1].url, "/ws/notifications/?token=token-2&recover=");
      t.conn.close();
    }
  });

  it("4001: stops when getToken hands back the refused token (no loop)", async () => {
    reset([(s) => s.close(4001, "invalid token")]);
    const t = track({ url: scripted.url, getToken: () => "same", baseDelayMs: 50 });
    const closed = await t.waitState("closed");
    assert.equal(closed.final, true);
    await sleep(300);
    assert.equal(seen.length, 1);
  });

  it("4002 over and over: gives up after maxAuthRetries", async () => {
    reset(Array(10).fill((s) => s.close(4002, "token expired")));
    let n = 0;
    const t = track({ url: scripted.url, getToken: () => `t${++n}`, baseDelayMs: 20, maxAuthRetries: 2 });
    const closed = await t.waitState("closed");
    assert.equal(closed.code, 4002);
    await sleep(300);
    assert.equal(seen.length, 3);
  });

  it("no token before any refusal is a failed attempt: backoff, then it connects", async () => {
    reset([]);
    let n = 0;
    const errors = [];
    const t = track({
      url: scripted.url,
      getToken: () => (++n <= 2 ? [null, undefined][n - 1] : "late-token"),
      baseDelayMs: 50,
      onError: (error) => errors.push(String(error)),
    });
    const waiting = await t.waitState("waiting");
    assert.equal(waiting.reason, "getToken returned no token");
    await t.waitState("open");
    assert.equal(seen.length, 1);
    assert.equal(seen[0].url, "/ws/notifications/?token=late-token&recover=");
    assert.equal(errors.length, 2, errors.join("; "));
    assert.ok(!t.states.some((s) => s.state === "closed"));
    t.conn.close();
  });

  it("no token after the gateway refused the last one stops (logged out)", async () => {
    reset([(s) => s.close(4001, "invalid token")]);
    const t = track({
      url: scripted.url,
      getToken: ({ forceRefresh }) => (forceRefresh ? "" : "first"),
      baseDelayMs: 20,
    });
    const closed = await t.waitState("closed");
    assert.equal(closed.final, true);
    assert.equal(closed.reason, "no token");
    await sleep(300);
    assert.equal(seen.length, 1);
  });

  for (const code of [1000, 1002, 1003, 1007, 1008, 1009, 4003, 4006]) {
    it(`${code}: does not reconnect`, async () => {
      reset([(s) => s.close(code, "final")]);
      const t = track({ url: scripted.url, getToken: () => "tok", baseDelayMs: 20 });
      const closed = await t.waitState("closed");
      assert.equal(closed.code, code);
      await sleep(250);
      assert.equal(seen.length, 1);
    });
  }

  for (const code of [1011, 4004, 4005, 4007]) {
    it(`${code}: reconnects after a jittered backoff`, async () => {
      reset([(s) => s.close(code, "retry")]);
      const t = track({ url: scripted.url, getToken: () => "tok", baseDelayMs: 200, random: () => 0.5 });
      const waiting = await t.waitState("waiting");
      assert.equal(waiting.code, code);
      assert.equal(waiting.delayMs, 100, "half of the first ceiling (200 ms)");
      await t.waitState("open", { where: () => seen.length === 2 });
      t.conn.close();
    });
  }

  it("1001 with retry_after_ms waits the hint plus jitter", async () => {
    reset([(s) => s.close(1001, "server shutting down; retry_after_ms=400")]);
    const t = track({ url: scripted.url, getToken: () => "tok", hintJitterMs: 100, random: () => 0.5 });
    const waiting = await t.waitState("waiting");
    assert.equal(waiting.retryAfterMs, 400);
    assert.equal(waiting.delayMs, 450);
    await t.waitState("open", { where: () => seen.length === 2 });
    const gap = seen[1].at - seen[0].at;
    assert.ok(gap >= 440, `reconnected after ${gap} ms`);
    t.conn.close();
  });

  it("1001 without a hint falls back to backoff", async () => {
    reset([(s) => s.close(1001, "server shutting down")]);
    const t = track({ url: scripted.url, getToken: () => "tok", baseDelayMs: 100, random: () => 0.25 });
    const waiting = await t.waitState("waiting");
    assert.equal(waiting.retryAfterMs, undefined);
    assert.equal(waiting.delayMs, 25);
    t.conn.close();
  });

  it("without getToken no token parameter is sent (cookie authentication)", async () => {
    reset([]);
    const t = track({ url: scripted.url });
    await t.waitState("open");
    assert.equal(seen[0].url, "/ws/notifications/?recover=");
    t.conn.close();
  });
});

// Positions as the gateway writes them: 24 lowercase hex digits, compared as strings.
const P = (n) => n.toString(16).padStart(24, "0");
const positioned = (position, rest) => JSON.stringify({ position, ...rest });
const status = (recovered, replayed, position) => JSON.stringify({ type: "recovery", recovered, replayed, position });

describe("recovery (scripted server)", { timeout: 60000 }, () => {
  const scripted = scriptedServer();
  const { seen, reset } = scripted;
  const paths = () => seen.map((connection) => connection.url);
  const recoverParam = (path) => new URL(path, "ws://gateway").searchParams.get("recover");

  it("keeps the greatest position across reconnects; strips it; the status goes to onRecovery only", async () => {
    reset([
      (s) => {
        s.send(status(true, 0, P(0x10)));
        s.send(positioned(P(0x20), { message: "first" }));
        s.send(positioned(P(0x30), { message: { nested: [1, "two"] } }));
        s.send(positioned(P(0x40), { type: "typing", who: "demo2" })); // a passthrough frame
        s.send(positioned("not-a-position", { message: "garbage position" }));
        s.send(positioned(P(0x35), { message: "older position" }));
        s.close(1011, "retry");
      },
      (s) => {
        s.send(positioned(P(0x50), { message: "replayed" }));
        s.send(status(false, 1, P(0x50)));
        s.send(positioned(P(0x60), { message: "live" }));
      },
    ]);
    const passthrough = [];
    const t = track({ url: scripted.url, getToken: () => "tok", baseDelayMs: 20, onFrame: (frame) => passthrough.push(frame) });
    await t.waitMessage("live");
    assert.deepEqual(paths().map(recoverParam), ["", P(0x40)], "recover= first, then the greatest position seen");
    assert.equal(paths()[0], "/ws/notifications/?token=tok&recover=");
    assert.deepEqual(t.messages, ["first", { nested: [1, "two"] }, "garbage position", "older position", "replayed", "live"]);
    assert.deepEqual(
      t.frames.map((frame) => frame.position),
      [P(0x20), P(0x30), "not-a-position", P(0x35), P(0x50), P(0x60)],
      "onMessage's second argument is the frame, with its position",
    );
    assert.deepEqual(passthrough, [{ type: "typing", who: "demo2" }], "the status frame never reaches onFrame");
    assert.deepEqual(
      t.recoveries.map(({ recovered, replayed, position, afterMessages }) => ({ recovered, replayed, position, afterMessages })),
      [
        { recovered: true, replayed: 0, position: P(0x10), afterMessages: 0 },
        { recovered: false, replayed: 1, position: P(0x50), afterMessages: 5 },
      ],
    );
    assert.equal(t.conn.position, P(0x60));
    t.conn.close();
  });

  it("initialPosition is sent on the first attempt; one that is no position is not", async () => {
    reset([(s) => s.send(status(true, 0, P(7)))]);
    const t = track({ url: scripted.url, getToken: () => "tok", initialPosition: P(0xabc) });
    await waitFor(() => t.recoveries.length === 1, { what: "recovery status" });
    assert.equal(recoverParam(paths()[0]), P(0xabc));
    assert.equal(t.conn.position, P(0xabc), "a smaller status position does not move it back");
    t.conn.close();
    reset([]);
    const u = track({ url: scripted.url, getToken: () => "tok", initialPosition: "ABC" });
    await u.waitState("open");
    assert.equal(recoverParam(paths()[0]), "");
    assert.equal(u.conn.position, null);
    u.conn.close();
  });

  it("recover: false sends no recover parameter and hands every frame on as before", async () => {
    reset([
      (s) => {
        s.send(positioned(P(0x20), { message: "m" }));
        s.send(status(true, 0, P(0x20)));
        s.close(1011, "retry");
      },
      () => {},
    ]);
    const passthrough = [];
    const t = track({
      url: scripted.url,
      getToken: () => "tok",
      baseDelayMs: 20,
      recover: false,
      onFrame: (frame) => passthrough.push(frame),
    });
    await waitFor(() => seen.length === 2, { what: "the reconnect" });
    assert.deepEqual(paths(), ["/ws/notifications/?token=tok", "/ws/notifications/?token=tok"]);
    assert.deepEqual(t.messages, ["m"]);
    assert.deepEqual(passthrough, [{ type: "recovery", recovered: true, replayed: 0, position: P(0x20) }]);
    assert.equal(t.recoveries.length, 0);
    assert.equal(t.conn.position, null);
    t.conn.close();
  });
});

describe("helpers", () => {
  it("backoffDelay: full jitter under an exponential, capped ceiling", () => {
    const max = (attempt) => backoffDelay(attempt, { baseDelayMs: 500, maxDelayMs: 30000, random: () => 0.999999 });
    assert.deepEqual([0, 1, 2, 3, 6, 7, 20].map(max), [499, 999, 1999, 3999, 29999, 29999, 29999]);
    assert.equal(backoffDelay(5, { random: () => 0 }), 0);
    for (let i = 0; i < 200; i++) {
      const d = backoffDelay(3);
      assert.ok(d >= 0 && d < 4000);
    }
  });

  it("parseRetryAfter reads the gateway's drain hint", () => {
    assert.equal(parseRetryAfter("server shutting down; retry_after_ms=1234"), 1234);
    assert.equal(parseRetryAfter("retry_after_ms=0"), 0);
    assert.equal(parseRetryAfter("server shutting down"), null);
    assert.equal(parseRetryAfter(""), null);
    assert.equal(parseRetryAfter(undefined), null);
  });

  it("isPosition: 24 lowercase hex digits only", () => {
    assert.equal(isPosition("41da5a63c8e9f8a2b3c1d2e4"), true);
    assert.equal(isPosition("41DA5A63C8E9F8A2B3C1D2E4"), false);
    assert.equal(isPosition("41da5a63c8e9f8a2b3c1d2e"), false);
    assert.equal(isPosition(""), false);
    assert.equal(isPosition(null), false);
  });

  it("closeAdvice follows the README's table", () => {
    assert.equal(closeAdvice(4001), "new_token");
    assert.equal(closeAdvice(1001), "hint");
    assert.equal(closeAdvice(1006), "backoff");
    assert.equal(closeAdvice(4003), "never");
  });
});
