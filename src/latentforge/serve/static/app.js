// latentforge web page: talks to the JSON/HTTP API of the same server (see /docs). No build step.
"use strict";

const SEED_MAX = 4294967295;
const GALLERY_SIZE = 16;
const $ = (id) => document.getElementById(id);

const state = {
  info: null,
  directions: [],
  offsets: [],
  seed: 0,
  truncation: 1,
  gallery: [], // {seed, truncation, offsets, url}
  mainUrl: null,
  requestId: 0,
  controller: null,
};

// ------------------------------------------------------------------ helpers

function randomSeed() {
  const a = new Uint32Array(1);
  crypto.getRandomValues(a);
  return a[0] % 1000000; // short seeds are easier to read and type; any 0..2^32-1 works
}

function clampSeed(value) {
  const n = Math.floor(Number(value));
  if (!Number.isFinite(n)) return null;
  return Math.min(Math.max(n, 0), SEED_MAX);
}

let toastTimer = null;
function toast(message) {
  const el = $("toast");
  el.textContent = message;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, 6000);
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (typeof body.detail === "string") return body.detail;
    if (Array.isArray(body.detail)) {
      return body.detail.map((d) => `${(d.loc || []).slice(1).join(".") || "request"}: ${d.msg}`).join("; ");
    }
  } catch (_) { /* not JSON */ }
  return `the server answered HTTP ${response.status}`;
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  if (!response.ok) throw new Error(await errorText(response));
  return response;
}

function postJSON(path, body, signal) {
  return api(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
    signal,
  });
}

function trimmedOffsets(offsets) {
  const out = offsets.slice();
  while (out.length && out[out.length - 1] === 0) out.pop();
  return out;
}

function requestBody(extra = {}) {
  const body = { seed: state.seed, truncation: state.truncation, ...extra };
  const offsets = trimmedOffsets(state.offsets);
  if (offsets.length) body.offsets = offsets;
  const cls = $("class");
  if (!$("class-field").hidden && cls.value !== "") body.class = Number(cls.value);
  return body;
}

function slug(text) {
  return String(text).toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "") || "latentforge";
}

// ------------------------------------------------------------------ the main image

async function render({ remember = false } = {}) {
  const id = ++state.requestId;
  if (state.controller) state.controller.abort();
  const controller = new AbortController();
  state.controller = controller;
  const seed = state.seed;
  $("seed-readout").textContent = seed;
  $("seed").value = seed;
  $("interp-from").value = seed;
  history.replaceState(null, "", `#seed=${seed}`);
  $("canvas").classList.add("loading");
  try {
    const response = await postJSON("/api/generate", requestBody(), controller.signal);
    const blob = await response.blob();
    if (id !== state.requestId) return;
    const url = URL.createObjectURL(blob);
    const img = $("main-image");
    const previous = state.mainUrl;
    img.src = url;
    img.dataset.seed = String(seed);
    img.alt = `Generated image, seed ${seed}`;
    state.mainUrl = url;
    if (previous && !state.gallery.some((g) => g.url === previous)) URL.revokeObjectURL(previous);
    if (remember) remember_(seed, url);
    markCurrent();
  } catch (err) {
    if (err.name !== "AbortError") toast(err.message);
  } finally {
    if (id === state.requestId) $("canvas").classList.remove("loading");
  }
}

let renderTimer = null;
function renderSoon() {
  clearTimeout(renderTimer);
  renderTimer = setTimeout(() => render(), 70);
}

function setSeed(seed, remember = true) {
  state.seed = seed;
  render({ remember });
}

// ------------------------------------------------------------------ gallery

function remember_(seed, url) {
  state.gallery.unshift({ seed, truncation: state.truncation, offsets: state.offsets.slice(), url });
  while (state.gallery.length > GALLERY_SIZE) {
    const dropped = state.gallery.pop();
    if (dropped.url !== state.mainUrl) URL.revokeObjectURL(dropped.url);
  }
  drawGallery();
}

function drawGallery() {
  const list = $("gallery");
  list.replaceChildren();
  if (!state.gallery.length) {
    const li = document.createElement("li");
    li.className = "empty";
    li.textContent = "Images you make appear here.";
    list.append(li);
    return;
  }
  state.gallery.forEach((entry, i) => {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.title = `seed ${entry.seed} · truncation ${entry.truncation.toFixed(2)}`;
    button.dataset.index = String(i);
    const img = document.createElement("img");
    img.className = "pixelated";
    img.src = entry.url;
    img.alt = `seed ${entry.seed}`;
    const label = document.createElement("span");
    label.textContent = entry.seed;
    button.append(img, label);
    button.addEventListener("click", () => restore(entry));
    li.append(button);
    list.append(li);
  });
  markCurrent();
}

