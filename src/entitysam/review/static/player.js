// entitysam view: the player (plain JS, no build step, no network beyond this server): the viewer's
// state, fetching and decoding frames, the edit's id lookup, drawing and playing.
//
// Frames come as JPEG (/api/frames/<i>.jpg) and the ORIGINAL id maps as row-wise runs of ids
// (/api/idmaps/<i>.runs, see idmaps.js); the current edit is applied here through the
// id lookup of /api/state (original id -> current id, per frame range after a split; indexed by the
// position of an original id in state.ids, so every table is as long as the entity list), so an edit
// never invalidates the cached frames. Edits are POSTed with the run's token and answered with the
// new state.
"use strict";

// The run's token, from the printed URL's ?token=: every request sends it in a header (reads need
// it too when the viewer listens beyond loopback; no cookie carries it: a cookie goes to every
// port of the host name). It is kept in this tab's sessionStorage (this origin's only: a page on
// another port cannot read it) for a reload, and taken out of the address bar (a shared screen; the
// browser's history still holds the URL it was opened with); where there is no storage it stays in the address bar, which a reload then needs.
const TOKEN = (() => {
  const params = new URLSearchParams(location.search);
  const given = params.get("token");
  try {
    if (given === null) return sessionStorage.getItem("entitysam-token") || "";
    sessionStorage.setItem("entitysam-token", given);
  } catch (e) { return given || ""; }
  params.delete("token");
  const rest = params.toString();
  history.replaceState(history.state, "", location.pathname + (rest ? `?${rest}` : "") + location.hash);
  return given;
})();
const withToken = (headers = {}) => (TOKEN ? {...headers, "X-EntitySAM-Token": TOKEN} : headers);
// a read of this server (its answers: JSON, frames, id maps, thumbnails), with the token
const fetchRead = (url) => fetch(url, {headers: withToken()});
const NEUTRAL = "#6b6b6b";      // the background when the source frame is gone
const PREFETCH_AHEAD = 24;      // frames fetched and decoded ahead of the one shown
const PREFETCH_BEHIND = 4;
const DECODED_BYTES = 640e6;    // decoded frames kept (bitmap + runs + boundary): ~60 of 1080p
const FETCH_PARALLEL = 4;
const DECODE_AHEAD = 6;         // of those, decoded ahead (in the workers)
const COMPRESSED_FRAMES = 600;  // fetched frames kept compressed (a 1080p frame: ~0.1-0.4 MB)

const $ = (id) => document.getElementById(id);
const viewer = {
  info: null, state: null, frame: 0, playing: false, selected: new Set(), hovered: 0,
  opacity: 0.5, contours: true, showIds: false, rendered: -1, renderCount: 0,
};
window.viewer = viewer;  // for the browser tests and the console

// ---- colours: the same formula as entitysam.io.overlay.entity_color (overlay.mp4) ----------
function hsvToRgb(h, s, v) {
  const i = Math.floor(h * 6), f = h * 6 - i, p = v * (1 - s), q = v * (1 - s * f), t = v * (1 - s * (1 - f));
  const [r, g, b] = [[v, t, p], [q, v, p], [p, v, t], [p, q, v], [t, p, v], [v, p, q]][i % 6];
  return [Math.round(r * 255), Math.round(g * 255), Math.round(b * 255)];
}
function entityColor(id) {
  const h = (id * 0.6180339887498949 + 0.11) % 1.0;
  return hsvToRgb(h, id % 2 ? 0.85 : 0.65, Math.floor(id / 2) % 2 === 0 ? 1.0 : 0.8);
}
const cssColor = (rgb) => `rgb(${rgb[0]},${rgb[1]},${rgb[2]})`;

