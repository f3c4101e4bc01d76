"""entitysam.review.export and `entitysam export`: each format read back by an independent reader
(pycocotools for COCO RLE, PIL + numpy for MOTS PNGs, xml.etree and a decoder written here for
CVAT's XML RLE) and compared pixel for pixel with the id maps the test expects."""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from _review_result import BIG_ID, H, N, W, id_maps, make_result
from entitysam.cli import main
from entitysam.errors import OutputError
from entitysam.review import EditSession, ResultFolder
from entitysam.review.export import FORMATS, export, export_bytes

# Edits before exporting: 3 hidden (not exported), 1 labelled "sky", 2 deleted from frame 6 on
# (split off, then deleted): the expected maps are computed from the ground truth here.
EDITS = [{"op": "hide", "ids": [3]}, {"op": "label", "id": 1, "text": "sky"},
         {"op": "split", "id": 2, "frame": 6, "new_id": 50}, {"op": "delete", "ids": [50]}]


def expected_maps() -> list[np.ndarray]:
    out = []
    for t, m in enumerate(id_maps()):
        m = m.copy()
        m[m == 3] = 0
        if t >= 6:
            m[m == 2] = 0
        out.append(m)
    return out


@pytest.fixture
def session(tmp_path):
    return EditSession(ResultFolder.open(make_result(tmp_path / "res")), EDITS)


def check_maps(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want) == N
    for t in range(N):
        assert got[t].shape == (H, W)
        assert np.array_equal(got[t], want[t]), f"frame {t}"


def test_mots_png_decodes_to_the_id_maps(session, tmp_path):
    out = export(session, "mots", tmp_path / "mots", class_id=2)
    inst = out / "clip" / "instances"
    marker = json.loads((out / "entitysam-export.json").read_text())
    to_entity = {int(k): v for k, v in marker["instances"].items()}
    assert max(to_entity) < 1000 and to_entity[max(to_entity)] == BIG_ID  # renumbered: 1005 > 999
    labels = (inst / "labels.txt").read_text().splitlines()
    assert labels[2 - 1] == "entity"  # datumaro/CVAT: line k names class k + 1
    got = []
    for t in range(N):
        with Image.open(inst / f"f{t:03d}.png") as im:
            assert im.mode in ("I;16", "I;16B", "I")  # 16-bit grayscale
            values = np.array(im).astype(np.int64)
        classes, instances = values // 1000, values % 1000
        assert set(np.unique(classes[values > 0]).tolist()) <= {2}
        ids = np.zeros((H, W), np.uint32)
        for inst_id in np.unique(instances[values > 0]):
            ids[instances == inst_id] = to_entity[int(inst_id)]
        got.append(ids)
    check_maps(got, expected_maps())


def decode_cvat_rle(text: str, left: int, top: int, width: int, height: int) -> np.ndarray:
    """CVAT XML RLE (written here from the documented convention, not with the exporter's code):
    run lengths over the box row by row, alternating background / mask, background first."""
    runs = [int(v) for v in text.split(",")]
    assert sum(runs) == width * height
    box = np.zeros(width * height, dtype=bool)
    pos, value = 0, False
    for run in runs:
        if value:
            box[pos:pos + run] = True
        pos += run
        value = not value
    full = np.zeros((H, W), dtype=bool)
    full[top:top + height, left:left + width] = box.reshape(height, width)
    return full


def parse_cvat(path):
    """(root, [(track element, [mask elements])]) with the documented meta checked."""
    root = ET.parse(path).getroot()
    assert root.tag == "annotations" and root.findtext("version") == "1.1"
    task = root.find("meta/task")
    assert task.findtext("mode") == "interpolation" and int(task.findtext("size")) == N
    assert (int(task.findtext("original_size/width")), int(task.findtext("original_size/height"))) == (W, H)
    labels = {lab.findtext("name"): lab for lab in task.findall("labels/label")}
    assert set(labels) == {"entity", "sky"} and {lab.findtext("type") for lab in labels.values()} == {"mask"}
    for lab in labels.values():
        spec = lab.find("attributes/attribute")
        assert spec.findtext("name") == "entity_id" and spec.findtext("input_type") == "number"
    tracks = root.findall("track")
    assert [t.get("id") for t in tracks] == [str(k) for k in range(len(tracks))]
    for track in tracks:
        assert track.get("label") in labels and int(track.get("group_id")) > 0
        for m in track:
            assert m.tag == "mask"
            assert set(m.attrib) >= {"frame", "keyframe", "outside", "occluded", "rle", "left", "top", "width",
                                     "height", "z_order"}
            assert [a.get("name") for a in m.findall("attribute")] == ["entity_id"]
    return tracks


