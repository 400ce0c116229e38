// notifications.js keeps one socket open for 5 minutes on tokens that live
// 60 s, against a REAL gateway, redis-server and channels_redis publisher:
// it renews the token in-band ahead of every expiry, so the gateway never
// closes the socket with 4002, and messages keep arriving throughout.
// It takes 5 minutes of wall time: tests/e2e/run runs this file alongside
// the others.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { tokenClaims } from "../../gateway/static/notifications.js";
import { realStack, genToken, sleep } from "./lib/procs.mjs";
import { track } from "./lib/track.mjs";

const LIFETIME_S = 60;
const RUN_MS = 5 * 60 * 1000;
const PUBLISH_EVERY_MS = 20 * 1000;

describe("in-band token refresh against a real gateway", { timeout: RUN_MS + 120000 }, () => {
  const stack = realStack();

  it(`a socket on ${LIFETIME_S} s tokens stays open for 5 minutes, refreshing in-band, and keeps receiving`, async () => {
    const t = track({
      url: stack.gateway.url,
      getToken: () => genToken(301, ["--lifetime", String(LIFETIME_S)]),
    });
    await t.waitState("open");
    const started = Date.now();
    let published = 0;
    while (Date.now() - started < RUN_MS) {
      await sleep(Math.min(PUBLISH_EVERY_MS, RUN_MS - (Date.now() - started)));
      published += 1;
      await stack.pub.publish("user_301", `tick ${published}`);
      await t.waitMessage(`tick ${published}`, { timeoutMs: 5000 });
    }

    assert.deepEqual(
      t.states.map((s) => s.state),
      ["connecting", "open"],
      `no close and no reconnect: ${JSON.stringify(t.states)}`,
    );
    assert.equal(t.opened.length, 1);
    assert.equal(t.messages.length, published);

    const refreshes = t.sent.map((frame) => JSON.parse(frame)).filter((frame) => frame.type === "refresh");
    const lifetimes = Math.floor(RUN_MS / (LIFETIME_S * 1000));
    assert.ok(refreshes.length >= lifetimes, `${refreshes.length} in-band refreshes in 5 minutes`);
    assert.equal(new Set(refreshes.map((frame) => frame.token)).size, refreshes.length, "a new token each time");
    const forRefresh = t.tokenCalls.filter((call) => call.refresh);
    assert.equal(forRefresh.length, refreshes.length);
    assert.ok(forRefresh.every((call) => call.forceRefresh));
    // Each token was replaced well before it ran out: within 70-90% of its
    // 60 s, at least 10 s ahead (the default margin).
    const tokens = [t.opened[0].split("token=")[1], ...refreshes.map((frame) => frame.token)];
    for (let i = 1; i < tokens.length; i++) {
      const previous = tokenClaims(tokens[i - 1]);
      const next = tokenClaims(tokens[i]);
      const lead = previous.exp - next.iat;
      assert.ok(lead >= 9 && lead <= 19, `token ${i} replaced ${lead} s before the previous one expired`);
    }
    console.log(`${refreshes.length} in-band refreshes, ${published} messages, one socket for ${Date.now() - started} ms`);
    t.conn.close();
  });
});