// ---- server --------------------------------------------------------------------------------
function setStatus(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.className = isError ? "error" : "";
}
// The URLs of the result's files carry its version (?rv=, /api/video's result_version): a copy the
// browser cached of another result's file (the folder replaced, the viewer restarted on the same
// port) never answers for this one; the server answers 409 once the result on disk changed.
function versioned(url) {
  return `${url}${url.includes("?") ? "&" : "?"}rv=${encodeURIComponent(viewer.info.result_version)}`;
}
async function resultChanged(res) {
  let message = "the result changed on disk since the viewer opened it: reload the viewer";
  try { message = (await res.json()).error || message; } catch (e) { /* not JSON */ }
  setStatus(message, true);
}
async function getJSON(url) {
  const res = await fetchRead(url);
  if (!res.ok) {
    // the server's words (e.g. a stale token after a restart: "use the URL printed by entitysam view")
    let message = `${res.status}`;
    try { message = (await res.json()).error || message; } catch (e) { /* not JSON */ }
    throw new Error(`${url}: ${message}`);
  }
  return res.json();
}
// A change (edit, undo, redo, save, export) names the edit version the page shows: when another tab
// or window changed the edit since, the server does nothing and answers 409 with the current state,
// which the page shows at once (entities.js: applyState).
async function post(url, body) {
  const headers = withToken({"Content-Type": "application/json"});
  if (viewer.state) headers["X-EntitySAM-Version"] = String(viewer.state.version);
  const res = await fetch(url, {method: "POST", headers, body: body === undefined ? "{}" : JSON.stringify(body)});
  if (!res.ok) {
    let message = `${res.status}`, answer = null;
    try { answer = await res.json(); message = answer.error || message; } catch (e) { /* not JSON */ }
    if (answer && answer.state) applyState(answer.state);
    throw new Error(message);
  }
  return res;
}

// ---- frames: fetched blobs (compressed) and decoded frames, both cached --------------------
const blobs = new Map();     // frame -> Promise<{jpeg: Blob|null, runs: Blob}>
const decoded = new Map();   // frame -> Promise<{bitmap, maxId, edges, runIds, runLengths}> (LRU order)
let fetching = 0;
const fetchQueue = [];  // [{frame, run}]: the frame nearest ahead of the one shown goes first

function nextFetch() {
  let best = 0, bestCost = Infinity;
  fetchQueue.forEach((job, k) => {
    const ahead = job.frame - viewer.frame;
    const cost = ahead >= 0 ? ahead : PREFETCH_AHEAD - ahead;  // behind: after what is ahead
    if (cost < bestCost) { bestCost = cost; best = k; }
  });
  return fetchQueue.splice(best, 1)[0].run;
}
function fetchBlob(url, frame) {
  return new Promise((resolve, reject) => {
    const run = async () => {
      fetching++;
      try {
        const res = await fetchRead(url);
        if (res.status === 409) resultChanged(res);
        resolve(res.ok ? await res.blob() : null);
      } catch (err) { reject(err); } finally {
        fetching--;
        if (fetchQueue.length) nextFetch()();
      }
    };
    if (fetching < FETCH_PARALLEL) run(); else fetchQueue.push({frame, run});
  });
}
function frameBlobs(i) {
  if (!blobs.has(i)) {
    const jpeg = viewer.info.has_source === false ? Promise.resolve(null)
      : fetchBlob(versioned(`/api/frames/${i}.jpg?w=${viewer.frameWidth}`), i);
    blobs.set(i, Promise.all([jpeg, fetchBlob(versioned(`/api/idmaps/${i}.runs`), i)]).then(([jpeg, runs]) => ({jpeg, runs})));
    blobs.get(i).catch(() => blobs.delete(i));
    for (const old of blobs.keys()) {  // oldest first
      if (blobs.size <= COMPRESSED_FRAMES) break;
      if (Math.abs(old - i) > PREFETCH_AHEAD) blobs.delete(old);
    }
  }
  return blobs.get(i);
}
// id maps decode in Web Workers (idmaps.js), off this thread; without workers, here. One job per
// worker at a time, the waiting job nearest ahead of the frame shown first: while the scrubber
// moves, the frame asked for last does not wait behind frames the drag has passed.
const DECODERS = typeof Worker !== "undefined" ?
  Array.from({length: Math.min(2, navigator.hardwareConcurrency || 1)}, () => new Worker("/static/idmaps.js")) : [];
