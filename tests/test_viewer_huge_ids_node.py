"""The player's id tables (static/idmaps.js indexRuns, static/player.js lookupAt / currentAt /
frameTables) run under node on the runs and the /api/state of a result holding id 2**24 - 1:
the tables are as long as the entity list, and every pixel's current id is the server's."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the viewer needs the `viewer` extra (starlette, uvicorn)")

from _review_result import N, make_result  # noqa: E402
from entitysam.review.idruns import encode_id_runs  # noqa: E402
from entitysam.review.server import STATIC_DIR, Viewer  # noqa: E402

HUGE = 2**24 - 1
UNLISTED = 4242  # in a map, not in panoptic.json: shown as it is

SCRIPT = r"""
const fs = require("fs");
const {decodeIdRuns, idsFromRuns, indexRuns} = require(process.argv[1]);
const app = fs.readFileSync(process.argv[2], "utf8");
const start = app.indexOf("function lookupAt("), stop = app.indexOf("// ---- drawing");
const input = JSON.parse(fs.readFileSync(0, "utf8"));
const state = input.state;
state.byId = new Map(state.entities.map((e) => [e.id, e]));
const viewer = {state, opacity: 0.5, selected: new Set(), hovered: 0,
                position: new Map(state.ids.map((id, k) => [id, k]))};
const {currentAt, frameTables} = new Function("viewer", app.slice(start, stop) +
                                              "; return {currentAt, frameTables};")(viewer);
const out = [];
for (const {frame, runs} of input.frames) {
  const b = Buffer.from(runs, "base64");
  const f = decodeIdRuns(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));
  Object.assign(f, indexRuns(f.runIds, viewer.position, state.ids.length));
  const ids = idsFromRuns({runIds: f.runIdx, runLengths: f.runLengths, maxId: f.maxIdx}, input.width, input.height);
  const {cur, fill} = frameTables(frame, f);
  const current = Array.from(ids, (k) => currentAt(k, frame, f));
  out.push({current, table: cur.length, extra: f.extra, fromTable: Array.from(ids, (k) => cur[k]),
            filled: Array.from(ids, (k) => fill[k] !== 0)});
}
process.stdout.write(JSON.stringify(out));
"""


def run_node(state, frames, width, height):
    node = shutil.which("node")
    if node is None:
        pytest.skip("the player's table test needs node")
    payload = {"state": state, "width": width, "height": height,
               "frames": [{"frame": t, "runs": base64.b64encode(r).decode()} for t, r in frames]}
    proc = subprocess.run([node, "-e", SCRIPT, str(STATIC_DIR / "idmaps.js"), str(STATIC_DIR / "player.js")],
                          input=json.dumps(payload), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_player_tables_of_id_2_24_minus_1_are_small_and_match_the_server(tmp_path):
    viewer = Viewer(make_result(tmp_path, big_id=HUGE), token="t")
    viewer.apply({"op": "merge", "ids": [3, HUGE], "into": HUGE})
    viewer.apply({"op": "split", "id": HUGE, "frame": 3, "new_id": 7})
    viewer.apply({"op": "delete", "ids": [1]})
    viewer.apply({"op": "hide", "ids": [2]})
    state = viewer.state()
    height, width = viewer.result.size
    frames = [(t, viewer.id_runs(t)) for t in range(N)]
    # and a map holding an id that panoptic.json does not list: shown as it is, as before
    odd = viewer.result.id_map(0).copy()
    odd[20:, :4] = UNLISTED
    frames.append((0, encode_id_runs(odd)))
    out = run_node(state, frames, width, height)
    hidden = {e["id"] for e in state["entities"] if e["hidden"]}
    for (t, _), got in zip(frames, out):
        want = viewer.session.id_map(t) if got["extra"] == [] else np.where(
            odd == UNLISTED, UNLISTED, viewer.session.id_lookup(0)[viewer.result.id_index(np.where(
                odd == UNLISTED, 0, odd))])
        assert np.array_equal(np.array(got["current"]).reshape(height, width), want), t
        assert got["fromTable"] == got["current"]
        shown = {e["id"] for e in state["entities"]} - hidden
        assert got["filled"] == [c in shown for c in got["current"]]
        assert got["table"] <= len(state["ids"]) + len(got["extra"])  # 5 or 6 entries, not 2**24
    assert out[-1]["extra"] == [UNLISTED]
    assert {int(v) for v in np.unique(np.array(out[3]["current"]))} == {0, 2, 7}
