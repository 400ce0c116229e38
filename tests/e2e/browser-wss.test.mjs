// The gateway's own TLS stream (edge::tls) against a real browser: headless
// Chromium opens `wss://` to a gateway serving a certificate made here (the
// browser is told to accept it), and events published through the real
// channels_redis arrive: one, a 200 KiB one spread over many TLS records, and
// a burst of 50 in order. The socket is the browser's own WebSocket, so
// this is Chromium's TLS and WebSocket stack against the gateway's.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { launchChromium } from "./lib/browser.mjs";
import { startRedis, startGateway, genToken, publisher, stop } from "./lib/procs.mjs";


/** A self-signed ECDSA P-256 certificate for 127.0.0.1, made with openssl. */
function certificate(dir) {
  const cert = path.join(dir, "cert.pem");
  const key = path.join(dir, "key.pem");
  execFileSync("openssl", [
    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
    "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
    "-addext", "subjectAltName=IP:127.0.0.1",
  ], { stdio: "ignore" });
  return { cert, key };
}

describe("wss: headless Chromium against the gateway's TLS stream", { timeout: 120000 }, () => {
  let dir;
  let redis;
  let gateway;
  let pub;
  let browser;

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "gateway-wss-"));
    const { cert, key } = certificate(dir);
    redis = await startRedis();
    gateway = await startGateway({
      redisUrl: redis.url,
      extra: { GATEWAY_SERVER_TLS_CERT_FILE: cert, GATEWAY_SERVER_TLS_KEY_FILE: key },
    });
    pub = await publisher(redis.url);
    // The certificate is made for this test, by no CA the browser knows.
    browser = await launchChromium(["--ignore-certificate-errors"]);
  });

  after(async () => {
    if (browser) await browser.close();
    if (pub) await pub.stop();
    if (gateway) await stop(gateway.child);
    if (redis) await stop(redis.child);
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it("events reach the browser over wss: one, one of 200 KiB, and 50 in order", async () => {
    const page = await browser.newPage();
    const url = `wss://127.0.0.1:${gateway.port}/ws/notifications/?token=${genToken(201)}`;
    const opened = await page.evaluate(
      (target) =>
        new Promise((resolve) => {
          window.frames_ = [];
          const ws = new WebSocket(target);
          window.ws_ = ws;
          ws.onmessage = (event) => window.frames_.push(event.data);
          ws.onopen = () => resolve("open");
          ws.onclose = (event) => resolve(`closed ${event.code}`);
        }),
      url,
    );
    assert.equal(opened, "open");

    const big = "x".repeat(200 * 1024);
    await pub.publish("user_201", "over wss");
    await pub.publish("user_201", big);
    for (let i = 0; i < 50; i++) await pub.publish("user_201", `burst ${i}`);
    await page.waitForFunction(() => window.frames_.length >= 52, null, { timeout: 20000 });
    const frames = await page.evaluate(() => window.frames_);
    assert.equal(frames[0], JSON.stringify({ message: "over wss" }).replace(":", ": "));
    assert.equal(JSON.parse(frames[1]).message, big);
    assert.deepEqual(
      frames.slice(2).map((frame) => JSON.parse(frame).message),
      Array.from({ length: 50 }, (_, i) => `burst ${i}`),
    );
    const state = await page.evaluate(() => window.ws_.readyState);
    assert.equal(state, 1, "still open");
    await page.close();
  });
});