const decodeQueue = [];  // [{frame, runs, resolve, reject}]
const idle = [...DECODERS];
function pumpDecoders() {
  while (idle.length && decodeQueue.length) {
    let best = 0, bestCost = Infinity;
    decodeQueue.forEach((job, k) => {
      const ahead = job.frame - viewer.frame, cost = ahead >= 0 ? ahead : PREFETCH_AHEAD - ahead;
      if (cost < bestCost) { bestCost = cost; best = k; }
    });
    const job = decodeQueue.splice(best, 1)[0], worker = idle.pop();
    worker.onmessage = (ev) => {
      const {error, ...frame} = ev.data;
      idle.push(worker);
      if (error) job.reject(new Error(error)); else job.resolve(frame);
      pumpDecoders();
    };
    worker.postMessage({job: job.frame, runs: job.runs});
  }
}
async function decodeIds(runs, frame) {
  if (!DECODERS.length) return decodeIdRuns(await runs.arrayBuffer());
  return new Promise((resolve, reject) => { decodeQueue.push({frame, runs, resolve, reject}); pumpDecoders(); });
}
function decodedFrame(i) {
  if (decoded.has(i)) {
    const hit = decoded.get(i);
    decoded.delete(i); decoded.set(i, hit);  // most recently used last
    return hit;
  }
  const made = frameBlobs(i).then(async ({jpeg, runs}) => {
    if (!runs) throw new Error(`frame ${i}: no id map`);
    const [bitmap, idMap] = await Promise.all([jpeg ? createImageBitmap(jpeg).catch(() => null) : null,
                                               decodeIds(runs, i)]);
    return {bitmap, ...idMap};  // maxId, edges, runIds, runLengths (the ids: onScreen)
  });
  decoded.set(i, made);
  made.catch(() => decoded.delete(i));
  while (decoded.size > viewer.decodedFrames) {
    const [oldest, value] = decoded.entries().next().value;
    decoded.delete(oldest);
    value.then((f) => f.bitmap && f.bitmap.close()).catch(() => {});
  }
  return made;
}
// After opening: fetch every frame (compressed) in the background, one at a time, so that a few
// seconds later scrubbing anywhere waits for no network and no server-side encoding.
async function fetchAllInBackground() {
  const n = Math.min(viewer.info.num_frames, COMPRESSED_FRAMES);
  for (let i = 0; i < n; i++) await frameBlobs(i).catch(() => null);
  viewer.fetchedAll = true;
}
function prefetchAround(i, decodeAhead = true) {
  const n = viewer.info.num_frames;
  for (let k = 1; k <= PREFETCH_AHEAD; k++) if (i + k < n) frameBlobs(i + k);
  for (let k = 1; k <= PREFETCH_BEHIND; k++) if (i - k >= 0) frameBlobs(i - k);
  // decode only a few ahead: decoding competes with the frame shown for the CPU
  if (decodeAhead) for (let k = 1; k <= DECODE_AHEAD; k++) if (i + k < n) decodedFrame(i + k);
}

// ---- the edit's id lookup ------------------------------------------------------------------
// state.ids: the original ids (panoptic.json's, sorted, 0 first); the ids of a frame's map are
// turned into positions there once (indexRuns, idmaps.js): f.runIdx, f.ids on screen.
// state.lookup: [{start, stop, lookup: [current id per position in state.ids]}] over frame ranges
// (a split makes several); 0 = deleted. Ids not in state.ids (not in panoptic.json: a frame's
// f.extra, positions from state.ids.length on) are shown as they are.
function lookupAt(frame) {
  for (const seg of viewer.state.lookup) if (seg.start <= frame && frame < seg.stop) return seg.lookup;
  return [];
}
// the current id of position k of frame f's map
function currentAt(k, frame, f, table = lookupAt(frame)) {
  const ids = viewer.state.ids;
  if (k < table.length) return table[k];
  return k < ids.length ? ids[k] : f.extra[k - ids.length];
}
function entityById(id) { return viewer.state.byId.get(id); }

