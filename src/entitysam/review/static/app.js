// entitysam view: wiring the page together and starting (plain JS; loaded last, after idmaps.js,
// player.js and entities.js, which share the page's global scope as classic scripts).
"use strict";

// ---- wiring --------------------------------------------------------------------------------
function wire() {
  $("play").onclick = togglePlay;
  $("prev").onclick = () => { pause(); showFrame(viewer.frame - 1); };
  $("next").onclick = () => { pause(); showFrame(viewer.frame + 1); };
  $("scrubber").addEventListener("input", (ev) => { pause(); showFrame(+ev.target.value, true); });
  $("opacity").addEventListener("input", (ev) => { viewer.opacity = ev.target.value / 100; redraw(); });
  $("contours").addEventListener("change", (ev) => { viewer.contours = ev.target.checked; redraw(); });
  $("ids").addEventListener("change", (ev) => { viewer.showIds = ev.target.checked; redraw(); });
  const overlay = $("overlay-canvas");
  overlay.addEventListener("mousemove", (ev) => { pointer = {clientX: ev.clientX, clientY: ev.clientY}; updateHover(); });
  overlay.addEventListener("mouseleave", () => { pointer = null; setHovered(0); $("hover-label").textContent = ""; });
  overlay.addEventListener("click", (ev) => {
    const id = idAtEvent(ev);
    if (id) selectEntity(id, ev.shiftKey || ev.ctrlKey || ev.metaKey);
  });
  $("undo").onclick = () => undoRedo("undo");
  $("redo").onclick = () => undoRedo("redo");
  $("save").onclick = save;
  $("export").onclick = exportResult;
  $("hide").onclick = hideSelected;
  $("delete").onclick = () => edit({op: "delete", ids: selectedIds()});
  $("merge").onclick = () => { const ids = selectedIds(); return edit({op: "merge", ids, into: ids[0]}); };
  $("split").onclick = () => edit({op: "split", id: selectedIds()[0], frame: viewer.frame});
  $("label").onclick = async () => {  // one edit per entity; none after one refused (the page now shows another edit)
    for (const id of selectedIds()) if (!await edit({op: "label", id, text: $("label-text").value})) break;
  };
  $("label-text").addEventListener("keydown", (ev) => { if (ev.key === "Enter" && !$("label").disabled) $("label").click(); });
  document.addEventListener("keydown", (ev) => {
    if (ownKey(ev)) return;
    if (ev.key === "ArrowRight") { ev.preventDefault(); pause(); showFrame(viewer.frame + 1); }
    else if (ev.key === "ArrowLeft") { ev.preventDefault(); pause(); showFrame(viewer.frame - 1); }
    else if (ev.key === " ") { ev.preventDefault(); togglePlay(); }
    else if ((ev.ctrlKey || ev.metaKey) && ev.key.toLowerCase() === "z") { ev.preventDefault(); undoRedo(ev.shiftKey ? "redo" : "undo"); }
    else if ((ev.ctrlKey || ev.metaKey) && ev.key.toLowerCase() === "y") { ev.preventDefault(); undoRedo("redo"); }
  });
  // the stage's size changes with the window and with the rows of the timeline below it (built
  // once the state comes, one more per split, one less per delete): the canvases follow both
  new ResizeObserver(() => { fitStage(); updateTimelineCursor(); }).observe($("stage"));
  window.addEventListener("focus", refreshState);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refreshState(); });
}
// Keys the focused control uses itself, not the page's shortcuts: all of them in the label field,
// arrows in a slider (the opacity; the scrubber steps a frame either way) or menu, Space in a menu
// and on a button or checkbox (or entity row) reached with Tab, which it presses. After a mouse
// click on a button, a row or the scrubber, Space still plays and pauses. (How the focus came is
// tracked here: :focus-visible is no test, a key pressed on a clicked element makes it match.)
let focusByKeyboard = false;
document.addEventListener("pointerdown", () => { focusByKeyboard = false; }, true);
document.addEventListener("keydown", (ev) => { if (ev.key === "Tab") focusByKeyboard = true; }, true);
function ownKey(ev) {
  const t = ev.target, type = t.tagName === "INPUT" ? t.type : t.tagName;
  if (type === "text" || type === "TEXTAREA") return true;
  if ((type === "range" || type === "SELECT") && ev.key.startsWith("Arrow")) return true;
  if (type === "SELECT") return ev.key === " ";
  return ev.key === " " && (type === "BUTTON" || type === "checkbox") && focusByKeyboard;
}
// the canvases keep the video's resolution; CSS scales them to the largest size that fits, each
// pixel as wide as the input's (anamorphic video: 720x576 PAL with 16:15 pixels shows 768 wide)
function fitStage() {
  if (!viewer.info) return;
  const box = $("stage").getBoundingClientRect();
  const [sw, sh] = viewer.info.sample_aspect_ratio || [1, 1];
  const shownWidth = viewer.info.width * sw / sh;
  const scale = Math.min(box.width / shownWidth, box.height / viewer.info.height);
  for (const id of ["frame-canvas", "overlay-canvas"]) {  // at least 1 pixel: a 1x1000 video is a line, not nothing
    $(id).style.width = `${Math.max(1, Math.floor(shownWidth * scale))}px`;
    $(id).style.height = `${Math.max(1, Math.floor(viewer.info.height * scale))}px`;
  }
}