def paint(got, m):
    """Decode one <mask> into the frame's id map (by its entity_id attribute)."""
    mask = decode_cvat_rle(m.get("rle"), *(int(m.get(k)) for k in ("left", "top", "width", "height")))
    frame = int(m.get("frame"))
    assert not got[frame][mask].any(), "masks overlap"
    got[frame][mask] = int(m.findtext("attribute"))


def test_cvat_video_xml_per_frame_tracks_survive_cvats_import_rule(session, tmp_path):
    tracks = parse_cvat(export(session, "cvat-video", tmp_path / "annotations.xml"))
    got = [np.zeros((H, W), np.uint32) for _ in range(N)]
    for track in tracks:
        masks = list(track)
        # CVAT's importer turns a mask track into the mask of its first shape: each must hold one
        assert masks[0].get("outside") == "0" and all(m.get("outside") == "1" for m in masks[1:]) and len(masks) <= 2
        if len(masks) == 2:
            assert int(masks[1].get("frame")) == int(masks[0].get("frame")) + 1
        paint(got, masks[0])
    check_maps(got, expected_maps())
    labels = {int(t[0].findtext("attribute")): t.get("label") for t in tracks}
    assert labels == {1: "sky", 2: "entity", BIG_ID: "entity"}


def test_cvat_video_xml_one_track_per_entity(session, tmp_path):
    tracks = parse_cvat(export(session, "cvat-video", tmp_path / "annotations.xml", tracks="entity"))
    assert [{m.findtext("attribute") for m in t} for t in tracks] == [{"1"}, {"2"}, {str(BIG_ID)}]
    got = [np.zeros((H, W), np.uint32) for _ in range(N)]
    for track in tracks:
        shown = {int(m.get("frame")): m.get("outside") == "0" for m in track}
        for m in track:
            if m.get("outside") == "0":
                paint(got, m)
        if track[0].findtext("attribute") in ("2", str(BIG_ID)):
            assert shown[6] is False and 7 not in shown  # closed when it stops (CVAT carries a mask forward)
    check_maps(got, expected_maps())


def test_ytvis_results_decode_with_pycocotools(session, tmp_path):
    out = export(session, "ytvis", tmp_path / "results.json", video_id=7)
    records = json.loads(out.read_text())
    assert [list(r) for r in records] == [["exported_by", "video_id", "category_id", "score", "segmentations"]] * 3
    assert {r["exported_by"] for r in records} == {"entitysam"}
    assert {r["video_id"] for r in records} == {7}
    entity_order = [1, 2, BIG_ID]
    assert [r["score"] for r in records] == pytest.approx([0.9, 0.75, 0.66])
    assert [r["category_id"] for r in records] == [2, 1, 1]  # 1 "entity", 2 "sky"
    got = [np.zeros((H, W), np.uint32) for _ in range(N)]
    for sid, r in zip(entity_order, records):
        assert len(r["segmentations"]) == N
        for t, rle in enumerate(r["segmentations"]):
            if rle is None:
                continue
            mask = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)
            assert mask.any()
            got[t][mask] = sid
    check_maps(got, expected_maps())