// tables indexed by position (state.ids, then f.extra): current id, fill colour and contour
// colour (RGBA packed little endian)
function frameTables(frame, f) {
  const size = f.maxIdx + 1;
  const cur = new Uint32Array(size), fill = new Uint32Array(size), edge = new Uint32Array(size);
  const base = Math.round(viewer.opacity * 255), table = lookupAt(frame);
  for (let k = 1; k < size; k++) {
    const id = currentAt(k, frame, f, table);
    cur[k] = id;
    const ent = id ? entityById(id) : null;
    if (!ent || ent.hidden) continue;
    const [r, g, b] = ent.color;
    const strong = viewer.selected.has(id) || viewer.hovered === id;
    const alpha = strong ? Math.min(255, base + 90) : base;
    fill[k] = (alpha << 24 | b << 16 | g << 8 | r) >>> 0;
    edge[k] = (255 << 24 | b << 16 | g << 8 | r) >>> 0;
  }
  return {cur, fill, edge};
}

// ---- drawing -------------------------------------------------------------------------------
let overlayImage = null;
function drawOverlay(frame, f) {
  const {width, height} = viewer.info;
  const ctx = $("overlay-canvas").getContext("2d");
  if (!overlayImage) overlayImage = ctx.createImageData(width, height);
  const out = new Uint32Array(overlayImage.data.buffer);
  const {cur, fill, edge} = frameTables(frame, f);
  const ids = f.ids, n = ids.length;
  fillRuns(out, fill, f);
  if (viewer.contours) {
    const edges = f.edges, last = n - width;
    for (let k = 0; k < edges.length; k++) {
      const p = edges[k], o = ids[p];
      if (fill[o] === 0) continue;
      const here = cur[o], x = p % width;
      if ((x + 1 < width && cur[ids[p + 1]] !== here) || (p < last && cur[ids[p + width]] !== here) ||
          (x > 0 && cur[ids[p - 1]] !== here) || (p >= width && cur[ids[p - width]] !== here)) out[p] = edge[o];
    }
  }
  ctx.putImageData(overlayImage, 0, 0);
  if (viewer.showIds) drawIds(ctx, f, cur);
}
// out[p] = fill[position of p] for every pixel, a run at a time (a long run is one native fill)
function fillRuns(out, fill, f) {
  const runIds = f.runIdx, runLengths = f.runLengths, count = runIds.length;
  for (let r = 0, p = 0; r < count; r++) {
    const len = runLengths[r], colour = fill[runIds[r]];
    if (len > 16) out.fill(colour, p, p + len);
    else for (let e = p + len, q = p; q < e; q++) out[q] = colour;
    p += len;
  }
}
function drawIds(ctx, f, cur) {
  const {width} = viewer.info;
  const sums = new Map();  // current id -> [sum x, sum y, count]
  for (let p = 0; p < f.ids.length; p += 3) {  // every third pixel is plenty for a centroid
    const id = cur[f.ids[p]];
    if (!id) continue;
    let s = sums.get(id);
    if (!s) sums.set(id, s = [0, 0, 0]);
    s[0] += p % width; s[1] += Math.floor(p / width); s[2]++;
  }
  const size = Math.max(12, Math.round(viewer.info.height / 40));
  ctx.font = `bold ${size}px sans-serif`;
  ctx.textAlign = "center"; ctx.textBaseline = "middle"; ctx.lineWidth = Math.max(2, size / 6);
  for (const [id, [sx, sy, n]] of sums) {
    const ent = entityById(id);
    if (!ent || ent.hidden) continue;
    const chars = Array.from(ent.label || "");  // a label runs to 1000 characters: the first 40 here
    const label = chars.length > 40 ? `${chars.slice(0, 39).join("")}\u2026` : ent.label;
    const x = sx / n, y = sy / n, text = label ? `${id} ${label}` : `${id}`;
    ctx.strokeStyle = "black"; ctx.strokeText(text, x, y);
    ctx.fillStyle = "white"; ctx.fillText(text, x, y);
  }
}
function drawFrame(f) {
  const canvas = $("frame-canvas"), ctx = canvas.getContext("2d");
  if (f.bitmap) ctx.drawImage(f.bitmap, 0, 0, canvas.width, canvas.height);
  else { ctx.fillStyle = NEUTRAL; ctx.fillRect(0, 0, canvas.width, canvas.height); }
}

