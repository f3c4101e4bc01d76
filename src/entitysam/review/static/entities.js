// entitysam view: the entity list, timeline and thumbnails, selection, and the edits (plain JS;
// loaded after player.js, whose viewer, caches and drawing it uses).
"use strict";

// ---- entity list and timeline --------------------------------------------------------------
function applyState(state) {
  state.byId = new Map(state.entities.map((e) => [e.id, e]));
  // the original ids never change during a run: the positions of the decoded frames stay valid
  if (!viewer.position) viewer.position = new Map(state.ids.map((id, k) => [id, k]));
  viewer.state = state;
  for (const id of [...viewer.selected]) if (!state.byId.has(id)) viewer.selected.delete(id);
  // the result replaced or deleted on disk: said for as long as it lasts (Save and Export refuse it)
  $("on-disk").textContent = state.changed_on_disk || "";
  // the unsaved edits' draft: restored when the page opened, set aside, or not kept (and why)
  $("draft").textContent = state.draft || "";
  $("undo").disabled = !state.can_undo;
  $("redo").disabled = !state.can_redo;
  buildList();
  buildTimeline();
  updateSelection();
  redraw();
  updateHover();
}
function fmtScore(s) { return typeof s === "number" ? s.toFixed(2) : ""; }
function buildList() {
  const body = document.querySelector("#entities tbody");
  const focused = document.activeElement?.closest?.("tr.entity")?.dataset.id;  // rebuilt below: refocused
  body.textContent = "";
  for (const e of viewer.state.entities) {
    const tr = document.createElement("tr");
    tr.className = "entity" + (e.hidden ? " hidden" : "");
    tr.dataset.id = e.id;
    const frames = e.first_frame === null ? "" : `${e.first_frame}\u2013${e.last_frame}`;
    tr.innerHTML = `<td><span class="swatch"></span></td><td class="num">${e.id}</td>` +
      `<td><img alt="" loading="lazy"></td><td class="label"></td><td class="num">${fmtScore(e.score)}</td>` +
      `<td class="num">${frames}</td><td class="num">${e.area ?? ""}</td>`;
    tr.querySelector(".swatch").style.background = cssColor(e.color);
    tr.querySelector(".label").textContent = (e.hidden ? "(hidden) " : "") + (e.label || "");
    tr.querySelector(".label").title = e.label || "";  // the whole label; the cell cuts a long one
    tr.addEventListener("click", (ev) => { selectEntity(e.id, ev.shiftKey || ev.ctrlKey || ev.metaKey); });
    tr.tabIndex = 0;  // keyboard: Tab to the list, Up/Down move, Enter or Space select (Shift/Ctrl add)
    tr.addEventListener("keydown", (ev) => rowKey(ev, tr, e.id));
    tr.addEventListener("mouseenter", () => setHovered(e.id));
    tr.addEventListener("mouseleave", () => setHovered(0));
    body.appendChild(tr);
  }
  if (focused !== undefined) body.querySelector(`tr[data-id="${focused}"]`)?.focus();
  const withThumb = viewer.state.entities.filter((e) => e.thumb);
  withThumb.sort((a, b) => parseInt(a.thumb, 10) - parseInt(b.thumb, 10));  // the key starts with its frame
  for (const e of withThumb) {
    const img = body.querySelector(`tr[data-id="${e.id}"] img`);
    const wanted = () => viewer.state.byId.get(e.id)?.thumb === e.thumb;  // not merged away or changed meanwhile
    thumbnail(versioned(`/api/thumbs/${e.id}.png?k=${e.thumb}`), wanted).then((src) => { if (src) img.src = src; });
  }
}

function rowKey(ev, tr, id) {
  if (ev.key === " " && !focusByKeyboard) return;  // a row clicked with the mouse: Space plays (app.js)
  if (ev.key === "Enter" || ev.key === " ") selectEntity(id, ev.shiftKey || ev.ctrlKey || ev.metaKey);
  else if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
    (ev.key === "ArrowDown" ? tr.nextElementSibling : tr.previousElementSibling)?.focus();
  } else return;
  ev.preventDefault();
  ev.stopPropagation();  // not the page's shortcuts (Space: play)
}