// The smallest of width, width/2, width/4, width/8 (rounded up, >= 320 columns unless the video is
// narrower) that covers `shown` columns. These are the sizes that cost the server least: a source
// JPEG is sent as it is at full width and decoded by libjpeg's DCT scaling at the fractions, a
// video frame is encoded as decoded or box-averaged; resampling a 1080p frame to any other width
// (e.g. 1280 columns) took the server longer than decoding and encoding the frame.
// pixel: [width, height] of a stored pixel; an anamorphic frame is shown widened by it, so a
// screen column covers height/width stored columns (16:15 PAL asked 1/15 more than it shows).
function frameWidthFor(shown, width, pixel = [1, 1]) {
  shown = shown * pixel[1] / pixel[0];
  let best = width;
  for (const f of [2, 4, 8]) {
    const w = Math.ceil(width / f);
    if (w >= shown && w >= 320) best = w;
  }
  return best;
}

async function start() {
  wire();
  const [info, state, exports] = await Promise.all([getJSON("/api/video"), getJSON("/api/state"),
                                                    getJSON("/api/exports").catch(() => ({formats: []}))]);
  viewer.info = info;
  document.title = `${info.name} - entitysam view`;
  $("title").textContent = `${info.name}  ${info.width}\u00d7${info.height}, ${info.num_frames} frames @ ${info.fps} fps`;
  // Frames come at the width the screen shows, rounded up to the video's width or 1/2, 1/4, 1/8
  // of it (frameWidthFor). The overlay keeps the id maps' full resolution; CSS gives both canvases
  // the same size on screen.
  const shown = $("stage").getBoundingClientRect().width * (window.devicePixelRatio || 1);
  viewer.frameWidth = frameWidthFor(shown, info.width, info.sample_aspect_ratio || [1, 1]);
  $("frame-canvas").width = viewer.frameWidth;
  $("frame-canvas").height = Math.max(1, Math.round(info.height * viewer.frameWidth / info.width));
  $("overlay-canvas").width = info.width; $("overlay-canvas").height = info.height;
  // a decoded frame: its bitmap, plus its runs and boundary pixels (estimated at 1 byte a pixel)
  const frameBytes = info.width * info.height + 4 * $("frame-canvas").width * $("frame-canvas").height;
  viewer.decodedFrames = Math.max(8, Math.min(COMPRESSED_FRAMES, Math.floor(DECODED_BYTES / frameBytes)));
  $("scrubber").max = info.num_frames - 1;
  fitStage();
  for (const fmt of exports.formats) $("export-format").add(new Option(fmt, fmt));
  $("export").disabled = exports.formats.length === 0;
  if (!TOKEN) setStatus("no token: viewing only (edits need the URL printed by entitysam view)", true);
  applyState(state);
  await showFrame(0);
  viewer.ready = true;
  fetchAllInBackground();
  // thumbnails after the frames the player fetches first (those around frame 0)
  const first = [];
  for (let k = 0; k <= PREFETCH_AHEAD && k < info.num_frames; k++) first.push(frameBlobs(k).catch(() => null));
  Promise.all(first).then(() => viewer.startThumbnails());
}
start().catch((err) => setStatus(`cannot start: ${err.message || err}`, true));
