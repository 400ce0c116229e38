// The Django package (django-gateway/) in headless Chromium: the example
// backend's /live/ page is nothing but `{% gateway_client %}`, the package's
// template tag. In token mode the client asks the package's token view for
// each connect; in session mode it sends no token and a second gateway
// (auth.session_url) asks the package's session view with the page's session
// cookie. Django publishes with the package's notify() and disconnect().
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import { launchChromium } from "./lib/browser.mjs";
import { freePort, startRedis, startGateway, stop } from "./lib/procs.mjs";
import { startBackend } from "./lib/backend.mjs";


describe("django-gateway: template tag, token view and session view in headless Chromium", { timeout: 180000 }, () => {
  let redis;
  let tokenGateway;
  let sessionGateway;
  let backend;
  let browser;
  let context;

  before(async () => {
    redis = await startRedis();
    tokenGateway = await startGateway({ redisUrl: redis.url });
    const sessionPort = await freePort();
    const sessionWsUrl = `ws://127.0.0.1:${sessionPort}/ws/notifications/`;
    backend = await startBackend({
      redisUrl: redis.url,
      wsUrl: tokenGateway.url,
      extraEnv: { GATEWAY_SESSION_WS_URL: sessionWsUrl },
      celery: false,
      name: "django-package-backend",
    });
    sessionGateway = await startGateway({
      redisUrl: redis.url,
      port: sessionPort,
      extra: {
        GATEWAY_AUTH_SESSION_URL: `${backend.url}/gateway/session/`,
        // One value, as people type it: a list of one.
        GATEWAY_AUTH_ALLOWED_ORIGINS: backend.url,
      },
    });
    browser = await launchChromium();
    context = await browser.newContext();
  });

  after(async () => {
    if (browser) await browser.close();
    if (backend) {
      await stop(backend.web);
      fs.rmSync(backend.dir, { recursive: true, force: true });
    }
    if (sessionGateway) await stop(sessionGateway.child);
    if (tokenGateway) await stop(tokenGateway.child);
    if (redis) await stop(redis.child);
  });

  // Django's side, through the package: python manage.py shell -c '...'.
  const django = (code) =>
    backend.manage([
      "shell",
      "-c",
      `from django.contrib.auth import get_user_model\nimport django_gateway\n` +
        `demo = get_user_model().objects.get(username="demo")\n${code}`,
    ]);

  async function openLive(mode) {
    const page = await context.newPage();
    page.on("pageerror", (error) => console.log(`[${mode}] page error: ${error.message}`));
    const sockets = [];
    const tokenRequests = [];
    page.on("websocket", (ws) => sockets.push(ws.url()));
    page.on("request", (request) => {
      if (request.url().includes("/gateway/token/")) tokenRequests.push(request.url());
    });
    await page.goto(`${backend.url}/live/?mode=${mode}`);
    if (page.url().includes("/accounts/login/")) {
      await page.fill("#id_username", "demo");
      await page.fill("#id_password", "demo-password");
      await Promise.all([page.waitForURL(/\/live\//), page.click("button[type=submit]")]);
    }
    await page.waitForSelector('#live-state[data-state="open"]', { timeout: 15000 });
    return { page, sockets, tokenRequests };
  }

  const shows = (page, text) =>
    page.locator("#live .notification", { hasText: text }).first().waitFor({ timeout: 10000 });

  it("token mode: the tag's client gets its token from the package's token view", async () => {
    const { page, sockets, tokenRequests } = await openLive("token");
    assert.ok(tokenRequests.length >= 1, "the client asked /gateway/token/");
    assert.ok(sockets.length >= 1 && sockets.every((url) => url.startsWith(tokenGateway.url)), sockets.join());
    assert.match(sockets[0], /[?&]token=/);
    django('django_gateway.notify(demo, "hello, token page")');
    await shows(page, "hello, token page");
    await page.close();
  });

  it("session mode: no token, the gateway asks the package's session view", async () => {
    const { page, sockets, tokenRequests } = await openLive("session");
    assert.equal(tokenRequests.length, 0, "no token requested");
    assert.ok(sockets.length >= 1 && sockets.every((url) => url.startsWith(sessionGateway.url)), sockets.join());
    assert.doesNotMatch(sockets[0], /[?&]token=/);
    django('django_gateway.notify(demo.pk, "hello, session page")');
    await shows(page, "hello, session page");
    // disconnect() closes it for good (4006: the client does not reconnect).
    django('django_gateway.disconnect(demo, reason="logged out elsewhere")');
    await page.waitForSelector('#live-state[data-state="closed"]', { timeout: 10000 });
    const online = django(
      "import time\ndeadline = time.monotonic() + 10\n" +
        "while django_gateway.is_online(demo) and time.monotonic() < deadline:\n    time.sleep(0.05)\n" +
        "print(django_gateway.is_online(demo))",
    )
      .trim()
      .split("\n")
      .pop(); // the last line: the shell may print a banner first
    assert.equal(online, "False");
    await page.close();
  });

  it("a page without a session gets no socket from the session gateway", async () => {
    const anonymous = await browser.newContext();
    const page = await anonymous.newPage();
    await page.goto(`${backend.url}/`);
    // Straight at the gateway from a page of the allowed origin, no cookie: refused.
    const code = await page.evaluate(
      (url) =>
        new Promise((resolve) => {
          const ws = new WebSocket(url);
          ws.onopen = () => resolve("open");
          ws.onclose = (event) => resolve(event.code);
        }),
      sessionGateway.url,
    );
    assert.equal(code, 1006, "the handshake was refused (401 from the session view)");
    await anonymous.close();
  });
});