function markCurrent() {
  document.querySelectorAll("#gallery button").forEach((b) => {
    const entry = state.gallery[Number(b.dataset.index)];
    b.classList.toggle("current", Boolean(entry) && entry.url === state.mainUrl);
  });
}

function restore(entry) {
  state.seed = entry.seed;
  state.truncation = entry.truncation;
  state.offsets = entry.offsets.slice();
  $("truncation").value = String(entry.truncation);
  $("truncation-out").textContent = entry.truncation.toFixed(2);
  syncSliders();
  // The stored image is exactly this request's result: show it without asking the server again.
  state.requestId++;
  if (state.controller) state.controller.abort();
  const previous = state.mainUrl;
  state.mainUrl = entry.url;
  $("main-image").src = entry.url;
  $("main-image").dataset.seed = String(entry.seed);
  if (previous && !state.gallery.some((g) => g.url === previous)) URL.revokeObjectURL(previous);
  $("seed-readout").textContent = entry.seed;
  $("seed").value = entry.seed;
  $("interp-from").value = entry.seed;
  history.replaceState(null, "", `#seed=${entry.seed}`);
  $("canvas").classList.remove("loading");
  markCurrent();
}

// ------------------------------------------------------------------ latent sliders

function buildSliders(data) {
  const box = $("sliders");
  box.replaceChildren();
  state.directions = data.directions;
  state.offsets = data.directions.map(() => 0);
  data.directions.forEach((d, i) => {
    const wrap = document.createElement("div");
    wrap.className = "slider-field";
    const head = document.createElement("div");
    head.className = "slider-head";
    const label = document.createElement("label");
    label.className = "field";
    label.htmlFor = `dir-${i}`;
    label.textContent = `${d.label}`;
    const share = document.createElement("span");
    share.className = "hint";
    share.textContent = ` · ${(100 * d.explained_variance_ratio).toFixed(0)}% of variance`;
    label.append(share);
    const out = document.createElement("output");
    out.id = `dir-${i}-out`;
    out.textContent = "0.0";
    head.append(label, out);
    const input = document.createElement("input");
    input.type = "range";
    input.id = `dir-${i}`;
    input.min = "-3";
    input.max = "3";
    input.step = "0.1";
    input.value = "0";
    input.addEventListener("input", () => {
      state.offsets[i] = Number(input.value);
      out.textContent = Number(input.value).toFixed(1);
      renderSoon();
    });
    wrap.append(head, input);
    box.append(wrap);
  });
  $("directions-note").textContent = data.method === "ganspace"
    ? "Main axes of variation of the generator's first layer (GANSpace), in standard deviations of z."
    : "Main axes along which real images spread in latent space (PCA of posterior means), in standard deviations.";
}

function syncSliders() {
  state.offsets.forEach((v, i) => {
    const input = $(`dir-${i}`);
    if (input) {
      input.value = String(v);
      $(`dir-${i}-out`).textContent = v.toFixed(1);
    }
  });
}

// ------------------------------------------------------------------ actions

async function download() {
  const button = $("download");
  button.disabled = true;
  try {
    const scale = Math.max(1, Math.min(16, Math.floor(512 / (state.info ? state.info.resolution : 32))));
    const response = await postJSON("/api/generate", requestBody({ scale }));
    const url = URL.createObjectURL(await response.blob());
    const a = document.createElement("a");
    a.href = url;
    a.download = `${slug(state.info ? state.info.name : "latentforge")}-seed${state.seed}.png`;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 2000);
  } catch (err) {
    toast(err.message);
  } finally {
    button.disabled = false;
  }
}

let gifUrl = null;
async function playInterpolation() {
  const from = clampSeed($("interp-from").value);
  const to = clampSeed($("interp-to").value);
  if (from === null || to === null) {
    toast("Enter two seeds to interpolate between.");
    return;
  }
  const button = $("play");
  button.disabled = true;
  try {
    const body = {
      seeds: [from, to],
      frames: Number($("frames").value),
      loop: true,
      duration_ms: 70,
      truncation: state.truncation,
    };
    const offsets = trimmedOffsets(state.offsets);
    if (offsets.length) body.offsets = offsets;
    const cls = $("class");
    if (!$("class-field").hidden && cls.value !== "") body.class = Number(cls.value);
    const response = await postJSON("/api/interpolate", body);
    if (gifUrl) URL.revokeObjectURL(gifUrl);
    gifUrl = URL.createObjectURL(await response.blob());
    $("gif").src = gifUrl;
    $("gif-wrap").hidden = false;
  } catch (err) {
    toast(err.message);
  } finally {
    button.disabled = false;
  }
}

