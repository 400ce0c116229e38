// The client's in-band token refresh on its own: a small `ws` server plays
// the gateway's part (answering `{"type": "refresh"}` or not), with tokens
// of a few seconds so the schedule is quick to watch. Plus the pure helpers
// (payload decoding, time left, the jittered delay). The same refresh
// against a real gateway for 5 minutes is client-lifetime.test.mjs.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { WebSocketServer } from "ws";
import {
  tokenClaims,
  tokenTimeLeft,
  refreshDelay,
  MIN_REFRESH_DELAY_MS,
} from "../../gateway/static/notifications.js";
import { freePort, sleep, waitFor } from "./lib/procs.mjs";
import { track } from "./lib/track.mjs";

/** An unsigned JWT-shaped token: the client only decodes the payload. */
function fakeJwt(claims) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  return `${part({ alg: "HS256", typ: "JWT" })}.${part(claims)}.not-a-signature`;
}

/** A token minted now that lives `seconds`, numbered so each one differs. */
let minted = 0;
function tokenFor(seconds) {
  const iat = Math.floor(Date.now() / 1000);
  return fakeJwt({ user_id: 1, iat, exp: iat + seconds, jti: String(++minted) });
}

describe("in-band refresh (scripted server)", { timeout: 60000 }, () => {
  let server;
  let url;
  let answer = true; // whether the server answers refresh frames
  const connections = [];
  const refreshes = []; // { token, at } of every refresh frame the server got

  before(async () => {
    const port = await freePort();
    server = new WebSocketServer({ port, host: "127.0.0.1" });
    server.on("connection", (socket) => {
      connections.push({ socket, at: Date.now() });
      socket.on("message", (data) => {
        const frame = JSON.parse(String(data));
        if (frame.type !== "refresh") return;
        refreshes.push({ token: frame.token, at: Date.now() });
        if (answer) {
          socket.send(JSON.stringify({ type: "refreshed", expires_at: tokenClaims(frame.token).exp }));
        }
      });
    });
    await new Promise((resolve) => server.once("listening", resolve));
    url = `ws://127.0.0.1:${port}/ws/notifications/`;
  });

  after(() => new Promise((resolve) => server.close(resolve)));

  const reset = ({ answers = true } = {}) => {
    answer = answers;
    connections.length = 0;
    refreshes.length = 0;
  };

  it("refreshes ahead of expiry with a forced new token, then plans the next from the answer", async () => {
    reset();
    const t = track({ url, getToken: () => tokenFor(3), refreshMarginMs: 500, random: () => 0.5 });
    await t.waitState("open");
    await waitFor(() => refreshes.length >= 2, { timeoutMs: 10000, what: "two refreshes" });
    const first = tokenClaims(t.opened[0].split("token=")[1]);
    assert.ok(
      refreshes[0].at < first.exp * 1000 - 400,
      "the first refresh comes before the margin ahead of expiry",
    );
    // From a fresh 3 s token: 0.7 * 3000 + (2500 - 2100) * 0.5 = 2300 ms.
    const gap = refreshes[1].at - refreshes[0].at;
    assert.ok(gap >= 2250 && gap < 2800, `second refresh ${gap} ms after the first`);
    const forRefresh = t.tokenCalls.filter((call) => call.refresh);
    assert.ok(forRefresh.length >= 2);
    assert.ok(forRefresh.every((call) => call.forceRefresh === true));
    assert.notEqual(refreshes[0].token, refreshes[1].token);
    assert.equal(t.opened.length, 1, "no reconnect");
    assert.ok(!t.states.some((s) => s.state === "waiting"));
    t.conn.close();
  });

  it("close() clears the refresh timer: no token asked for and nothing sent afterwards", async () => {
    reset();
    const t = track({ url, getToken: () => tokenFor(2), refreshMarginMs: 100 });
    await t.waitState("open");
    t.conn.close();
    const calls = t.tokenCalls.length;
    const sent = t.sent.length;
    await sleep(2500);
    assert.equal(t.tokenCalls.length, calls);
    assert.equal(t.sent.length, sent);
    assert.equal(refreshes.length, 0);
  });

  it("a close by the server clears it too (4006: final)", async () => {
    reset();
    const t = track({ url, getToken: () => tokenFor(2), refreshMarginMs: 100 });
    await t.waitState("open");
    connections[0].socket.close(4006, "disconnected by backend");
    await t.waitState("closed");
    await sleep(2500);
    assert.equal(t.tokenCalls.filter((call) => call.refresh).length, 0);
    assert.equal(refreshes.length, 0);
  });

  it("an unanswered refresh is tried again, with a new token, before expiry", async () => {
    reset({ answers: false });
    // Refresh at 70% of 9-10 s; 3 s are left for the tries after it.
    const t = track({
      url,
      getToken: () => tokenFor(10),
      refreshMarginMs: 500,
      refreshTimeoutMs: 300,
      random: () => 0,
    });
    await t.waitState("open");
    const exp = tokenClaims(t.opened[0].split("token=")[1]).exp;
    await waitFor(() => refreshes.length >= 2, { timeoutMs: 11000, what: "a second try" });
    assert.ok(refreshes[1].at < exp * 1000, "retried before the token ran out");
    assert.notEqual(refreshes[0].token, refreshes[1].token);
    t.conn.close();
  });

  it("getToken failing during a refresh keeps the socket and tries again", async () => {
    reset();
    let calls = 0;
    const t = track({
      url,
      getToken: ({ refresh }) => {
        calls += 1;
        if (refresh && calls === 2) throw new Error("token endpoint down");
        return tokenFor(10);
      },
      refreshMarginMs: 500,
      random: () => 0,
    });
    await t.waitState("open");
    await waitFor(() => refreshes.length >= 1, { timeoutMs: 11000, what: "a refresh after the failure" });
    assert.ok(t.tokenCalls.filter((call) => call.refresh).length >= 2);
    assert.equal(t.opened.length, 1);
    t.conn.close();
  });

  it("no token during a refresh keeps the socket; no token after the gateway's 4002 stops for good", async () => {
    reset();
    const errors = [];
    const t = track({
      url,
      getToken: ({ refresh, forceRefresh }) => (refresh || forceRefresh ? null : tokenFor(10)),
      refreshMarginMs: 500,
      random: () => 0,
      onError: (error) => errors.push(String(error)),
    });
    await t.waitState("open");
    await waitFor(() => t.tokenCalls.filter((call) => call.refresh).length >= 2, {
      timeoutMs: 11000,
      what: "the refresh tried again after no token",
    });
    assert.ok(!t.states.some((s) => s.state === "closed"), "the socket outlived the empty answers");
    assert.ok(errors.some((e) => e.includes("no token")), errors.join("; "));
    // The token ran out: the gateway closes with 4002, and no new token now
    // means the user is gone.
    connections[0].socket.close(4002, "token expired");
    const closed = await t.waitState("closed");
    assert.equal(closed.final, true);
    assert.equal(closed.reason, "no token");
    await sleep(300);
    assert.equal(connections.length, 1);
  });

  it("refreshInBand: false sends no refresh; neither does a token without exp", async () => {
    reset();
    const off = track({ url, getToken: () => tokenFor(2), refreshMarginMs: 100, refreshInBand: false });
    const opaque = track({ url, getToken: () => "opaque-token" });
    await off.waitState("open");
    await opaque.waitState("open");
    await sleep(2000);
    assert.equal(refreshes.length, 0);
    assert.equal(off.tokenCalls.length + opaque.tokenCalls.length, 2);
    off.conn.close();
    opaque.conn.close();
  });
});