// ---- entity thumbnails: one at a time, in frame order, once the first frames are fetched -------
// The server cuts each from its source frame, which it decodes from the video: in frame order
// that is one forward pass (on a cursor of its own); asked all at once, as <img> tags do, they
// cost a pass each and slowed the first seconds of scrubbing by a quarter (measured).
const thumbs = new Map();  // url -> Promise<object URL | null>
let thumbsQueue = new Promise((resolve) => { viewer.startThumbnails = resolve; });
// wanted(): whether the picture is still the entity's when its turn comes; else it is not asked
// (the server would answer 404 for an entity gone, or decode a frame for nothing).
function thumbnail(url, wanted) {
  if (!thumbs.has(url)) {
    thumbsQueue = thumbsQueue.then(async () => {
      if (!wanted()) { thumbs.delete(url); return null; }  // asked again if it comes back (an undo)
      const res = await fetchRead(url);
      if (res.status === 409) resultChanged(res);
      return res.ok ? URL.createObjectURL(await res.blob()) : null;
    }).catch(() => null);
    thumbs.set(url, thumbsQueue);
  }
  return thumbs.get(url);
}
function buildTimeline() {
  const box = $("timeline");
  box.textContent = "";
  const n = viewer.info.num_frames;
  for (const e of viewer.state.entities) {
    const row = document.createElement("div");
    row.className = "tl-row";
    row.dataset.id = e.id;
    const label = document.createElement("span");
    label.className = "tl-id"; label.textContent = e.id;
    const strip = document.createElement("canvas");
    strip.width = Math.max(n, 1); strip.height = 1;
    const ctx = strip.getContext("2d");
    ctx.fillStyle = cssColor(e.color);
    for (const f of e.presence) ctx.fillRect(f, 0, 1, 1);
    row.append(label, strip);
    row.addEventListener("click", (ev) => {
      const rect = strip.getBoundingClientRect();
      if (ev.target === strip) showFrame(Math.floor((ev.clientX - rect.left) / rect.width * n));
      selectEntity(e.id, ev.shiftKey || ev.ctrlKey || ev.metaKey);
    });
    row.addEventListener("mouseenter", () => setHovered(e.id));
    row.addEventListener("mouseleave", () => setHovered(0));
    box.appendChild(row);
  }
  const cursor = document.createElement("div");
  cursor.id = "tl-cursor";
  box.appendChild(cursor);
  updateTimelineCursor();
}
function updateTimelineCursor() {
  const cursor = $("tl-cursor"), strip = document.querySelector(".tl-row canvas");
  if (!cursor || !strip || !viewer.info) return;
  const box = $("timeline").getBoundingClientRect(), rect = strip.getBoundingClientRect();
  const x = rect.left - box.left + (viewer.frame + 0.5) / viewer.info.num_frames * rect.width;
  cursor.style.cssText = `position:absolute;pointer-events:none;width:1px;background:#fff;top:0;` +
    `height:${$("timeline").scrollHeight}px;left:${x}px`;
}
function selectEntity(id, add) {
  if (!add) { viewer.selected.clear(); viewer.selected.add(id); }
  else if (viewer.selected.has(id)) viewer.selected.delete(id);
  else viewer.selected.add(id);
  updateSelection();
  prefillLabel();
  redraw();
}
viewer.selectEntity = selectEntity;
// The label field holds the selected entities' label once the user selects them (the same label
// for all, else empty), so editing a label is no retyping. Only on a selection by the user: a state
// refresh (another tab's edit, focus) never overwrites what is being typed.
function prefillLabel() {
  const labels = new Set([...viewer.selected].map((id) => entityById(id)?.label || ""));
  $("label-text").value = labels.size === 1 ? [...labels][0] : "";
}
function setHovered(id) {
  if (viewer.hovered === id) return;
  viewer.hovered = id;
  for (const el of document.querySelectorAll(".entity, .tl-row")) el.classList.toggle("hovered", +el.dataset.id === id);
  redraw();
}
function updateSelection() {
  for (const el of document.querySelectorAll(".entity, .tl-row")) {
    el.classList.toggle("selected", viewer.selected.has(+el.dataset.id));
  }
  const row = document.querySelector(`tr.entity.selected`);
  if (row) row.scrollIntoView({block: "nearest"});
  const n = viewer.selected.size;
  $("merge").disabled = n < 2;
  $("split").disabled = n !== 1;
  for (const b of ["hide", "delete", "label"]) $(b).disabled = n === 0;
}

