// The dashboard in a real browser: Debian's chromium, driven by playwright-core, against
// a real `lqsm standalone` (server and worker in one process) on a random loopback port.
//
//   node --test dashboard.test.mjs          (scripts/test-all.sh runs it)
//
// Environment: LQSM_BIN (default ../../target/debug/lqsm), CHROMIUM (default
// /usr/bin/chromium), LQSM_SCREENSHOTS=DIR to also save a screenshot of each page there
// (scripts/ui-screenshots.sh).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const LQSM = process.env.LQSM_BIN ?? resolve(here, "../../target/debug/lqsm");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const SHOTS = process.env.LQSM_SCREENSHOTS;
const DEADLINE_MS = 20_000;

let server;
let dataDir;
let base;
let browser;
const problems = [];

/** Polls `check` until it returns a truthy value or the deadline passes. */
async function eventually(what, check, deadlineMs = DEADLINE_MS) {
  const end = Date.now() + deadlineMs;
  let last;
  while (Date.now() < end) {
    try {
      last = await check();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what} (last: ${last})`);
}

async function call(method, path, body) {
  const response = await fetch(base + path, {
    method,
    headers: body ? { "content-type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

const submit = (job) => call("POST", "/v1/jobs", job).then((answer) => answer.id);
const command = (argv, extra = {}) => ({
  queue: "root.default",
  kind: { type: "command", argv },
  resources: { cpu: 0.1, memory_mib: 32 },
  ...extra,
});

/** A new page that fails the run on any script error or policy violation. */
async function newPage() {
  const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`console error: ${m.text()}`);
  });
  page.on("response", (r) => {
    if (r.status() >= 400) problems.push(`${r.status()} for ${r.url()}`);
  });
  page.on("dialog", (d) => {
    problems.push(`a dialog opened: ${d.message()}`);
    d.dismiss();
  });
  return page;
}

async function shot(page, name) {
  if (!SHOTS) return;
  mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: false });
}

before(async () => {
  dataDir = mkdtempSync(join(tmpdir(), "lqsm-browser-"));
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("LQSM_")));
  server = spawn(
    LQSM,
    ["standalone", "--listen", "127.0.0.1:0", "--data-dir", join(dataDir, "data"), "--cpus", "2", "--memory", "2048M"],
    { env: { ...env, RUST_LOG: "error" }, stdio: ["ignore", "pipe", "inherit"] },
  );
  const lines = createInterface({ input: server.stdout });
  base = await new Promise((resolveUrl, reject) => {
    const timer = setTimeout(() => reject(new Error("lqsm standalone did not announce its address")), DEADLINE_MS);
    server.once("exit", (code) => reject(new Error(`lqsm standalone exited (${code})`)));
    lines.once("line", (line) => {
      clearTimeout(timer);
      resolveUrl(line.replace(/^.*listening on /, "").trim());
    });
  });
  lines.on("line", () => {});
  await eventually("the server to be ready", async () => (await fetch(`${base}/readyz`)).ok);
  await eventually("the standalone worker", async () => (await call("GET", "/v1/workers")).length >= 1);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
});

after(async () => {
  await browser?.close();
  if (server && server.exitCode === null) {
    const exited = new Promise((r) => server.once("exit", r));
    server.kill("SIGTERM");
    await exited;
  }
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

test("every page loads with no script error, and the overview's figures change live", async () => {
  await submit(command(["echo", "hello from the browser test"]));
  const page = await newPage();
  await page.goto(`${base}/ui`);
  assert.equal(await page.locator("h1").textContent(), "Overview");
  const pending = page.locator('dd[data-figure="pending"]');
  const before = Number(await pending.textContent());
  // Jobs held back a minute wait as pending; the figure updates without a reload.
  for (let i = 0; i < 3; i++) await submit(command(["true"], { delay_ms: 60_000 }));
  await eventually("the pending figure to change in place", async () => Number(await pending.textContent()) >= before + 3);
  await eventually("a chart", async () => (await page.locator("figure.chart").count()) >= 1);
  await shot(page, "overview");
  for (const [path, title, name] of [
    ["/ui/queues", "Queue root", "queues"],
    ["/ui/jobs", "Jobs", "jobs"],
    ["/ui/workers", "Workers", "workers"],
    ["/ui/schedules", "Schedules", "schedules"],
  ]) {
    await page.goto(base + path);
    assert.equal(await page.locator("h1").textContent(), title, path);
    await shot(page, name);
  }
  // The queue tree expands in place.
  await call("POST", "/v1/queues", { path: "root.team", capacity: 20 });
  await call("POST", "/v1/queues", { path: "root.team.nightly", capacity: 100 });
  await page.goto(`${base}/ui/queues`);
  await page.locator('tr[data-path="root.team"] button.expand').click();
  await eventually("the child row", async () => (await page.locator('tr[data-path="root.team.nightly"]').count()) === 1);
  assert.deepEqual(problems, []);
});

test("a job opened from the list, its output read, and cancelled with a click", async () => {
  const done = await submit(command(["sh", "-c", "echo line-one; echo line-two"]));
  await eventually("the job to finish", async () => (await call("GET", `/v1/jobs/${done}`)).state === "succeeded");
  const waiting = await submit(command(["sleep", "300"], { tags: ["<script>alert(1)</script>"] }));
  const page = await newPage();
  await page.goto(`${base}/ui/jobs`);
  await page.locator(`a[href="/ui/jobs/${done}"]`).click();
  await eventually("the output", async () => (await page.locator("pre.logs").textContent()).includes("line-two"));
  await shot(page, "job");
  await page.goto(`${base}/ui/jobs/${waiting}`);
  // The tag is text on the page, not a script that ran.
  assert.ok((await page.locator(".tag").first().textContent()).includes("<script>"));
  await page.getByRole("button", { name: "Cancel" }).click();
  await eventually("the page to show it cancelled", async () => (await page.locator("span.state").first().textContent()) === "cancelled");
  assert.equal((await call("GET", `/v1/jobs/${waiting}`)).state, "cancelled");
  assert.deepEqual(problems, []);
});