describe("refresh helpers", () => {
  it("tokenClaims decodes a base64url payload, and nothing else", () => {
    const token = fakeJwt({ user_id: "é-42", exp: 1700000000, groups: ["a"] });
    assert.deepEqual(tokenClaims(token), { user_id: "é-42", exp: 1700000000, groups: ["a"] });
    for (const bad of [null, "", "abc", "a.!!!.c", `a.${Buffer.from("[1]").toString("base64url")}.c`]) {
      assert.equal(tokenClaims(bad), null, String(bad));
    }
  });

  it("tokenTimeLeft: exp against the clock, capped by the lifetime; a fresh token has all of it", () => {
    const now = 1_000_000_000_000;
    const iat = now / 1000 - 10;
    const token = fakeJwt({ iat, exp: iat + 60 });
    assert.equal(tokenTimeLeft(token, { now }), 50000);
    assert.equal(tokenTimeLeft(token, { now, fresh: true }), 60000);
    // This clock is ahead of the gateway's: the token looks expired but was taken.
    assert.equal(tokenTimeLeft(token, { now: now + 120000 }), 60000);
    // ...or behind it: never more than the lifetime.
    assert.equal(tokenTimeLeft(token, { now: now - 120000 }), 60000);
    assert.equal(tokenTimeLeft(fakeJwt({ exp: now / 1000 + 30 }), { now }), 30000);
    assert.equal(tokenTimeLeft(fakeJwt({ exp: now / 1000 - 1 }), { now }), null);
    assert.equal(tokenTimeLeft(fakeJwt({ user_id: 1 }), { now }), null);
    assert.equal(tokenTimeLeft("opaque", { now, expiresAt: now / 1000 + 20 }), 20000);
  });

  it("refreshDelay: jittered between 70% and 90% of the time left, never inside the margin", () => {
    const bounds = (timeLeft, options = {}) => [
      refreshDelay(timeLeft, { ...options, random: () => 0 }),
      refreshDelay(timeLeft, { ...options, random: () => 0.999999 }),
    ];
    assert.deepEqual(bounds(300000), [210000, 269999]);
    // 60 s tokens: 90% would be 6 s before expiry; the 10 s margin wins.
    assert.deepEqual(bounds(60000), [42000, 49999]);
    assert.deepEqual(bounds(60000, { refreshMarginMs: 0 }), [42000, 53999]);
    assert.deepEqual(bounds(3000, { refreshMarginMs: 500 }), [2100, 2499]);
    // A lifetime shorter than the margin: the window's start, no sooner.
    assert.deepEqual(bounds(5000), [3500, 3500]);
    assert.deepEqual(bounds(100), [MIN_REFRESH_DELAY_MS, MIN_REFRESH_DELAY_MS]);
    for (let i = 0; i < 1000; i++) {
      const delay = refreshDelay(60000);
      assert.ok(delay >= 42000 && delay < 50000, `${delay}`);
    }
    const spread = new Set(Array.from({ length: 100 }, () => Math.floor(refreshDelay(60000) / 1000)));
    assert.ok(spread.size >= 5, "sockets opened together do not refresh together");
  });
});
