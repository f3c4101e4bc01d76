// Decoding the id maps of entitysam view into [H * W] ids plus the list of boundary pixels: the
// row-wise runs of /api/idmaps/<i>.runs (what the player reads: filling runs and merging the runs
// of two rows costs a fraction of a per-pixel pass) or the RGB PNGs (id = R + 256 G + 65536 B).
// Loaded twice: as a Web Worker (decoding off the page's thread, so that
// scrubbing draws while the next frames decode) and by the page (the fallback without workers).
"use strict";

let idScratch = null;  // the canvas the PNGs are drawn on (one per thread)
async function decodeIdPng(png, width, height) {
  // no colour management, no premultiplication: the RGB bytes are ids
  const bitmap = await createImageBitmap(png, {colorSpaceConversion: "none", premultiplyAlpha: "none"});
  if (!idScratch || idScratch.canvas.width !== width || idScratch.canvas.height !== height) {
    idScratch = new OffscreenCanvas(width, height).getContext("2d", {willReadFrequently: true});
  }
  idScratch.clearRect(0, 0, width, height);
  idScratch.drawImage(bitmap, 0, 0);
  bitmap.close();
  const rgba = new Uint32Array(idScratch.getImageData(0, 0, width, height).data.buffer);
  return idsAndBoundary(rgba, width, height);
}

// One pass over the decoded RGBA pixels: each becomes its id (little endian: R | G << 8 | B << 16,
// alpha dropped), kept in 16 bits when every id fits (half the memory: more frames stay decoded),
// and the pixels with a 4-neighbour of another ORIGINAL id are listed: the only candidates for a
// contour under any edit (an edit only joins or renames ids), so that a tint pass tests these
// alone (a few % of the pixels). The list may name a pixel twice, or a pixel of no entity: the
// tint pass skips those.
let boundaryScratch = new Int32Array(0);
function idsAndBoundary(rgba, width, height) {
  const n = rgba.length;
  if (boundaryScratch.length < 2 * n) boundaryScratch = new Int32Array(2 * n);
  const edges = boundaryScratch;
  let maxId = 0, k = 0;
  for (let y = 0, p = 0; y < height; y++) {
    for (let x = 0; x < width; x++, p++) {
      const id = rgba[p] & 0xffffff;
      rgba[p] = id;
      if (id > maxId) maxId = id;
      if (x > 0 && rgba[p - 1] !== id) { edges[k++] = p; edges[k++] = p - 1; }
      if (y > 0 && rgba[p - width] !== id) { edges[k++] = p; edges[k++] = p - width; }
    }
  }
  const ids = maxId < 65536 ? Uint16Array.from(rgba) : rgba;
  return {ids, maxId, edges: edges.slice(0, k)};
}

