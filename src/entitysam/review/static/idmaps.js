// Decoding the RGB id PNGs of entitysam view (id = R + 256 G + 65536 B) into [H * W] ids plus the
// list of boundary pixels. Loaded twice: as a Web Worker (decoding off the page's thread, so that
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

if (typeof WorkerGlobalScope !== "undefined" && self instanceof WorkerGlobalScope) {
  self.onmessage = async (ev) => {
    const {job, png, width, height} = ev.data;
    try {
      const {ids, maxId, edges} = await decodeIdPng(png, width, height);
      self.postMessage({job, ids, maxId, edges}, [ids.buffer, edges.buffer]);
    } catch (err) {
      self.postMessage({job, error: String(err && err.message || err)});
    }
  };
}
