// The whole story in real headless Chromium: the example ToDo backend
// (Django + a real Celery worker) publishes through channels_redis, the
// gateway relays, the page's notifications.js shows it. Everything runs on
// free loopback ports and is stopped by PID. Run through tests/e2e/run.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { launchChromium } from "./lib/browser.mjs";
import { ARTIFACTS, startRedis, startGateway, stop, sleep } from "./lib/procs.mjs";
import { startBackend } from "./lib/backend.mjs";

// The drain hint's range: each page waits a random 0..2 s (+ up to 1 s of
// client jitter) before reconnecting after the gateway's SIGTERM.
const GATEWAY_EXTRA = { GATEWAY_SERVER_DRAIN_RECONNECT_JITTER: "2s" };

describe("ToDo page in headless Chromium", { timeout: 240000 }, () => {
  let redis;
  let gateway;
  let backend;
  let browser;
  let demo;
  let other;

  before(async () => {
    redis = await startRedis();
    gateway = await startGateway({ redisUrl: redis.url, extra: GATEWAY_EXTRA });
    backend = await startBackend({ redisUrl: redis.url, wsUrl: gateway.url });
    // launch() gives Chromium a fresh, temporary --user-data-dir of its own.
    browser = await launchChromium();
    demo = await browser.newContext({ timezoneId: "UTC", viewport: { width: 1000, height: 900 } });
    other = await browser.newContext({ timezoneId: "UTC" });
  });

  after(async () => {
    if (browser) await browser.close();
    if (backend) {
      await stop(backend.worker);
      await stop(backend.web);
      fs.rmSync(backend.dir, { recursive: true, force: true });
    }
    if (gateway) await stop(gateway.child);
    if (redis) await stop(redis.child);
  });

  async function login(context, username) {
    const page = await context.newPage();
    page.on("pageerror", (error) => console.log(`[${username}] page error: ${error.message}`));
    await page.goto(`${backend.url}/`);
    await page.fill("#id_username", username);
    await page.fill("#id_password", "demo-password");
    await Promise.all([page.waitForURL(`${backend.url}/`), page.click("button[type=submit]")]);
    await waitOpen(page);
    return page;
  }

  const waitOpen = (page, timeout = 15000) =>
    page.waitForSelector('#ws-state[data-state="open"]', { timeout });

  const notification = (page, text, timeout = 10000) =>
    page.locator("#notifications .notification .text", { hasText: text }).first().waitFor({ timeout });

  async function addTask(page, title, dueAt) {
    await page.fill("#id_title", title);
    if (dueAt) await page.fill("#id_due_at", dueAt);
    await page.click("#new-task button[type=submit]");
  }

  let tab1;
  let tab2;
  let otherPage;

  it("log in, create a task, the notification appears on the page", async () => {
    tab1 = await login(demo, "demo");
    assert.equal(await tab1.textContent("#username"), "demo");
    await addTask(tab1, "Buy milk");
    await notification(tab1, 'New task: "Buy milk"');
    const row = tab1.locator("#tasks li", { hasText: "Buy milk" });
    await row.waitFor();
    await row.locator("button", { hasText: "Done" }).click();
    await notification(tab1, 'Task done: "Buy milk"');
  });

  it("two tabs of one user both see it, another user does not", async () => {
    tab2 = await demo.newPage();
    await tab2.goto(`${backend.url}/`);
    await waitOpen(tab2);
    otherPage = await login(other, "demo2");
    await addTask(tab1, "Call the plumber");
    await notification(tab1, 'New task: "Call the plumber"');
    await notification(tab2, 'New task: "Call the plumber"');
    await sleep(1000);
    assert.equal(await otherPage.locator("#notifications .notification").count(), 0);
    // and the other way round
    await addTask(otherPage, "demo2's own task");
    await notification(otherPage, "demo2's own task");
    await sleep(500);
    assert.equal(await tab1.locator("#notifications .notification", { hasText: "demo2" }).count(), 0);
  });

  it("the Celery worker's due-soon reminder arrives", async () => {
    const due = new Date(Date.now() + 10 * 60 * 1000).toISOString().slice(0, 16);
    await addTask(tab1, "Pay the rent", due);
    await notification(tab1, 'New task: "Pay the rent"');
    await notification(tab1, 'You have a task due soon! "Pay the rent"', 15000);
    await notification(tab2, 'You have a task due soon! "Pay the rent"');
  });

  it("gateway SIGTERM and restart on the same port: the page reconnects by itself", async () => {
    const killedAt = Date.now();
    await stop(gateway.child);
    const stoppedAt = Date.now();
    await tab1.waitForSelector('#ws-state:not([data-state="open"])', { timeout: 5000 });
    gateway = await startGateway({
      redisUrl: redis.url,
      port: gateway.port,
      adminPort: gateway.adminPort,
      extra: GATEWAY_EXTRA,
    });
    const readyAt = Date.now();
    await Promise.all([waitOpen(tab1, 30000), waitOpen(tab2, 30000), waitOpen(otherPage, 30000)]);
    const openAt = Date.now();
    await addTask(tab1, "After the restart");
    await notification(tab1, 'New task: "After the restart"');
    await notification(tab2, 'New task: "After the restart"');
    const shownAt = Date.now();
    console.log(
      `reconnect: SIGTERM→exit ${stoppedAt - killedAt} ms, restart→ready ${readyAt - stoppedAt} ms, ` +
        `SIGTERM→all 3 pages open ${openAt - killedAt} ms (ready→open ${openAt - readyAt} ms), ` +
        `SIGTERM→next notification shown ${shownAt - killedAt} ms`,
    );
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    const shot = path.join(ARTIFACTS, "e2e-todo-page.png");
    await tab1.screenshot({ path: shot, fullPage: true });
    await otherPage.screenshot({ path: path.join(ARTIFACTS, "e2e-todo-page-demo2.png"), fullPage: true });
    console.log(`screenshot: ${path.relative(process.cwd(), shot) || shot}`);
    assert.ok(openAt - readyAt < 10000, "pages reconnect within the hint + jitter");
  });

  // Recovery (layer.recovery, on as in scripts/quickstart): Django publishes
  // while the user has no socket at all; the pages get it after reconnecting.
  const restartGateway = () =>
    startGateway({ redisUrl: redis.url, port: gateway.port, adminPort: gateway.adminPort, extra: GATEWAY_EXTRA });
  const recoveryStatus = (page) =>
    page.waitForFunction(() => document.getElementById("ws-state").dataset.recovered, null, { timeout: 40000 });
  const countNotifications = (page, text) =>
    page.locator("#notifications .notification .text", { hasText: text }).count();

  it("a task added while the gateway is down: its notification shows once the page is back", async () => {
    const stoppedAt = Date.now();
    await stop(gateway.child);
    await Promise.all([tab1, tab2].map((page) => page.waitForSelector('#ws-state:not([data-state="open"])')));
    for (const page of [tab1, tab2]) await page.evaluate(() => delete document.getElementById("ws-state").dataset.recovered);
    const title = "Added while the gateway was down";
    await addTask(tab1, title);
    // The row is there once Django has answered, and it publishes before answering.
    await tab1.locator("#tasks li", { hasText: title }).waitFor();
    const publishedAt = Date.now();
    assert.equal(await countNotifications(tab1, title), 0, "nobody was connected to relay it");
    gateway = await restartGateway();
    const readyAt = Date.now();
    await Promise.all([notification(tab1, `New task: "${title}"`, 40000), notification(tab2, `New task: "${title}"`, 40000)]);
    const shownAt = Date.now();
    for (const page of [tab1, tab2]) {
      await recoveryStatus(page);
      const badge = await page.$eval("#ws-state", (el) => ({ ...el.dataset }));
      assert.equal(badge.state, "open");
      assert.equal(badge.recovered, "true");
      assert.ok(Number(badge.replayed) >= 1, `replayed ${badge.replayed}`);
      assert.equal(await page.isHidden("#recovery-note"), true);
    }
    await addTask(tab1, "Live after the recovery");
    await notification(tab1, 'New task: "Live after the recovery"');
    await notification(tab2, 'New task: "Live after the recovery"');
    for (const page of [tab1, tab2]) assert.equal(await countNotifications(page, title), 1, "shown once");
    assert.equal(await countNotifications(otherPage, title), 0, "not to another user");
    console.log(
      `recovery: published ${publishedAt - stoppedAt} ms after SIGTERM, gateway ready ${readyAt - publishedAt} ms ` +
        `later, notification shown ${shownAt - readyAt} ms after ready`,
    );
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    await tab1.screenshot({ path: path.join(ARTIFACTS, "e2e-todo-recovered.png"), fullPage: true });
  });

  it("more missed than the window keeps: the page says so and refetches its task list", async () => {
    await stop(gateway.child);
    await tab1.waitForSelector('#ws-state:not([data-state="open"])');
    for (const page of [tab1, tab2]) await page.evaluate(() => delete document.getElementById("ws-state").dataset.recovered);
    // 101 tasks from the second tab (tab1's list does not show them): past
    // channels_redis' capacity (100), so the last notifications are refused.
    const bulk = 101;
    const created = await tab2.evaluate(async (count) => {
      const csrf = document.querySelector("#new-task [name=csrfmiddlewaretoken]").value;
      let ok = 0;
      for (let i = 1; i <= count; i++) {
        const body = new FormData();
        body.append("csrfmiddlewaretoken", csrf);
        body.append("title", `Bulk ${i}`);
        const response = await fetch("/", { method: "POST", body, headers: { Accept: "application/json" } });
        if (response.status === 201) ok += 1;
      }
      return ok;
    }, bulk);
    assert.equal(created, bulk);
    const last = tab1.locator("#tasks li .title", { hasText: new RegExp(`^Bulk ${bulk}$`) });
    assert.equal(await last.count(), 0, "tab1's list does not have them yet");
    gateway = await restartGateway();
    await recoveryStatus(tab1);
    assert.equal(await tab1.$eval("#ws-state", (el) => el.dataset.recovered), "false");
    await tab1.waitForSelector("#recovery-note:not([hidden])", { timeout: 10000 });
    assert.match(await tab1.textContent("#recovery-note"), /may be missing; the task list was refreshed/);
    await last.waitFor({ timeout: 10000 });
    await notification(tab1, 'New task: "Bulk 1"');
    assert.equal(
      await countNotifications(tab1, `New task: "Bulk ${bulk}"`),
      0,
      "its notification was refused while the key was full: the refetched list shows the task anyway",
    );
    await tab1.locator("#tasks li", { hasText: "Buy milk" }).waitFor(); // the list is whole, not just the new ones
    await tab1.screenshot({ path: path.join(ARTIFACTS, "e2e-todo-refetched.png"), fullPage: true });
  });
});
