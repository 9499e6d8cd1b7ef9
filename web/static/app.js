// The page: loads a baked model folder (manifest, tokenizer, ONNX graphs) with onnxruntime-web
// and generates in this browser. Everything but running the networks (tokenizer, noise, step
// math, pixels) comes from the wasm package built from the runtime's Rust core, so a seed gives
// the picture `runtime generate` gives.
//
// URL parameters: ?model=URL (default model/, as `runtime serve-web` serves it),
// ?ep=webgpu|wasm (skip the automatic choice), ?threads=N (WASM threads).
// The page's state is in <body data-state> (starting, loading, confirm, ready, generating,
// error) and <body data-attempts> counts finished Generate clicks, for scripts and tests.

import init, { Tokenizer, ModelInfo, chwToRgba, rgbToRgba } from './pkg/web.js';
import * as ort from './ort/ort.webgpu.min.mjs';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const MAX_SEED = (1n << 64n) - 1n;
// Above this many weights WASM (CPU) takes minutes per image and GBs of memory: ask first.
const WASM_PARAMETER_LIMIT = 300e6;
// WASM has one 4 GiB address space (minus the runtime): weights past this cannot load.
const WASM_BYTES_LIMIT = 3.2e9;

class UserError extends Error {}

const state = {
  info: null,
  tokenizer: null,
  sessions: {},
  ep: null,
  attempts: 0,
  downloadUrl: null,
  timings: [],
  unchecked: [],
};

// Helpers the test driver and the benchmark script use.
window.echodistill = {
  encode: (prompts) => prompts.map((p) => Array.from(state.tokenizer.encode(p))),
  get provider() { return state.ep; },
  get timings() { return state.timings; },
  get firstImageMs() { return state.firstImageMs; },
};

function setState(s) { document.body.dataset.state = s; }

function showError(message) {
  const el = $('error');
  el.textContent = message;
  el.hidden = false;
}

function clearMessages() {
  $('error').hidden = true;
  $('warning').hidden = true;
}

function showWarning(message) {
  const el = $('warning');
  el.textContent = message;
  el.hidden = false;
}

const mb = (n) => `${(n / 1e6).toFixed(1)} MB`;

function isOutOfMemory(e) {
  const text = `${e?.name ?? ''} ${e?.message ?? e}`.toLowerCase();
  return e instanceof RangeError || /out of memory|bad_alloc|allocation failed|memory access out of bounds|oom/.test(text);
}

function outOfMemory(what) {
  return new UserError(`Ran out of memory while ${what}. Close other tabs and reload; ` +
    'a model baked with --dtype f16 needs half the memory, and WebGPU keeps weights on the GPU.');
}

// Fetches a file with progress; 404s and network failures become messages that say what to do.
async function download(url, label, onProgress) {
  let res;
  try {
    res = await fetch(url, { cache: 'no-cache' });
  } catch (e) {
    throw new UserError(`Cannot fetch ${label} (${url}): ${e.message}. Is the server (runtime serve-web) still running?`);
  }
  if (!res.ok) {
    throw new UserError(`${label} is missing: ${url} answered ${res.status} ${res.statusText}.`);
  }
  const total = Number(res.headers.get('Content-Length')) || 0;
  const chunks = [];
  let received = 0;
  let buffer = null;
  try {
    if (total) buffer = new Uint8Array(total);
    const reader = res.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (buffer && received + value.length <= total) buffer.set(value, received);
      else chunks.push(value);
      received += value.length;
      onProgress?.(received, total);
    }
    if (!buffer || received !== total) {
      // Length unknown or wrong: assemble what arrived.
      const whole = new Uint8Array(received);
      let at = 0;
      if (buffer) { whole.set(buffer.subarray(0, Math.min(received, total))); at = Math.min(received, total); }
      for (const c of chunks) { whole.set(c, at); at += c.length; }
      buffer = whole;
    }
  } catch (e) {
    if (isOutOfMemory(e)) throw outOfMemory(`downloading ${label} (${mb(total || received)})`);
    throw new UserError(`Downloading ${label} failed after ${mb(received)}: ${e.message}`);
  }
  return buffer;
}

async function downloadText(url, label) {
  return new TextDecoder().decode(await download(url, label));
}

