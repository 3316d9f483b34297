// End-to-end test driver: code-server + Chromium (playwright-core) with the
// keystroke .vsix installed offline. Run by tests/editors/test_vscode.py.
//
// Opens a Python file, types at the end of a line, waits for keystroke's
// ghost text, takes a screenshot, accepts it with Tab, saves, runs the
// "keystroke: Show stats" command, and writes what it saw to $KS_OUT (JSON);
// the Python test asserts on the saved file.
//
// Environment: KS_CODE_SERVER (code-server executable), KS_VSIX, KS_WORKSPACE,
// KS_FILE (name inside the workspace), KS_LINE (1-based), KS_TYPE (text to
// type), KS_SERVER_COMMAND, KS_SERVER_ARGS (JSON list), KS_OUT, KS_ARTIFACTS
// (screenshots), KS_HOME (user-data and extensions dirs), KS_CHROMIUM.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { chromium } from 'playwright-core';

const env = (name, fallback) => {
  const v = process.env[name] ?? fallback;
  if (v === undefined) throw new Error(`${name} is not set`);
  return v;
};
const out = env('KS_OUT');
const artifacts = env('KS_ARTIFACTS');
const home = env('KS_HOME');
const workspace = env('KS_WORKSPACE');
const codeServer = env('KS_CODE_SERVER');
const record = { steps: [] };
const log = (msg) => { record.steps.push(msg); console.log(`[e2e] ${msg}`); };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => { const { port } = srv.address(); srv.close(() => resolve(port)); });
  });
}

async function waitHttp(url, ms) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    try { if ((await fetch(url)).status < 500) return; } catch { /* not up yet */ }
    await sleep(250);
  }
  throw new Error(`code-server did not answer at ${url} in ${ms} ms`);
}

const userData = path.join(home, 'user-data');
const extensions = path.join(home, 'extensions');
fs.mkdirSync(path.join(userData, 'User'), { recursive: true });
fs.mkdirSync(artifacts, { recursive: true });
// What a user would put in settings.json, plus quiet-workbench settings so
// that nothing but keystroke competes for Tab.
fs.writeFileSync(path.join(userData, 'User', 'settings.json'), JSON.stringify({
  'keystroke.server.command': env('KS_SERVER_COMMAND'),
  'keystroke.server.args': JSON.parse(env('KS_SERVER_ARGS')),
  'editor.inlineSuggest.enabled': true,
  'editor.quickSuggestions': { other: false, comments: false, strings: false },
  'editor.suggestOnTriggerCharacters': false,
  'editor.wordBasedSuggestions': 'off',
  'editor.tabCompletion': 'off',
  'workbench.startupEditor': 'none',
  'workbench.tips.enabled': false,
  'workbench.enableExperiments': false,
  'security.workspace.trust.enabled': false,
  'telemetry.telemetryLevel': 'off',
  'extensions.autoUpdate': false,
  'extensions.autoCheckUpdates': false,
  'extensions.ignoreRecommendations': true,
  'update.mode': 'none',
  'files.autoSave': 'off',
  'chat.disableAIFeatures': true,
}, null, 2));

// code-server is a remote window: it reads settings scoped "machine-overridable" (the server
// command) from the machine settings and ignores them in the user's. Without this, the extension
// starts whatever `keystroke` is first on PATH.
fs.mkdirSync(path.join(userData, 'Machine'), { recursive: true });
fs.writeFileSync(path.join(userData, 'Machine', 'settings.json'), JSON.stringify({
  'keystroke.server.command': env('KS_SERVER_COMMAND'),
  'keystroke.server.args': JSON.parse(env('KS_SERVER_ARGS')),
}, null, 2));

let server;
let browser;
let page;
let finished = false;
async function finish(error) {
  if (finished) return;
  finished = true;
  record.error = error ? String(error.stack || error) : null;
  if (error && page) {
    await page.screenshot({ path: path.join(artifacts, 'vscode-failure.png') }).catch(() => undefined);
  }
  fs.writeFileSync(out, JSON.stringify(record, null, 2));
  try { if (browser) await browser.close(); } catch { /* closing anyway */ }
  if (server && server.exitCode === null) {
    try { process.kill(-server.pid, 'SIGTERM'); } catch { /* gone */ }
  }
  process.exit(error ? 1 : 0);
}
setTimeout(() => finish(new Error('deadline reached')), Number(process.env.KS_DEADLINE || 270) * 1000).unref();

