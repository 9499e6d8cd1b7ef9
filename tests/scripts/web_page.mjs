// Drives the browser page (web/static, served by `runtime serve-web`) in Debian's headless
// Chromium through playwright-core, for the tests and the benchmark.
//
//   node web_page.mjs page --url URL --report OUT.json [--actions ACTIONS.json]
//        [--tokenize PROMPTS.json] [--screenshot OUT.png] [--webgpu] [--confirm] [--timeout-s N]
//     Opens the page, waits until it is ready (or shows an error; with --confirm, clicks "Load it
//     anyway" when the page asks before loading a model too large for WASM), then runs each action
//     {prompt, seed, steps, rgba?}: fills the form, clicks Generate, waits for the click to
//     finish and records the visible error/warning/result texts, and the canvas pixels (raw RGBA
//     written to `rgba`). The report also holds the load state, the provider, the ids the page's
//     tokenizer gives PROMPTS, and every console error and uncaught exception.
//
//   node web_page.mjs bench --url URL [--runs N] [--webgpu | --gpu]
//     Prints the time to the first image (from navigation) and the per-image times.
//
// --webgpu turns WebGPU on with SwiftShader (the CPU; a correctness check on machines without a
// GPU, about 100x slower than WASM). --gpu lets Chromium use the machine's GPU for WebGPU
// instead (for measuring on a machine that has one).
//
// Environment: ECHODISTILL_WEB_NODE (node_modules with playwright-core) and ECHODISTILL_CHROMIUM
// (the browser), as `./run.sh env` exports them.

import { createRequire } from 'node:module';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

function fail(message) {
  console.error(`web_page.mjs: ${message}`);
  process.exit(2);
}

function parseArgs(argv) {
  const [mode, ...rest] = argv;
  const args = { mode };
  for (let i = 0; i < rest.length; i++) {
    const key = rest[i];
    if (!key.startsWith('--')) fail(`unexpected argument ${key}`);
    const name = key.slice(2);
    if (['webgpu', 'gpu', 'confirm'].includes(name)) args[name] = true;
    else if (i + 1 < rest.length) args[name] = rest[++i];
    else fail(`${key} needs a value`);
  }
  if (!['page', 'bench'].includes(mode)) fail('usage: web_page.mjs page|bench --url URL ...');
  if (!args.url) fail('--url is required');
  return args;
}

const args = parseArgs(process.argv.slice(2));
const modules = process.env.ECHODISTILL_WEB_NODE;
const browserPath = process.env.ECHODISTILL_CHROMIUM || '/usr/bin/chromium';
if (!modules) fail('ECHODISTILL_WEB_NODE is not set: eval "$(./run.sh env)" first');
let chromium;
try {
  ({ chromium } = createRequire(join(modules, 'noop.js'))('playwright-core'));
} catch (e) {
  fail(`cannot load playwright-core from ${modules} (${e.message}): run ./run.sh setup`);
}