async function sha256Hex(bytes) {
  const digest = await crypto.subtle.digest('SHA-256', bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
}

// Refuses a file that is not what the manifest recorded (changed or damaged since the bake).
// A file the browser cannot digest (no crypto.subtle, or too large for one digest) is listed
// after loading as not checked; onnxruntime still checks its format.
async function verify(info, file, bytes) {
  const want = info.sha256(file);
  if (!want) return;
  let got;
  try {
    got = await sha256Hex(bytes);
  } catch {
    state.unchecked.push(file);
    return;
  }
  if (got !== want) {
    throw new UserError(`${file} does not match the model's manifest (sha256 ${got.slice(0, 12)}…, ` +
      `manifest ${want.slice(0, 12)}…): the file changed or is damaged, so bake the folder again.`);
  }
}

// WebGPU where the browser has it (with shader-f16 for f16 bakes), WASM otherwise.
async function chooseProvider(info) {
  const forced = params.get('ep');
  if (forced && forced !== 'webgpu' && forced !== 'wasm') {
    throw new UserError(`?ep=${forced}: use ep=webgpu or ep=wasm, or leave it out to choose automatically.`);
  }
  let adapter = null;
  if (navigator.gpu && forced !== 'wasm') {
    try { adapter = await navigator.gpu.requestAdapter(); } catch { adapter = null; }
  }
  const f16 = adapter?.features?.has('shader-f16') ?? false;
  if (forced === 'webgpu') {
    if (!adapter) throw new UserError('?ep=webgpu: this browser offers no WebGPU adapter. Leave ?ep out to use WASM.');
    return { ep: 'webgpu', note: f16 ? '(forced; shader-f16 available)' : '(forced; no shader-f16)' };
  }
  if (forced === 'wasm') return { ep: 'wasm', note: '(forced)' };
  if (adapter && (info.dtype !== 'f16' || f16)) {
    const note = info.dtype === 'f16' ? 'with fp16 shaders'
      : (f16 ? '(this GPU has fp16 shaders: a --dtype f16 bake downloads half as much)' : '');
    return { ep: 'webgpu', note };
  }
  const why = !navigator.gpu ? 'this browser has no WebGPU'
    : !adapter ? 'WebGPU found no usable GPU' : 'this GPU lacks the fp16 shaders the f16 model needs';
  return { ep: 'wasm', note: `(CPU: ${why})` };
}

function waitForConfirm(message) {
  $('slow-text').textContent = message;
  $('slow-warning').hidden = false;
  setState('confirm');
  return new Promise((resolve) => {
    $('load-anyway').addEventListener('click', () => {
      $('slow-warning').hidden = true;
      resolve();
    }, { once: true });
  });
}

async function createSession(role, info, modelUrl, ep, progress) {
  const file = info.networkFile(role);
  const external = info.externalData(role);
  const bytes = await download(new URL(file, modelUrl), file, progress(file));
  await verify(info, file, bytes);
  // Severity 3: errors only. onnxruntime's warnings (e.g. shape ops placed on the CPU) would
  // otherwise reach the console as errors through emscripten's stderr.
  const options = { executionProviders: [ep], graphOptimizationLevel: 'all', logSeverityLevel: 3 };
  if (external) {
    const data = await download(new URL(external, modelUrl), external, progress(external));
    await verify(info, external, data);
    options.externalData = [{ path: external, data }];
  }
  try {
    return await ort.InferenceSession.create(bytes, options);
  } catch (e) {
    if (isOutOfMemory(e)) throw outOfMemory(`loading ${file}`);
    throw new UserError(`${file} could not be loaded by onnxruntime-web (${ep}): ${e.message ?? e}. ` +
      'The file is damaged or not a model this page can run: bake the folder again.');
  }
}

async function load() {
  setState('loading');
  let modelParam = params.get('model') ?? 'model/';
  if (!modelParam.endsWith('/')) modelParam += '/';
  const modelUrl = new URL(modelParam, location.href);
  await init();

  let manifest;
  try {
    manifest = await downloadText(new URL('manifest.yaml', modelUrl), 'manifest.yaml');
  } catch (e) {
    if (e instanceof UserError) {
      throw new UserError(`No model folder at ${modelUrl.href}: ${e.message} ` +
        'Serve one with `runtime serve-web --model MODEL_DIR` (a folder written by `exporter bake`), or fix ?model=.');
    }
    throw e;
  }
  const info = new ModelInfo(manifest, `${modelUrl.href}manifest.yaml`);
  state.info = info;

  const tok = {};
  for (const name of info.tokenizerFiles) {
    tok[name] = await downloadText(new URL(`tokenizer/${name}`, modelUrl), `tokenizer/${name}`);
  }
  if (!tok['vocab.json'] || !tok['merges.txt']) {
    throw new UserError(`${modelUrl.href}tokenizer/ lacks vocab.json or merges.txt: bake the folder again.`);
  }
  state.tokenizer = new Tokenizer(tok['vocab.json'], tok['merges.txt'], tok['tokenizer_config.json'],
    tok['special_tokens_map.json'], tok['added_tokens.json']);
  info.checkTokenizer(state.tokenizer);

  const tokens = info.tokens;
  $('tokens').textContent = tokens.length ? tokens.join(', ') : 'none (a base model)';
  if (tokens.length) $('prompt').value = `a ${tokens[0]} on the beach`;
  const steps = $('steps');
  for (const n of info.steps) steps.add(new Option(`${n}`, `${n}`));
  const params_m = (info.parameters / 1e6).toFixed(1);
  $('model-summary').textContent = `${info.baseModel}: ${info.width}×${info.height}, ${info.dtype}, ` +
    `${params_m} M weights, ${info.isFused ? 'fused pipeline' : 'text encoder + UNet + VAE decoder'}.`;

  const { ep, note } = await chooseProvider(info);
  state.ep = ep;
  $('provider').textContent = ep === 'webgpu' ? 'WebGPU' : 'WASM';
  $('provider-note').textContent = note;
  const weightBytes = info.parameters * (info.dtype === 'f16' ? 2 : 4);
  if (ep === 'wasm' && weightBytes > WASM_BYTES_LIMIT) {
    throw new UserError(`This model's weights are ${mb(weightBytes)}: more than WASM's 4 GB memory holds, and ` +
      'this browser cannot run it on WebGPU. Use a browser with WebGPU (and fp16 shaders for a --dtype f16 bake).');
  }
  if (ep === 'wasm' && info.parameters > WASM_PARAMETER_LIMIT) {
    await waitForConfirm(`This browser runs the model on the CPU (WASM): ${params_m} M weights take minutes ` +
      `per image and about ${mb(weightBytes * 2)} of memory. A browser with WebGPU is much faster.`);
    setState('loading');
  }

  ort.env.wasm.wasmPaths = new URL('./ort/', import.meta.url).href;
  const threads = Number(params.get('threads')) || Math.min(4, navigator.hardwareConcurrency || 1);
  // Threads need cross-origin isolation (serve-web's COOP/COEP headers).
  ort.env.wasm.numThreads = self.crossOriginIsolated ? threads : 1;
  ort.env.logLevel = 'error';

  $('load').hidden = false;
  const roles = info.roles;
  let started = performance.now();
  const progress = (file) => (got, total) => {
    const rate = got / 1e6 / Math.max(1e-3, (performance.now() - started) / 1e3);
    $('load-progress').value = total ? got / total : 0;
    $('load-text').textContent = `${file}: ${mb(got)}${total ? ` of ${mb(total)}` : ''} (${rate.toFixed(1)} MB/s)`;
  };
  for (const role of roles) {
    started = performance.now();
    state.sessions[role] = await createSession(role, info, modelUrl, ep, progress);
  }
  $('load-progress').value = 1;
  $('load-text').textContent = `loaded in ${((performance.now()) / 1e3).toFixed(1)} s since the page opened` +
    (state.unchecked.length ? `; not checked against the manifest (too large for this browser's SHA-256): ${state.unchecked.join(', ')}` : '');
  $('canvas').width = info.width;
  $('canvas').height = info.height;
  $('generate').disabled = false;
  setState('ready');
}

function parseSeed(text) {
  const t = text.trim();
  if (!/^\d+$/.test(t) || BigInt(t) > MAX_SEED) {
    throw new UserError(`Seed ${JSON.stringify(text)} is not a whole number from 0 to ${MAX_SEED}: type one, e.g. 42.`);
  }
  return BigInt(t);
}

async function runSplit(info, ids, seed, steps) {
  const { text_encoder: te, unet, vae_decoder: vae } = state.sessions;
  const L = ids.length;
  const hidden = (await te.run({ input_ids: new ort.Tensor('int64', ids, [1, L]) })).last_hidden_state;
  const sampler = info.sampler(seed, 1, steps);
  try {
    const shape = Array.from(sampler.shape);
    for (let i = 0; i < sampler.steps; i++) {
      const out = await unet.run({
        sample: new ort.Tensor('float32', sampler.modelInput(i), shape),
        timestep: new ort.Tensor('float32', Float32Array.of(sampler.timestep(i)), [1]),
        encoder_hidden_states: hidden,
      });
      sampler.step(i, out.out_sample.data);
    }
    const image = (await vae.run({ latent_sample: new ort.Tensor('float32', sampler.decoderInput(), shape) })).sample;
    return chwToRgba(image.data, info.height, info.width);
  } finally {
    sampler.free();
  }
}

async function runFused(info, ids, seed, steps) {
  const shape = Array.from(info.latentShape(1));
  const out = await state.sessions.pipeline.run({
    input_ids: new ort.Tensor('int64', ids, [1, ids.length]),
    noise: new ort.Tensor('float32', info.initialNoise(seed, 1), shape),
    steps: new ort.Tensor('int64', BigInt64Array.of(BigInt(steps)), []),
  });
  return rgbToRgba(out.image.data);
}

function slug(text) {
  return text.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '').slice(0, 48) || 'image';
}