// the ids of the frame on screen: one buffer, refilled from the runs for each frame shown (the
// decoded frames keep only their runs: ~110 instead of ~80 frames kept at 1080p shown 1280 wide)
let screenIds = null;
function onScreen(f) {
  if (!f.runIdx) Object.assign(f, indexRuns(f.runIds, viewer.position, viewer.state.ids.length));  // once a frame
  screenIds = idsFromRuns({runIds: f.runIdx, runLengths: f.runLengths, maxId: f.maxIdx},
                          viewer.info.width, viewer.info.height, screenIds);
  return {...f, ids: screenIds};
}

let current = null;  // the decoded frame on screen, with its ids
async function render(i) {
  const f = onScreen(await decodedFrame(i));
  drawFrame(f);
  drawOverlay(i, f);
  current = f;
  updateHover();  // entities.js: what is under a still pointer now
  viewer.rendered = i;
  viewer.renderCount++;
}
function redraw() { if (current) drawOverlay(viewer.frame, current); }
viewer.redrawNow = redraw;
viewer.dropDecoded = () => decoded.clear();  // benchmarks: scrub with the compressed frames cached only

// showFrame: scrubbing calls it for every input event; renders are coalesced to the latest request
let pending = null, rendering = null;
function showFrame(i, scrubbing = false) {
  const n = viewer.info.num_frames;
  i = Math.max(0, Math.min(n - 1, i | 0));
  viewer.frame = i;
  $("scrubber").value = i;
  // frame positions count from 0, as the entity list, the timeline, the edits and the exports do
  $("frame-label").textContent = `frame ${i} (${i + 1} of ${n})`;
  $("frame-label").title = `source frame ${viewer.info.frame_names[i]}`;  // --start / --stride: not the position
  updateTimelineCursor();
  prefetchAround(i, !scrubbing);  // a drag skips frames: decoding ahead would be wasted
  pending = i;
  if (!rendering) rendering = (async () => {
    try {
      while (pending !== null) { const next = pending; pending = null; await render(next); }
    } catch (err) { setStatus(String(err.message || err), true); } finally { rendering = null; }
  })();
  return rendering;
}
viewer.showFrame = showFrame;

// ---- play ----------------------------------------------------------------------------------
async function play() {
  viewer.playing = true;
  $("play").textContent = "Pause";
  const period = 1000 / (viewer.info.fps || 25);
  while (viewer.playing) {
    const started = performance.now();
    if (viewer.frame >= viewer.info.num_frames - 1) { pause(); break; }
    await showFrame(viewer.frame + 1);
    const wait = period - (performance.now() - started);
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  }
}
function pause() { viewer.playing = false; $("play").textContent = "Play"; }
function togglePlay() {
  if (viewer.playing) pause();
  else { if (viewer.frame >= viewer.info.num_frames - 1) showFrame(0); play(); }
}
viewer.play = play; viewer.pause = pause;

