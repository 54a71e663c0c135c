// The inspector page of `intercom-webhooks serve`, in headless Chromium (Debian's `chromium`) driven by
// Playwright. `serve` runs as a process on a temporary database; deliveries are signed and POSTed like
// Intercom's; a forward target on 127.0.0.1 fails on purpose to make a dead letter.
//
// Run by scripts/test after `cargo test` (which builds the binary). INTERCOM_WEBHOOKS_BIN and CHROMIUM
// override where the binary and the browser are.

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const BIN = process.env.INTERCOM_WEBHOOKS_BIN || join(ROOT, "target", "debug", "intercom-webhooks");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const FIXTURES = join(ROOT, "events", "notifications");
const SECRET = "browser-test-client-secret";
const TOKEN = "inspector-token-0123456789";
// The flags a headless Chromium needs on a machine without a display or outside network.
const CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];
// The forward target gets this topic; it answers 400 (a permanent failure) until told otherwise.
const FORWARDED_TOPIC = "ticket.created";
// How long a delivery may take to appear on the page.
const LISTED_WITHIN_MS = 2000;

const sign = (body) => "sha1=" + createHmac("sha1", SECRET).update(body).digest("hex");

function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
    server.on("error", reject);
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** `serve` on 127.0.0.1 with a fresh database; `options` and `env` are added. */
async function startServe(options = [], env = {}) {
  const dir = mkdtempSync(join(tmpdir(), "inspector-"));
  const port = await freePort();
  const child = spawn(BIN, ["serve", "--listen", `127.0.0.1:${port}`, "--db", join(dir, "serve.db"),
    "--log-format", "json", "--visibility-timeout", "5", ...options], {
    env: { ...process.env, INTERCOM_CLIENT_SECRET: SECRET, NOTIFY_WEBHOOK_URL: "", ...env },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (chunk) => { stderr += chunk; });
  const base = `http://127.0.0.1:${port}`;
  for (let i = 0; ; i++) {
    try {
      if ((await fetch(`${base}/healthz`)).ok) break;
    } catch (_) { /* not up yet */ }
    if (i > 200 || child.exitCode != null) throw new Error(`serve did not start:\n${stderr}`);
    await sleep(50);
  }
  return {
    base,
    stderr: () => stderr,
    async stop() {
      child.kill("SIGTERM");
      await new Promise((resolve) => child.exitCode != null ? resolve() : child.on("exit", resolve));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

async function deliver(base, body) {
  const response = await fetch(`${base}/webhooks/intercom`, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-Hub-Signature": sign(body) },
    body,
  });
  return response;
}

function fixture(name) {
  return readFileSync(join(FIXTURES, name));
}

async function launch() {
  return chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
}

/** A page that fails the test on any script error or CSP violation. */
async function openPage(browser, url, contextOptions = {}) {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 }, ...contextOptions });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (error) => problems.push(String(error)));
  page.on("console", (message) => {
    if (message.type() === "error" && /Content Security Policy|Refused/.test(message.text())) {
      problems.push(message.text());
    }
  });
  const response = await page.goto(url);
  return { page, problems, response, context };
}

const row = (page, notificationId) =>
  page.locator("#deliveries tbody tr", { has: page.getByText(notificationId, { exact: true }) });