async function generate() {
  clearMessages();
  const info = state.info;
  const prompt = $('prompt').value;
  if (!prompt.trim()) throw new UserError('The prompt is empty: say what to draw, e.g. "a <new1> dog on the beach".');
  const seed = parseSeed($('seed').value);
  const steps = Number($('steps').value);
  info.checkSteps(steps);
  const encoded = state.tokenizer.encodePrompt(prompt);
  const ids = encoded.ids;
  if (encoded.truncated > 0) {
    showWarning(`The prompt is longer than the text encoder's ${state.tokenizer.maxLength} tokens: ` +
      `its last ${encoded.truncated} token(s) were dropped.`);
  }
  encoded.free();
  setState('generating');
  $('generate').disabled = true;
  const t0 = performance.now();
  let rgba;
  try {
    rgba = info.isFused ? await runFused(info, ids, seed, steps) : await runSplit(info, ids, seed, steps);
  } catch (e) {
    if (isOutOfMemory(e)) throw outOfMemory('generating');
    throw e;
  }
  const ms = performance.now() - t0;
  const canvas = $('canvas');
  canvas.getContext('2d').putImageData(
    new ImageData(new Uint8ClampedArray(rgba.buffer, rgba.byteOffset, rgba.length), info.width, info.height), 0, 0);
  state.timings.push(ms);
  state.firstImageMs ??= performance.now();
  $('result').textContent = `"${prompt}", seed ${seed}, ${steps} step(s): ${ms.toFixed(0)} ms on ` +
    `${state.ep === 'webgpu' ? 'WebGPU' : 'WASM'} (first image ${(state.firstImageMs / 1e3).toFixed(1)} s after the page opened).`;
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, 'image/png'));
  if (state.downloadUrl) URL.revokeObjectURL(state.downloadUrl);
  state.downloadUrl = URL.createObjectURL(blob);
  const link = $('download');
  link.href = state.downloadUrl;
  link.download = `${slug(prompt)}-seed${seed}-${steps}step.png`;
  link.hidden = false;
}

function describe(e) {
  if (e instanceof UserError) return e.message;
  // Errors from the wasm package arrive as Error objects with the Rust message.
  return `${e?.message ?? e}`;
}

$('form').addEventListener('submit', async (event) => {
  event.preventDefault();
  if (!state.info || document.body.dataset.state === 'generating') return;
  try {
    await generate();
  } catch (e) {
    showError(describe(e));
  } finally {
    setState('ready');
    $('generate').disabled = false;
    state.attempts += 1;
    document.body.dataset.attempts = `${state.attempts}`;
  }
});

load().catch((e) => {
  showError(describe(e));
  $('load').hidden = true;
  $('provider').textContent = state.ep ?? '—';
  setState('error');
});