// ---- the image: hover and click select entities --------------------------------------------
function idAtEvent(ev) {
  if (!current) return 0;
  const canvas = $("overlay-canvas"), rect = canvas.getBoundingClientRect();
  const x = Math.floor((ev.clientX - rect.left) / rect.width * viewer.info.width);
  const y = Math.floor((ev.clientY - rect.top) / rect.height * viewer.info.height);
  if (x < 0 || y < 0 || x >= viewer.info.width || y >= viewer.info.height) return 0;
  return currentAt(current.ids[y * viewer.info.width + x], viewer.frame, current);
}
// the entity under the pointer, named under the image: again whenever the frame or the edit
// changes under a still pointer (the line kept naming what had been there)
let pointer = null;  // the pointer's last position over the image (client coordinates), null when off it
function updateHover() {
  if (!pointer) return;
  const id = idAtEvent(pointer), ent = id ? entityById(id) : null;
  setHovered(id);
  $("hover-label").textContent = ent ? `entity ${id}${ent.label ? " \u00b7 " + ent.label : ""}` : "";
}
viewer.idAt = (x, y) => current ? currentAt(current.ids[y * viewer.info.width + x], viewer.frame, current) : 0;

// ---- edits ---------------------------------------------------------------------------------
// The page's changes go to the server one at a time, each sent once the one before has answered
// and with the version that answer gave: two quick Ctrl+Z are two undos, never one refused as made
// on a version the page had not seen yet.
let changes = Promise.resolve();
function queued(task) {
  const run = changes.then(task);
  changes = run.catch(() => {});
  return run;
}
// resolves to whether the server applied it
function edit(op) {
  return queued(async () => {
    try {
      const res = await post("/api/edits", op);
      applyState(await res.json());
      setStatus(`${op.op} done`);
      return true;
    } catch (err) { setStatus(failed(op.op, err), true); return false; }
  });
}
viewer.edit = edit;
// "what: why"; the server's edit errors already start with the op's name ("split: entity 3 ...")
function failed(what, err) {
  return err.message.startsWith(`${what}: `) ? err.message : `${what}: ${err.message}`;
}
function undoRedo(which) {
  return queued(async () => {
    if (!viewer.state[`can_${which}`]) { setStatus(`nothing to ${which}`); return; }  // Ctrl+Z: the button is off
    try { applyState(await (await post(`/api/${which}`)).json()); setStatus(`${which} done`); }
    catch (err) { setStatus(`${which}: ${err.message}`, true); }
  });
}
// Another tab or window of the same viewer may have changed the edit: the page shows the current
// one whenever it comes back into view (a change it sends meanwhile is refused anyway: post()).
function refreshState() {
  if (!viewer.state) return Promise.resolve();
  return queued(async () => {
    const state = await getJSON("/api/state");
    $("on-disk").textContent = state.changed_on_disk || "";
    $("draft").textContent = state.draft || "";
    if (state.version === viewer.state.version) return;
    applyState(state);
    setStatus("the edit was changed in another tab or window: this page shows it now");
  }).catch(() => {});
}
const selectedIds = () => [...viewer.selected];
function hideSelected() {
  const ids = selectedIds();
  const allHidden = ids.every((id) => entityById(id)?.hidden);
  return edit({op: allHidden ? "show" : "hide", ids});
}
// Save is off while a save runs (a double click saved two revisions of one edit; the server also
// writes no second revision when nothing changed since the last Save, and names that one)
function save() {
  $("save").disabled = true;
  return queued(async () => {
    try {
      const res = await (await post("/api/save")).json();
      setStatus(res.new === false ? `no change since ${res.name} was saved` : `saved ${res.name}`);
      viewer.lastSave = res;
      $("draft").textContent = "";  // the draft is cleared by a save (a notice of one not kept: next state)
      refreshDraft();
    } catch (err) { setStatus(`save: ${err.message}`, true); }
    finally { $("save").disabled = false; }
  });
}
function refreshDraft() {
  getJSON("/api/state").then((state) => { $("draft").textContent = state.draft || ""; }).catch(() => {});
}
// The file name of a download: RFC 5987's filename* (UTF-8: a video named beyond ASCII) when the
// server sends one, else the plain filename.
function downloadName(disposition) {
  const utf8 = disposition.match(/filename\*=UTF-8''([^;]+)/)?.[1];
  if (utf8) {
    try { return decodeURIComponent(utf8); } catch (err) { /* malformed: the plain name below */ }
  }
  return disposition.match(/filename="([^"]+)"/)?.[1];
}
function exportResult() {
  const fmt = $("export-format").value;
  return queued(async () => {
    try {
      const res = await post(`/api/export?format=${encodeURIComponent(fmt)}`);
      const name = downloadName(res.headers.get("Content-Disposition") || "") || `export-${fmt}`;
      const url = URL.createObjectURL(await res.blob());
      const a = document.createElement("a");
      a.href = url; a.download = name; document.body.appendChild(a); a.click(); a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
      setStatus(`exported ${name}`);
    } catch (err) { setStatus(`export: ${err.message}`, true); }
  });
}