describe("the inspector page", () => {
  let serve;
  let browser;
  let page;
  let problems;
  let target;
  let targetAnswers = 400;
  const forwarded = [];

  before(async () => {
    target = createServer((request, response) => {
      let body = "";
      request.on("data", (chunk) => { body += chunk; });
      request.on("end", () => {
        forwarded.push({ status: targetAnswers, body });
        // A slow endpoint for one notification: its outcome comes well after its delivery was listed.
        const delay = body.includes("notif_slow") ? 1500 : 0;
        setTimeout(() => {
          response.writeHead(targetAnswers, { "Content-Type": "text/plain" });
          response.end(targetAnswers === 200 ? "ok" : "bad request");
        }, delay);
      });
    });
    await new Promise((resolve) => target.listen(0, "127.0.0.1", resolve));
    serve = await startServe([], {
      FORWARD_1_URL: `http://127.0.0.1:${target.address().port}/hook`,
      FORWARD_1_SECRET: "forward-secret",
      FORWARD_1_TOPICS: FORWARDED_TOPIC,
    });
    browser = await launch();
    ({ page, problems } = await openPage(browser, serve.base + "/"));
    await page.locator("#live.on").waitFor({ timeout: 5000 });
  });

  after(async () => {
    await browser?.close();
    await serve?.stop();
    target?.close();
  });

  it("is served at / with a policy that forbids inline script, and its URL is printed", async () => {
    const response = await fetch(serve.base + "/");
    assert.equal(response.status, 200);
    const policy = response.headers.get("content-security-policy");
    assert.match(policy, /script-src 'self'/);
    assert.doesNotMatch(policy, /unsafe-inline|unsafe-eval/);
    assert.match(serve.stderr(), new RegExp(`inspector: +${serve.base.replace(/[.]/g, "\\.")}/`));
  });

  it("lists every fixture within 2 s of its delivery", async () => {
    const names = readdirSync(FIXTURES).filter((n) => n.endsWith(".json")).sort();
    assert.ok(names.length >= 10, `fixtures: ${names}`);
    for (const name of names) {
      const body = fixture(name);
      const json = JSON.parse(body);
      const sent = Date.now();
      const answer = await deliver(serve.base, body);
      assert.equal(answer.status, 200, name);
      const listed = json.id
        ? row(page, json.id)
        : page.locator("#deliveries tbody tr", { hasText: json.topic }).first();
      await listed.waitFor({ timeout: LISTED_WITHIN_MS });
      assert.ok(Date.now() - sent <= LISTED_WITHIN_MS + 100, `${name} listed after ${Date.now() - sent} ms`);
    }
    // Every notification ends with what the worker made of it, and the ping is listed as such.
    await page.waitForFunction(() => !document.querySelector('#deliveries tbody tr[data-outcome="queued"]'),
      null, { timeout: 10_000 });
    const outcomes = await page.locator("#deliveries tbody tr").evaluateAll((rows) => rows.map((r) => r.dataset.outcome));
    assert.ok(outcomes.includes("ping"), outcomes.join());
    assert.ok(outcomes.filter((o) => o === "processed").length >= 5, outcomes.join());
  });

  it("shows the selected delivery's body as received, its headers and its summary", async () => {
    const body = fixture("conversation_user_created.json");
    const { id } = JSON.parse(body);
    await row(page, id).click();
    await page.locator("#detail").waitFor();
    await assert.doesNotReject(page.locator("#detail-title", { hasText: "conversation.user.created" }).waitFor({ timeout: 2000 }));
    // The tree: collapsible, with the notification's fields.
    const tree = page.locator("#detail-body");
    assert.ok(await tree.locator("details").count() > 3);
    assert.match(await tree.innerText(), /"notification_event"/);
    // The raw view holds the bytes as received.
    await page.locator("#toggle-raw").click();
    assert.equal(await page.locator("#detail-raw").textContent(), body.toString("utf8"));
    await page.locator("#toggle-raw").click();
    const headers = await page.locator("#detail-headers").innerText();
    assert.match(headers, /x-hub-signature/);
    assert.match(headers, new RegExp(sign(body)));
    assert.match(await page.locator("#detail-summary").innerText(), /^conversation\.user\.created: /);
  });

  it("replays a delivery with a fresh id into a new processed row, and as a duplicate", async () => {
    const { id } = JSON.parse(fixture("contact_user_created.json"));
    await row(page, id).click();
    await page.locator("#detail-title", { hasText: "contact.user.created" }).waitFor();
    const replays = page.locator("#deliveries tbody tr", { hasText: "replay" });
    const before = await replays.count();
    await page.locator("#replay-fresh").click();
    const fresh = page.locator('#deliveries tbody tr[data-outcome="processed"]', { hasText: "notif_replay_" });
    await fresh.first().waitFor({ timeout: 5000 });
    assert.equal(await replays.count(), before + 1);
    // The same notification again: the worker finds it a duplicate.
    await row(page, id).first().click();
    await page.locator("#replay-same").click();
    const duplicate = page.locator('#deliveries tbody tr[data-outcome="duplicate"]', { has: page.getByText(id, { exact: true }) });
    await duplicate.first().waitFor({ timeout: 5000 });
    assert.equal(await replays.count(), before + 2);
  });

  it("shows a dead letter, and redrive empties the view", async () => {
    const { id } = JSON.parse(fixture("ticket_created.json"));
    // The forward target answered 400 to the ticket: a permanent failure, dead-lettered.
    await page.locator('#deliveries tbody tr[data-outcome="dead_lettered"]', { has: page.getByText(id, { exact: true }) })
      .waitFor({ timeout: 5000 });
    assert.ok(forwarded.some((f) => f.status === 400));
    await page.locator("#tab-dead").click();
    const letters = page.locator("#dead-letters tbody tr");
    await letters.first().waitFor({ timeout: 3000 });
    assert.equal(await letters.count(), 1);
    assert.match(await letters.first().innerText(), /forward/);
    assert.match(await page.locator("#dead-count").innerText(), /^1$/);

    // The endpoint is mended; redrive.
    targetAnswers = 200;
    await page.locator("#redrive").click();
    await page.locator("#dead-empty").waitFor({ state: "visible", timeout: 3000 });
    assert.equal(await letters.count(), 0);
    await page.waitForFunction(() => document.getElementById("dead-count").textContent === "0", null, { timeout: 5000 });
    // The redriven notification is processed and its post arrives.
    await page.locator("#tab-deliveries").click();
    await page.locator('#deliveries tbody tr[data-outcome="processed"]', { has: page.getByText(id, { exact: true }) })
      .first().waitFor({ timeout: 10_000 });
    assert.ok(forwarded.some((f) => f.status === 200 && f.body.includes(id)));
  });

  it("updates a delivery's outcome when it comes later, in the list and in the open detail", async () => {
    const notification = JSON.parse(fixture("ticket_created.json"));
    notification.id = "notif_slow";
    const body = Buffer.from(JSON.stringify(notification));
    assert.equal((await deliver(serve.base, body)).status, 200);
    const queued = page.locator('#deliveries tbody tr[data-outcome="queued"]', { has: page.getByText("notif_slow", { exact: true }) });
    await queued.waitFor({ timeout: LISTED_WITHIN_MS });
    await queued.click();
    await page.locator("#detail-facts", { hasText: "queued" }).waitFor({ timeout: 2000 });
    // No other delivery arrives meanwhile: the change of outcome alone updates the page.
    await page.locator('#deliveries tbody tr[data-outcome="processed"]', { has: page.getByText("notif_slow", { exact: true }) })
      .waitFor({ timeout: 5000 });
    await page.locator("#detail-facts", { hasText: "processed" }).waitFor({ timeout: 2000 });
    assert.match(await page.locator("#detail-facts").innerText(), /forward/);
  });

  it("renders markup from a payload as text", async () => {
    const markup = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script><b>bold</b>';
    const notification = JSON.parse(fixture("contact_user_created.json"));
    notification.id = "notif_markup";
    notification.data.item.name = markup;
    notification.data.item.email = `"><svg onload="window.__xss=3">@example.com`;
    notification.data.item.id = "contact-with-markup";
    const body = Buffer.from(JSON.stringify(notification));
    assert.equal((await deliver(serve.base, body)).status, 200);
    await page.locator("#filter-text").fill("window.__xss");
    await row(page, "notif_markup").waitFor({ timeout: LISTED_WITHIN_MS });
    assert.equal(await page.locator("#deliveries tbody tr").count(), 1, "the text filter matches the body");
    await row(page, "notif_markup").click();
    await page.locator("#detail-title", { hasText: "#" }).waitFor();
    await page.waitForFunction(() => document.getElementById("detail-summary").textContent.includes("<img"));
    assert.match(await page.locator("#detail-summary").innerText(), /<img src=x onerror="window.__xss=1"><script>/);
    // The tree keeps deep levels collapsed: their text is there all the same.
    assert.match(await page.locator("#detail-body").textContent(), /<b>bold<\/b>/);
    assert.equal(await page.locator("#detail img, #detail script, #detail b, #detail svg").count(), 0);
    assert.equal(await page.evaluate(() => window.__xss), undefined);
    await page.locator("#filter-text").fill("");
    assert.deepEqual(problems, []);
  });

  it("filters by topic pattern and outcome", async () => {
    await page.locator("#filter-topic").fill("conversation.*");
    await page.waitForFunction(() => {
      const cells = [...document.querySelectorAll("#deliveries tbody tr td:nth-child(2)")];
      return cells.length >= 4 && cells.every((cell) => cell.textContent.startsWith("conversation."));
    }, null, { timeout: 3000 });
    const topics = await page.locator("#deliveries tbody tr td:nth-child(2)").allInnerTexts();
    assert.ok(topics.length >= 4, topics.join());
    await page.locator("#filter-topic").fill("");
    await page.locator("#filter-outcome").selectOption("ping");
    await page.waitForFunction(() => document.querySelector("#deliveries tbody tr")
      && !document.querySelector('#deliveries tbody tr:not([data-outcome="ping"])'), null, { timeout: 3000 });
    await page.locator("#filter-outcome").selectOption("");
  });

  it("lists a rejected request with its reason and without its body", async () => {
    const answer = await fetch(`${serve.base}/webhooks/intercom`, {
      method: "POST", headers: { "X-Hub-Signature": "sha1=" + "0".repeat(40) }, body: '{"forged":"<i>x</i>"}',
    });
    assert.equal(answer.status, 401);
    const rejected = page.locator('#deliveries tbody tr[data-outcome="rejected"]').first();
    await rejected.waitFor({ timeout: LISTED_WITHIN_MS });
    assert.match(await rejected.innerText(), /signature_mismatch/);
    await rejected.click();
    await page.locator("#detail-title", { hasText: "request" }).waitFor();
    assert.match(await page.locator("#detail-body").innerText(), /not kept/);
    assert.ok(await page.locator("#replay-fresh").isDisabled());
  });

  it("refuses requests that came through a proxy or a tunnel, or name another host", async () => {
    for (const headers of [{ "X-Forwarded-For": "203.0.113.7" }, { Forwarded: "for=203.0.113.7" }]) {
      const answer = await fetch(`${serve.base}/inspector/api/deliveries`, { headers });
      assert.equal(answer.status, 403);
      assert.equal((await answer.json()).error, "inspector_not_local");
    }
    const { page: proxied, response, context } = await openPage(browser, serve.base + "/",
      { extraHTTPHeaders: { "X-Forwarded-For": "203.0.113.7" } });
    assert.equal(response.status(), 403);
    assert.equal(await proxied.locator("#deliveries").count(), 0);
    await context.close();
    // An action from another site's page: no action header, or a foreign Origin.
    const forged = await fetch(`${serve.base}/inspector/api/dead-letters/redrive`, { method: "POST" });
    assert.equal(forged.status, 403);
    // The webhook itself still answers through a proxy.
    const body = fixture("ping.json");
    const through = await fetch(`${serve.base}/webhooks/intercom`, {
      method: "POST", headers: { "X-Hub-Signature": sign(body), "X-Forwarded-For": "203.0.113.7" }, body,
    });
    assert.equal(through.status, 200);
  });
});