async function main() {
  // 1. Install the .vsix offline, as a user would with --install-extension.
  const t0 = Date.now();
  const inst = spawnSync(codeServer, ['--user-data-dir', userData, '--extensions-dir', extensions,
    '--install-extension', env('KS_VSIX'), '--force'], { encoding: 'utf8', timeout: 120000 });
  record.install = { status: inst.status, stdout: inst.stdout, stderr: inst.stderr };
  if (inst.status !== 0) throw new Error(`--install-extension failed: ${inst.stderr || inst.stdout}`);
  record.installed = fs.readdirSync(extensions).filter((d) => d.startsWith('keystroke.'));
  log(`vsix installed in ${Date.now() - t0} ms: ${record.installed}`);

  // 2. code-server on a free local port, no auth, nothing from the network.
  const port = await freePort();
  server = spawn(codeServer, ['--auth', 'none', '--bind-addr', `127.0.0.1:${port}`,
    '--user-data-dir', userData, '--extensions-dir', extensions,
    '--disable-telemetry', '--disable-update-check', '--disable-workspace-trust',
    '--disable-getting-started-override', workspace],
  { detached: true, stdio: ['ignore', fs.openSync(path.join(artifacts, 'code-server.log'), 'w'), 'pipe'] });
  server.stderr.on('data', (d) => process.stderr.write(d));
  const url = `http://127.0.0.1:${port}/`;
  await waitHttp(`${url}healthz`, 60000);
  log(`code-server up on ${port}`);

  // 3. Chromium (Debian's) through playwright-core.
  browser = await chromium.launch({
    executablePath: env('KS_CHROMIUM', '/usr/bin/chromium'),
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-dev-shm-usage'],
  });
  page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  page.setDefaultTimeout(60000);
  await page.goto(`${url}?folder=${encodeURIComponent(workspace)}`);
  await page.locator('.monaco-workbench').waitFor();
  log('workbench loaded');

  // 4. The status bar: a spinner while the model loads, then ready.
  const item = page.locator('.statusbar-item', { hasText: 'keystroke' }).first();
  await item.waitFor({ timeout: 120000 });
  record.status_first = (await item.textContent())?.trim();
  const tLoad = Date.now();
  await page.waitForFunction(() => {
    const el = [...document.querySelectorAll('.statusbar-item')].find((e) => e.textContent.includes('keystroke'));
    return el && !/loading|stopped|failed/.test(el.textContent);
  }, null, { timeout: 200000 });
  record.status_ready = (await item.textContent())?.trim();
  record.load_ms = Date.now() - tLoad;
  log(`model ready after ${record.load_ms} ms: ${record.status_ready}`);

  // 5. Open the file (Quick Open), go to the line's end, type.
  const file = env('KS_FILE');
  await page.locator('.monaco-workbench').click({ position: { x: 700, y: 400 } });
  await page.keyboard.press('Control+P');
  await page.locator('.quick-input-widget input').waitFor();
  await page.keyboard.type(file, { delay: 20 });
  await page.waitForTimeout(500);
  await page.keyboard.press('Enter');
  const editor = page.locator('.monaco-editor[data-uri$="' + file + '"]').first();
  await editor.waitFor();
  await editor.locator('.view-lines').click();
  await page.keyboard.press('Control+G');
  await page.keyboard.type(env('KS_LINE'), { delay: 20 });
  await page.keyboard.press('Enter');
  await page.keyboard.press('End');
  record.language = await page.locator('.statusbar-item', { hasText: /^Python$/ }).count();
  await page.keyboard.type(env('KS_TYPE'), { delay: 60 });
  log('typed');

  // 6. keystroke's ghost text.
  const ghost = editor.locator('.ghost-text-decoration').first();
  await ghost.waitFor({ state: 'visible', timeout: 120000 });
  await page.waitForTimeout(300);
  const ghostText = await editor.evaluate((root) => {
    const clean = (s) => s.replace(/\u00a0/g, ' ');
    const first = [...root.querySelectorAll('.ghost-text-decoration')].map((e) => clean(e.textContent)).join('');
    const more = [...root.querySelectorAll('.ghost-text .view-line, .ghost-text-view-zone .view-line')]
      .map((e) => clean(e.textContent));
    return { first, more };
  });
  record.ghost = ghostText;
  await page.screenshot({ path: path.join(artifacts, 'vscode-ghost-text.png') });
  log(`ghost text: ${JSON.stringify(ghostText)}`);

  // 7. Tab accepts it; save.
  await page.keyboard.press('Tab');
  await page.waitForTimeout(500);
  record.ghost_after_tab = await editor.locator('.ghost-text-decoration').count();
  await page.keyboard.press('Control+S');
  await page.waitForTimeout(1000);
  await page.screenshot({ path: path.join(artifacts, 'vscode-accepted.png') });
  record.status_after = (await item.textContent())?.trim();
  log(`accepted; status bar: ${record.status_after}`);

  // 8. "keystroke: Show stats" from the command palette writes to its output channel.
  await page.keyboard.press('Escape');
  await page.keyboard.press('Control+Shift+P');
  await page.locator('.quick-input-widget input').waitFor();
  await page.keyboard.type('keystroke: Show stats', { delay: 20 });
  await page.waitForTimeout(700);
  await page.keyboard.press('Enter');
  const outputView = page.locator('.output-view, .part.panel').first();
  await page.waitForFunction(() => [...document.querySelectorAll('.part.panel .view-line')]
    .some((e) => e.textContent.replace(/\u00a0/g, ' ').includes('keystroke: ready')), null, { timeout: 30000 });
  record.stats_lines = await outputView.evaluate((root) =>
    [...root.querySelectorAll('.view-line')].map((e) => e.textContent.replace(/\u00a0/g, ' ')));
  await page.screenshot({ path: path.join(artifacts, 'vscode-stats.png') });
  log('stats shown');
}

main().then(() => finish(null), (e) => finish(e));