const timeoutMs = Number(args['timeout-s'] ?? 300) * 1000;
// TOOLCHAIN.md's flags: no GPU, no network beyond loopback, no first-run work.
const flags = ['--no-sandbox', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
if (args.gpu) flags.push('--enable-unsafe-webgpu', '--enable-features=Vulkan');
else flags.push('--disable-gpu');
// WebGPU in headless Chromium without a GPU: SwiftShader (CPU), a correctness check only.
if (args.webgpu) flags.push('--enable-unsafe-webgpu', '--enable-features=Vulkan', '--use-webgpu-adapter=swiftshader');

const profile = mkdtempSync(join(tmpdir(), 'echodistill-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: browserPath, headless: true, args: flags, viewport: { width: 900, height: 1000 },
});
const consoleErrors = [];
const pageErrors = [];
let exitCode = 0;
try {
  const page = context.pages()[0] ?? await context.newPage();
  page.setDefaultTimeout(timeoutMs);
  page.on('console', (msg) => {
    if (msg.type() === 'error') consoleErrors.push({ text: msg.text(), url: msg.location()?.url ?? '' });
  });
  page.on('pageerror', (e) => pageErrors.push(`${e.name}: ${e.message}`));
  await page.goto(args.url);
  await page.waitForFunction(() => ['ready', 'error', 'confirm'].includes(document.body.dataset.state));

  const text = async (id) => page.evaluate((i) => {
    const el = document.getElementById(i);
    return el && !el.hidden ? el.textContent : null;
  }, id);

  // Fills the form, clicks Generate and waits for that click to finish.
  const generate = async ({ prompt, seed, steps }) => {
    const before = Number(await page.evaluate(() => document.body.dataset.attempts));
    await page.fill('#prompt', prompt);
    await page.fill('#seed', `${seed}`);
    if (steps !== undefined) await page.selectOption('#steps', `${steps}`);
    await page.click('#generate');
    await page.waitForFunction((n) => Number(document.body.dataset.attempts) > n, before);
  };

  if (args.mode === 'bench') {
    if (await page.evaluate(() => document.body.dataset.state) !== 'ready') {
      fail(`the page did not load: ${await text('error')}`);
    }
    const runs = Number(args.runs ?? 10);
    for (let i = 0; i <= runs; i++) {
      await generate({ prompt: 'a photo of a dog on the beach', seed: i });
      const error = await text('error');
      if (error) fail(`generation failed: ${error}`);
    }
    const r = await page.evaluate(() => ({
      ep: window.echodistill.provider, first: window.echodistill.firstImageMs, timings: window.echodistill.timings,
      threads: self.crossOriginIsolated,
    }));
    const steady = r.timings.slice(1).sort((a, b) => a - b);
    const q = (p) => steady[Math.min(steady.length - 1, Math.ceil(p * steady.length) - 1)];
    console.log(`headless Chromium ${context.browser()?.version() ?? ''}, provider ${r.ep}` +
      `${r.threads ? ', cross-origin isolated (WASM threads)' : ''}`);
    console.log(`time to first image (navigation to pixels, model load included): ${r.first.toFixed(0)} ms`);
    console.log(`first generation: ${r.timings[0].toFixed(1)} ms`);
    console.log(`steady ms per image over ${steady.length} run(s): median ${q(0.5).toFixed(1)}, ` +
      `p95 ${q(0.95).toFixed(1)}, min ${steady[0].toFixed(1)}`);
  } else {
    const report = {
      state: await page.evaluate(() => document.body.dataset.state),
      provider: await page.evaluate(() => window.echodistill.provider ?? null),
      providerNote: await text('provider-note'),
      error: await text('error'),
      slowWarning: await text('slow-warning'),
      actions: [],
    };
    if (args.confirm && report.state === 'confirm') {
      await page.click('#load-anyway');
      await page.waitForFunction(() => ['ready', 'error'].includes(document.body.dataset.state));
      report.state = await page.evaluate(() => document.body.dataset.state);
      report.provider = await page.evaluate(() => window.echodistill.provider ?? null);
      report.error = await text('error');
    }
    if (args.tokenize && report.state === 'ready') {
      const prompts = JSON.parse(readFileSync(args.tokenize, 'utf8'));
      report.tokenized = await page.evaluate((p) => window.echodistill.encode(p), prompts);
    }
    const actions = args.actions ? JSON.parse(readFileSync(args.actions, 'utf8')) : [];
    for (const action of actions) {
      if (report.state !== 'ready') break;
      await generate(action);
      const result = { error: await text('error'), warning: await text('warning'), result: await text('result') };
      if (action.rgba && !result.error) {
        const px = await page.evaluate(() => {
          const c = document.getElementById('canvas');
          const d = c.getContext('2d').getImageData(0, 0, c.width, c.height);
          return { width: c.width, height: c.height, data: Array.from(d.data) };
        });
        writeFileSync(action.rgba, Uint8Array.from(px.data));
        result.width = px.width;
        result.height = px.height;
      }
      report.actions.push(result);
    }
    if (args.screenshot) await page.screenshot({ path: args.screenshot, fullPage: true });
    report.consoleErrors = consoleErrors;
    report.pageErrors = pageErrors;
    writeFileSync(args.report, JSON.stringify(report, null, 2));
  }
} catch (e) {
  console.error(`web_page.mjs: ${e.stack ?? e}`);
  exitCode = 1;
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(exitCode);