def test_coco_video_json_decodes_with_pycocotools(session, tmp_path):
    out = export(session, "coco-video", tmp_path / "coco.json")
    data = json.loads(out.read_text())
    assert data["videos"] == [{"id": 1, "name": "clip", "width": W, "height": H, "length": N, "fps": 5.0}]
    assert [im["frame_id"] for im in data["images"]] == list(range(N))
    cats = {c["id"]: c["name"] for c in data["categories"]}
    image_frame = {im["id"]: im["frame_id"] for im in data["images"]}
    got = [np.zeros((H, W), np.uint32) for _ in range(N)]
    for ann in data["annotations"]:
        rle = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
        mask = mask_utils.decode(rle).astype(bool)
        assert ann["area"] == int(mask_utils.area(rle)) == int(mask.sum())
        assert ann["bbox"] == [int(v) for v in mask_utils.toBbox(rle)]
        assert ann["track_id"] == ann["instance_id"] and ann["iscrowd"] == 0
        assert cats[ann["category_id"]] == ("sky" if ann["track_id"] == 1 else "entity")
        got[image_frame[ann["image_id"]]][mask] = ann["track_id"]
    check_maps(got, expected_maps())
    assert len({a["id"] for a in data["annotations"]}) == len(data["annotations"])


@pytest.mark.parametrize("fmt, name", [("mots", "m"), ("cvat-video", "a.xml"), ("ytvis", "y.json"),
                                       ("coco-video", "c.json")])