let reconUrl = null;
async function reconstruct() {
  const file = $("upload").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file);
  form.append("invert", $("invert").checked ? "true" : "false");
  const cls = $("class");
  if (!$("class-field").hidden && cls.value !== "") form.append("class", cls.value); // a conditional VAE needs it
  try {
    const response = await api("/api/reconstruct", { method: "POST", body: form });
    if (reconUrl) URL.revokeObjectURL(reconUrl);
    reconUrl = URL.createObjectURL(await response.blob());
    $("recon").src = reconUrl;
    $("recon-wrap").hidden = false;
  } catch (err) {
    toast(err.message);
  }
}

function toggleTheme() {
  const root = document.documentElement;
  const dark = root.dataset.theme
    ? root.dataset.theme === "dark"
    : window.matchMedia("(prefers-color-scheme: dark)").matches;
  root.dataset.theme = dark ? "light" : "dark";
  try { localStorage.setItem("latentforge-theme", root.dataset.theme); } catch (_) { /* private mode */ }
}

// ------------------------------------------------------------------ start

function showInfo(info) {
  state.info = info;
  document.title = `${info.name} · latentforge`;
  $("model-name").textContent = info.name;
  const chips = [
    info.architecture.toUpperCase(),
    `${info.resolution}×${info.resolution}${info.channels === 1 ? " grey" : " RGB"}`,
    `z ${info.z_dim}`,
    `${info.steps.toLocaleString()} steps`,
  ];
  $("model-chips").replaceChildren(...chips.map((text) => {
    const span = document.createElement("span");
    span.className = "chip";
    span.textContent = text;
    return span;
  }));
  if (info.conditional && info.classes) {
    const select = $("class");
    const any = new Option("any", "");
    select.replaceChildren(any, ...info.classes.map((name, i) => new Option(name, String(i))));
    $("class-field").hidden = false;
    select.addEventListener("change", () => render({ remember: true }));
  }
  if (info.family === "vae") { // the same knob: a VAE samples z ~ N(0, t^2 I)
    $("truncation-label").textContent = "Temperature";
    $("truncation-hint").textContent = "Below 1: more typical images, less varied. Above 1: more varied, stranger.";
  }
  $("vae-card").hidden = !info.can_reconstruct;
  $("frames").max = String(Math.min(120, info.limits.max_frames));
}

function wire() {
  $("another").addEventListener("click", () => setSeed(randomSeed()));
  $("download").addEventListener("click", download);
  $("seed-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const seed = clampSeed($("seed").value);
    if (seed === null) toast("A seed is a whole number from 0 to 4294967295.");
    else setSeed(seed);
  });
  $("truncation").addEventListener("input", () => {
    state.truncation = Number($("truncation").value);
    $("truncation-out").textContent = state.truncation.toFixed(2);
    renderSoon();
  });
  $("reset-sliders").addEventListener("click", () => {
    state.offsets = state.offsets.map(() => 0);
    syncSliders();
    render();
  });
  $("frames").addEventListener("input", () => { $("frames-out").textContent = $("frames").value; });
  $("play").addEventListener("click", playInterpolation);
  $("upload").addEventListener("change", reconstruct);
  $("invert").addEventListener("change", reconstruct);
  $("theme-toggle").addEventListener("click", toggleTheme);
  document.addEventListener("keydown", (e) => {
    if (e.target.closest("input, select, textarea") || e.metaKey || e.ctrlKey || e.altKey) return;
    if (e.key === "n" || e.key === "N") setSeed(randomSeed());
    else if (e.key === "ArrowRight") setSeed(Math.min(state.seed + 1, SEED_MAX));
    else if (e.key === "ArrowLeft") setSeed(Math.max(state.seed - 1, 0));
  });
}

async function start() {
  try {
    const saved = localStorage.getItem("latentforge-theme");
    if (saved === "light" || saved === "dark") document.documentElement.dataset.theme = saved;
  } catch (_) { /* private mode */ }
  wire();
  drawGallery();
  const fromHash = /seed=(\d+)/.exec(location.hash);
  state.seed = fromHash ? clampSeed(fromHash[1]) : randomSeed();
  $("interp-to").value = randomSeed();
  try {
    showInfo(await (await api("/api/info")).json());
  } catch (err) {
    toast(`Could not reach the model: ${err.message}`);
    return;
  }
  render({ remember: true });
  try {
    buildSliders(await (await api("/api/directions")).json());
  } catch (err) {
    $("sliders").replaceChildren();
    $("directions-note").textContent = `Sliders unavailable: ${err.message}`;
  }
}

start();