describe("the inspector with a token", () => {
  let serve;
  let browser;

  before(async () => {
    serve = await startServe([], { INSPECTOR_TOKEN: TOKEN });
    browser = await launch();
  });

  after(async () => {
    await browser?.close();
    await serve?.stop();
  });

  it("refuses every request without the token, and opens with it", async () => {
    for (const path of ["/", "/inspector/app.js", "/inspector/api/deliveries", "/inspector/api/events"]) {
      const answer = await fetch(serve.base + path);
      assert.equal(answer.status, 401, path);
      assert.equal((await answer.json()).error, "inspector_token_required", path);
    }
    const wrong = await fetch(serve.base + "/inspector/api/deliveries", { headers: { Authorization: "Bearer nope" } });
    assert.equal(wrong.status, 401);
    const right = await fetch(serve.base + "/inspector/api/deliveries", { headers: { Authorization: `Bearer ${TOKEN}` } });
    assert.equal(right.status, 200);
    // Through a proxy, the token is what counts.
    const proxied = await fetch(serve.base + "/inspector/api/deliveries",
      { headers: { Authorization: `Bearer ${TOKEN}`, "X-Forwarded-For": "203.0.113.7" } });
    assert.equal(proxied.status, 200);

    const { page: refused, response } = await openPage(browser, serve.base + "/");
    assert.equal(response.status(), 401);
    await refused.context().close();
    // Opened once with the token: a cookie keeps it and the address loses it.
    const { page, problems } = await openPage(browser, `${serve.base}/?token=${TOKEN}`);
    assert.equal(new URL(page.url()).search, "");
    await page.locator("#live.on").waitFor({ timeout: 5000 });
    const body = fixture("conversation_admin_closed.json");
    assert.equal((await deliver(serve.base, body)).status, 200);
    await row(page, JSON.parse(body).id).waitFor({ timeout: LISTED_WITHIN_MS });
    assert.deepEqual(problems, []);
  });

  it("the webhook does not need the inspector's token", async () => {
    const body = fixture("ping.json");
    assert.equal((await deliver(serve.base, body)).status, 200);
  });
});