def test_exports_refuse_to_overwrite_and_leave_nothing_on_failure(session, tmp_path, fmt, name, monkeypatch):
    out = export(session, fmt, tmp_path / name)
    with pytest.raises(OutputError, match="already exists"):
        export(session, fmt, out)
    assert export(session, fmt, out, overwrite=True) == out
    before = sorted(os.listdir(tmp_path))
    real = EditSession.id_map

    def failing(self, i):
        if i == 4:
            raise OSError(28, "No space left on device")
        return real(self, i)

    monkeypatch.setattr(EditSession, "id_map", failing)
    with pytest.raises(OSError):
        export(session, fmt, tmp_path / f"new-{name}")
    with pytest.raises(OSError):
        export(session, fmt, out, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == before  # no new output, no hidden leftovers, old one intact


def test_mots_overwrite_replaces_only_an_exported_folder(session, tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "keep.jpg").write_bytes(b"x")
    with pytest.raises(OutputError, match="not a folder entitysam exported"):
        export(session, "mots", tmp_path / "photos", overwrite=True)
    assert (tmp_path / "photos" / "keep.jpg").exists()


def test_mots_overwrite_refuses_an_export_holding_files_it_did_not_write(session, tmp_path):
    out = export(session, "mots", tmp_path / "m", txt=True)
    for mine in ("notes.txt", "clip/notes.txt", "clip/instances/sub/", "other/"):
        path = out / mine
        path.mkdir() if mine.endswith("/") else path.write_text("mine")
        with pytest.raises(OutputError, match=f"did not export \\({re.escape(f'{out}/{mine}')}\\)"):
            export(session, "mots", out, overwrite=True)
        assert path.exists()
        path.rmdir() if mine.endswith("/") else path.unlink()
    assert export(session, "mots", out, overwrite=True, txt=True) == out  # the earlier export alone: replaced
    assert sorted(p.name for p in out.iterdir()) == ["clip", "clip.txt", "entitysam-export.json"]


def test_mots_overwrite_of_the_export_named_by_dot_or_dot_dot(session, tmp_path, monkeypatch):
    """-o . (from inside an earlier export) failed with a traceback (the staging folder is named
    beside the output: "." has no name); -o .. made it inside the export it replaces and then
    refused the export for holding it."""
    out = export(session, "mots", tmp_path / "m")
    for cwd, name in ((out, "."), (out / "clip", "..")):
        monkeypatch.chdir(cwd)
        (out / "clip.txt").unlink(missing_ok=True)
        assert export(session, "mots", name, overwrite=True, txt=True) == out
        assert sorted(p.name for p in out.iterdir()) == ["clip", "clip.txt", "entitysam-export.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "res"]  # no staging folder or old export left


def test_export_command(tmp_path, capsys):
    result = make_result(tmp_path / "res")
    assert set(FORMATS) == {"mots", "cvat-video", "ytvis", "coco-video"}
    out = tmp_path / "r.json"
    assert main(["export", str(result), "--format", "ytvis", "-o", str(out)]) == 0
    assert json.loads(out.read_text())[0]["video_id"] == 1
    assert main(["export", str(result), "--format", "ytvis", "-o", str(out)]) == 1
    assert "already exists: use --overwrite" in capsys.readouterr().err
    assert main(["export", str(result), "--format", "mots", "-o", str(tmp_path / "m"), "--class-id", "1", "-q",
                 "--mots-txt"]) == 0
    assert capsys.readouterr().out == "" and (tmp_path / "m" / "clip.txt").read_text().startswith("0 1001 1 ")
    assert main(["export", str(tmp_path), "--format", "coco-video", "-o", str(tmp_path / "c.json")]) == 1
    assert "not a result folder" in capsys.readouterr().err
    assert main(["export", str(result), "--format", "cvat-video", "--cvat-tracks", "entity", "-o",
                 str(tmp_path / "a.xml")]) == 0
    assert len(ET.parse(tmp_path / "a.xml").getroot().findall("track")) == 4
    assert main(["export", str(result), "--format", "pascal", "-o", str(tmp_path / "x")]) == 2


def test_export_command_prints_an_output_name_that_is_not_utf8_or_holds_control_characters(tmp_path, capsys):
    """The success line printed the -o path as it is: a name of undecodable bytes (\\udcff) made
    a strict UTF-8 stdout raise after the export was written (a traceback, exit 1), and escape
    sequences in it drove the terminal. It is shown as the error lines show names."""
    result = make_result(tmp_path / "res")
    for name, shown in (("bad\udcff.json", "bad\\udcff.json"),
                        ("esc\x1b]0;title\x07.json", "esc\\x1b]0;title\\x07.json")):
        out = tmp_path / name
        assert main(["export", str(result), "--format", "ytvis", "-o", str(out)]) == 0
        assert out.is_file()
        assert capsys.readouterr().out == f"ytvis: {tmp_path}/{shown}\n"


@pytest.mark.parametrize("fmt,name", [("ytvis", "r.json"), ("mots", "m")])
def test_export_into_a_missing_folder_is_a_usage_error(tmp_path, capsys, fmt, name):
    """-o in a folder that does not exist, or under a file, is a mistaken argument refused before
    any work (exit 2, as `metrics --json` and `segment --save-logits`): it was a failed export (1)."""
    result = make_result(tmp_path / "res")
    (tmp_path / "file").write_text("mine")
    for parent, state in ((tmp_path / "absent", "does not exist"), (tmp_path / "file", "is not a folder")):
        assert main(["export", str(result), "--format", fmt, "-o", str(parent / name)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{parent} {state}" in err, err
    assert not (tmp_path / "absent").exists() and (tmp_path / "file").read_text() == "mine"


def test_mots_txt_lines_decode_with_pycocotools(session, tmp_path):
    out = export(session, "mots", tmp_path / "mots", class_id=1, txt=True)
    to_entity = {int(k): v for k, v in json.loads((out / "entitysam-export.json").read_text())["instances"].items()}
    got = [np.zeros((H, W), np.uint32) for _ in range(N)]
    for line in (out / "clip.txt").read_text().splitlines():
        t, obj, cls, h, w, counts = line.split(" ")
        assert (int(h), int(w), int(cls), int(obj) // 1000) == (H, W, 1, 1)
        mask = mask_utils.decode({"size": [H, W], "counts": counts.encode()}).astype(bool)
        got[int(t)][mask] = to_entity[int(obj) % 1000]
    check_maps(got, expected_maps())


@pytest.mark.parametrize("txt", ["no", "False", None])
def test_mots_txt_must_be_true_or_false(session, tmp_path, txt):
    """txt="no" is truthy: it wrote the txt file the caller said no to (as overwrite="no" would
    replace an earlier export, refused the same way)."""
    from entitysam.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="txt must be True or False"):
        export(session, "mots", tmp_path / "mots", txt=txt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]


def test_export_bytes_gives_one_download_per_format(session, tmp_path):
    import io
    import zipfile

    data, name = export_bytes(session, "mots")
    assert name == "clip-mots.zip"
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert "clip/instances/labels.txt" in names and "clip/instances/f000.png" in names  # CVAT's archive root
    data, name = export_bytes(session, "ytvis")
    assert name == "clip-ytvis.json" and len(json.loads(data)) == 3
    with pytest.raises(Exception, match="unknown export format"):
        export_bytes(session, "../../etc")


def test_map_ids_equals_a_dictionary_lookup_for_small_and_huge_ids():
    from entitysam.io.idpng import MAX_ID
    from entitysam.review.export.common import map_ids

    rng = np.random.default_rng(3)
    for top in (40, MAX_ID):
        universe = np.unique(np.concatenate([[0, top], rng.integers(1, top, 30)]))
        ids = rng.choice(universe, (H, W)).astype(np.uint32)
        keys = np.unique(rng.choice(universe[1:], 12))
        values = rng.integers(1, 60000, len(keys)).astype(np.uint16)
        table = dict(zip(keys.tolist(), values.tolist()))
        want = np.vectorize(lambda i: table.get(int(i), 0))(ids).astype(np.uint16)
        got = map_ids(ids, keys, values)
        assert got.dtype == np.uint16 and np.array_equal(got, want), top
    assert not map_ids(ids, keys[:0], values[:0]).any()


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_exports_of_id_2_24_minus_1_need_no_table_as_large_as_the_id(tmp_path, fmt):
    """Same files as with a small id in its place (MOTS renumbers; the others carry the id), and
    no [2**24] table per frame (64 MB of uint32 each, before)."""
    import tracemalloc

    from entitysam.io.idpng import MAX_ID

    small = EditSession(ResultFolder.open(make_result(tmp_path / "small")), EDITS)
    huge = EditSession(ResultFolder.open(make_result(tmp_path / "huge", big_id=MAX_ID)), EDITS)
    export(small, fmt, tmp_path / f"small.{fmt}")
    tracemalloc.start()
    try:
        export(huge, fmt, tmp_path / f"huge.{fmt}")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"{peak / 2**20:.0f} MiB"
    if fmt == "mots":
        for t in range(N):
            name = f"f{t:03d}.png"
            a = np.asarray(Image.open(tmp_path / "small.mots" / "clip" / "instances" / name))
            b = np.asarray(Image.open(tmp_path / "huge.mots" / "clip" / "instances" / name))
            assert np.array_equal(a, b), t


def test_map_ids_with_a_kept_table_and_a_missing_value_equals_a_dictionary_lookup():
    """The one id lookup (review/id_lookup.py) as the result folder uses it: a table made once,
    -1 for an unlisted id, the same answer for ids on both sides of the table's end."""
    from entitysam.io.idpng import MAX_ID
    from entitysam.review.id_lookup import DENSE_IDS, dense_table, map_ids

    keys = np.array([0, 3, DENSE_IDS - 1, DENSE_IDS, DENSE_IDS + 7, MAX_ID], dtype=np.uint32)
    values = np.arange(len(keys), dtype=np.int32)
    ids = np.array([[0, 1, 3, DENSE_IDS - 1], [DENSE_IDS, DENSE_IDS + 1, DENSE_IDS + 7, MAX_ID]], dtype=np.uint32)
    want = np.array([[0, -1, 1, 2], [3, -1, 4, 5]], dtype=np.int32)
    for top in (1, 4, int(keys[-1]) + 1):
        table = dense_table(keys, values, -1, top)
        got = map_ids(ids, keys, values, -1, table)
        assert got.dtype == np.int32 and np.array_equal(got, want), top
        assert np.array_equal(map_ids(ids[:, :3] % 4, keys, values, -1, table), [[0, -1, 1], [0, -1, 1]]), top
    assert np.array_equal(map_ids(ids, keys[:0], values[:0], -1), np.full(ids.shape, -1))