// The run-length map (entitysam.review.idruns): "EIR1", uint32 width, height, R, id bytes; R ids
// (uint16/32, padded to 4 bytes); R uint16 lengths. Runs never cross a row. Returns the runs
// (runIds, runLengths: the tint pass fills runs), maxId and the boundary pixels as
// idsAndBoundary does, but no per-pixel ids: idsFromRuns makes them for the frame on screen only
// (a decoded frame kept without them saves 2 bytes a pixel).
function decodeIdRuns(buffer) {
  const magic = new Uint8Array(buffer, 0, 4);
  if (String.fromCharCode(...magic) !== "EIR1") throw new Error("not an id run-length map");
  const [width, height, count, idBytes] = new Uint32Array(buffer, 4, 4);
  const runIds = idBytes === 2 ? new Uint16Array(buffer, 20, count) : new Uint32Array(buffer, 20, count);
  const lengthsAt = 20 + Math.ceil(count * idBytes / 4) * 4;
  const runLengths = new Uint16Array(buffer, lengthsAt, count);
  let maxId = 0;
  for (let k = 0; k < count; k++) if (runIds[k] > maxId) maxId = runIds[k];
  const n = width * height;
  const rowStart = new Uint32Array(height + 1);  // the first run of each row
  // at most: 2 entries per run start inside a row, 2 per pixel that differs from the one above
  const bound = 2 * count + 2 * n;
  if (boundaryScratch.length < bound) boundaryScratch = new Int32Array(bound);
  const edges = boundaryScratch;
  let k = 0, p = 0, row = 0;
  for (let r = 0; r < count; r++) {
    const len = runLengths[r];
    if (p % width === 0) rowStart[row++] = r;
    else { edges[k++] = p; edges[k++] = p - 1; }
    p += len;
  }
  if (p !== n || row !== height) throw new Error("the runs do not cover the map");
  rowStart[height] = count;
  for (let y = 1; y < height; y++) {  // walk the runs of the row above and of this one together
    let a = rowStart[y - 1], b = rowStart[y], endA = runLengths[a], endB = runLengths[b], x = 0;
    const base = y * width;
    while (x < width) {
      const stop = endA < endB ? endA : endB;
      if (runIds[a] !== runIds[b]) {
        for (let q = base + x, e = base + stop; q < e; q++) { edges[k++] = q; edges[k++] = q - width; }
      }
      x = stop;
      if (endA === x && x < width) endA += runLengths[++a];
      if (endB === x && x < width) endB += runLengths[++b];
    }
  }
  return {maxId, edges: edges.slice(0, k), runIds, runLengths};
}

// [H * W] ids of decodeIdRuns' runs (16 bits when every id fits, else 32) into `out` when it has
// that type and size (the player refills one buffer per frame shown), else into a new array
function idsFromRuns(f, width, height, out = null) {
  const n = width * height, Type = f.maxId < 65536 ? Uint16Array : Uint32Array;
  const ids = out && out.length === n && out.constructor === Type ? out : new Type(n);
  const runIds = f.runIds, runLengths = f.runLengths, count = runIds.length;
  for (let r = 0, p = 0; r < count; r++) { const len = runLengths[r]; ids.fill(runIds[r], p, p + len); p += len; }
  return ids;
}

// The runs' ids as positions in the result's sorted ids (state.ids of /api/state, 0 first; the
// lookup of /api/state is indexed by these positions): every per-id table of the player is as long
// as the entity list, whatever the ids (up to 2**24 - 1). position: Map id -> its position in ids.
// An id that ids does not hold (a map holding an id panoptic.json does not list) gets a position
// after them, its id in `extra` (extra[k - ids.length]): shown as it is, as before.
// Returns {runIdx (16 bits when every position fits, else 32), maxIdx, extra}.
function indexRuns(runIds, position, numIds) {
  const count = runIds.length, extra = [], extraAt = new Map();
  const idx = new Uint32Array(count);
  let lastId = -1, lastK = 0, maxIdx = 0;
  for (let r = 0; r < count; r++) {
    const id = runIds[r];
    if (id !== lastId) {
      let k = position.get(id);
      if (k === undefined) {
        k = extraAt.get(id);
        if (k === undefined) { k = numIds + extra.length; extra.push(id); extraAt.set(id, k); }
      }
      lastId = id; lastK = k;
      if (k > maxIdx) maxIdx = k;
    }
    idx[r] = lastK;
  }
  return {runIdx: maxIdx < 65536 ? Uint16Array.from(idx) : idx, maxIdx, extra};
}

if (typeof module !== "undefined" && module.exports) {  // node (the tests)
  module.exports = {decodeIdRuns, idsFromRuns, indexRuns};
}

if (typeof WorkerGlobalScope !== "undefined" && self instanceof WorkerGlobalScope) {
  self.onmessage = async (ev) => {
    const {job, runs} = ev.data;
    try {
      const {maxId, edges, runIds, runLengths} = decodeIdRuns(await runs.arrayBuffer());
      self.postMessage({job, maxId, edges, runIds, runLengths}, [edges.buffer, runIds.buffer]);
    } catch (err) {
      self.postMessage({job, error: String(err && err.message || err)});
    }
  };
}