describe("the inspector and a notification that fails at its last receive", () => {
  let serve;
  let target;

  before(async () => {
    target = createServer((request, response) => {
      request.resume();
      request.on("end", () => {
        response.writeHead(503);
        response.end("down");
      });
    });
    await new Promise((resolve) => target.listen(0, "127.0.0.1", resolve));
    serve = await startServe(["--max-receives", "1"], {
      FORWARD_1_URL: `http://127.0.0.1:${target.address().port}/hook`,
      FORWARD_1_SECRET: "forward-secret",
      FORWARD_1_TOPICS: FORWARDED_TOPIC,
    });
  });

  after(async () => {
    await serve?.stop();
    target?.close();
  });

  it("shows it dead-lettered with the reason, as the dead-letter view does", async () => {
    const browser = await launch();
    try {
      const { page, problems } = await openPage(browser, serve.base + "/");
      const body = fixture("ticket_created.json");
      const { id } = JSON.parse(body);
      assert.equal((await deliver(serve.base, body)).status, 200);
      const row = page.locator('#deliveries tbody tr[data-outcome="dead_lettered"]', { has: page.getByText(id, { exact: true }) });
      await row.waitFor({ timeout: 5000 });
      assert.match(await row.innerText(), /max receives exceeded \(1\): handler forward/);
      await page.locator("#tab-dead").click();
      await page.locator("#dead-letters tbody tr", { hasText: id }).waitFor({ timeout: 5000 });
      assert.deepEqual(problems, []);
    } finally {
      await browser.close();
    }
  });
});
