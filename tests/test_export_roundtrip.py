"""Every export format read back by a reader written here from the format's own specification
(not from the exporter's code), on result folders built to stress it, and compared pixel for
pixel with the id maps the test drew (or derived from them, for an edited result).

Readers: MOTS PNG (KITTI-MOTS / MOTSChallenge: 16-bit, value = class * 1000 + instance, class 10 =
ignore region) and its txt variant ("time_frame id class_id img_height img_width rle", COCO RLE);
CVAT for video 1.1 (tracks of <mask> shapes, a shape's state lasting until the track's next shape,
``outside`` ending it; CVAT's RLE: runs over the mask's box row by row, background first);
YouTube-VIS results and COCO-style video JSON (COCO RLE decoded with pycocotools, bbox [x, y, w, h]).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

# pycocotools' decode under numpy 2 warns about __array__'s copy keyword, thousands of times
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

from _review_result import write_result
from entitysam.errors import OutputError
from entitysam.io.idpng import MAX_ID
from entitysam.review import EditSession, ResultFolder
from entitysam.review.export import export


def strict_json(path):
    """JSON as a strict reader sees it: NaN / Infinity refused."""
    def refuse(name):
        raise AssertionError(f"{path}: non-JSON constant {name}")
    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def make(tmp_path, maps, *, names=None, video="clip", labels=None, scores=None):
    """A result folder of the id `maps`; labels / scores: {id: value} recorded in entities.json."""
    ids = sorted({int(i) for m in maps for i in np.unique(m) if i})
    names = names or [f"{t:06d}" for t in range(len(maps))]
    entities = [{"id": i, "score": (scores or {}).get(i, 0.5), "query_index": k,
                 **({"label": labels[i]} if labels and i in labels else {})} for k, i in enumerate(ids)]
    folder = write_result(tmp_path / video, tmp_path / "input", names, [m.astype(np.uint32) for m in maps],
                          entities, 5.0)
    return ResultFolder.open(folder)


def coco_box(mask):
    """COCO's bbox of a mask, [x, y, w, h] with w, h the columns and rows covered."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def coco_decode(rle, shape):
    assert isinstance(rle["counts"], str), "compressed RLE: counts is a string"
    assert rle["size"] == list(shape) and all(type(v) is int for v in rle["size"])
    mask = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)
    assert mask.any(), "an empty mask exported"
    return mask


def paint(got, t, mask, value):
    assert not (got[t][mask] != 0).any(), f"frame {t}: masks overlap"
    got[t][mask] = value


# ------------------------------------------------------------------ readers, one per format
def read_mots(out, view, class_id):
    """MOTS PNG (+ txt) -> id maps through the export's instance -> entity table."""
    marker = strict_json(out / "entitysam-export.json")
    to_entity = {int(k): v for k, v in marker["instances"].items()}
    inst = out / view.name / "instances"
    assert (inst / "labels.txt").read_text(encoding="utf-8").splitlines()[class_id - 1] == "entity"
    assert sorted(p.name for p in inst.glob("*.png")) == sorted(f"{f['name']}.png" for f in view.frames)
    h, w = view.size
    got = []
    for frame in view.frames:
        with Image.open(inst / f"{frame['name']}.png") as im:
            assert im.mode == "I;16" and im.size == (w, h)
            values = np.array(im).astype(np.int64)
        classes, instances = np.divmod(values, 1000)
        assert set(np.unique(classes[values > 0]).tolist()) <= {class_id}
        assert 0 not in instances[values > 0]
        ids = np.zeros((h, w), np.uint32)
        for k in np.unique(instances[values > 0]).tolist():
            ids[instances == k] = to_entity[k]
        got.append(ids)
    txt = out / f"{view.name}.txt"
    if txt.exists():
        from_txt = [np.zeros((h, w), np.uint32) for _ in view.frames]
        for line in txt.read_text(encoding="ascii").splitlines():
            t, obj, cls, rh, rw, counts = line.split(" ")
            assert (int(cls), int(obj) // 1000, int(rh), int(rw)) == (class_id, class_id, h, w)
            paint(from_txt, int(t), coco_decode({"size": [h, w], "counts": counts}, (h, w)),
                  to_entity[int(obj) % 1000])
        for t in range(len(got)):
            assert np.array_equal(from_txt[t], got[t]), f"txt frame {t}"
    return got


def decode_cvat_rle(m):
    left, top, width, height = (int(m.get(k)) for k in ("left", "top", "width", "height"))
    runs = [int(v) for v in m.get("rle").split(",")]
    assert sum(runs) == width * height and all(r >= 0 for r in runs)
    flat = np.repeat(np.arange(len(runs)) % 2 == 1, runs)  # background first
    return left, top, flat.reshape(height, width)


def read_cvat(out, view):
    """CVAT for video 1.1 -> (id maps, {entity id: label}): each track's shapes in frame order, a
    keyframe's mask holding until the track's next shape, an outside shape ending it."""
    root = ET.parse(out).getroot()
    task = root.find("meta/task")
    h, w = view.size
    n = len(view.frames)
    # a name XML cannot hold is written with U+FFFD where it cannot (U+FFFE / U+FFFF in a file name)
    assert int(task.findtext("size")) == n and task.findtext("name") == view.name.translate({0xFFFE: 0xFFFD,
                                                                                               0xFFFF: 0xFFFD})
    assert (int(task.findtext("original_size/width")), int(task.findtext("original_size/height"))) == (w, h)
    declared = [lab.findtext("name") for lab in task.findall("labels/label")]
    got = [np.zeros((h, w), np.uint32) for _ in range(n)]
    labels = {}
    for track in root.findall("track"):
        assert track.get("label") in declared, f"undeclared label {track.get('label')!r}"
        shapes = sorted(track.findall("mask"), key=lambda m: int(m.get("frame")))
        assert shapes and shapes[0].get("outside") == "0"
        for k, m in enumerate(shapes):
            start = int(m.get("frame"))
            stop = int(shapes[k + 1].get("frame")) if k + 1 < len(shapes) else n
            if m.get("outside") == "1":
                continue
            assert m.get("keyframe") == "1"
            eid = int(m.find("attribute[@name='entity_id']").text)
            labels[eid] = track.get("label")
            left, top, box = decode_cvat_rle(m)
            assert box[0].any() and box[-1].any() and box[:, 0].any() and box[:, -1].any(), "box not tight"
            for t in range(start, stop):
                full = np.zeros((h, w), bool)
                full[top:top + box.shape[0], left:left + box.shape[1]] = box
                paint(got, t, full, eid)
    return got, labels


def read_ytvis(out, view):
    records = strict_json(out)
    h, w = view.size
    got = [np.zeros((h, w), np.uint32) for _ in view.frames]
    for k, r in enumerate(records):
        assert type(r["video_id"]) is int and type(r["category_id"]) is int and type(r["score"]) is float
        assert len(r["segmentations"]) == len(view.frames)
        for t, rle in enumerate(r["segmentations"]):
            if rle is not None:
                paint(got, t, coco_decode(rle, (h, w)), k + 1)  # records carry no id: numbered here
    return got, records


def read_coco_video(out, view):
    data = strict_json(out)
    h, w = view.size
    n = len(view.frames)
    assert data["videos"][0]["length"] == n and (data["videos"][0]["height"], data["videos"][0]["width"]) == (h, w)
    frame_of = {im["id"]: im["frame_id"] for im in data["images"]}
    assert [im["frame_id"] for im in data["images"]] == list(range(n))
    assert [im["file_name"] for im in data["images"]] == [f"{view.name}/{f['name']}.png" for f in view.frames]
    cats = {c["id"]: c["name"] for c in data["categories"]}
    got = [np.zeros((h, w), np.uint32) for _ in range(n)]
    labels = {}
    for ann in data["annotations"]:
        mask = coco_decode(ann["segmentation"], (h, w))
        rle = {"size": [h, w], "counts": ann["segmentation"]["counts"].encode()}
        assert type(ann["area"]) is int and ann["area"] == int(mask.sum()) == int(mask_utils.area(rle))
        assert all(type(v) is int for v in ann["bbox"])
        assert ann["bbox"] == coco_box(mask) == [int(v) for v in mask_utils.toBbox(rle)]
        paint(got, frame_of[ann["image_id"]], mask, ann["track_id"])
        labels[ann["track_id"]] = cats[ann["category_id"]]
    return got, labels


# ------------------------------------------------------------------ all formats against the truth
def check_exports(tmp_path, view, want, labels=None, class_id=2):
    """Export `view` in every format and compare what each reader gives back with `want`."""
    labels = labels or {}
    ids = sorted({int(i) for m in want for i in np.unique(m) if i})
    want_labels = {i: labels.get(i) or "entity" for i in ids}

    def same(got, what):
        assert len(got) == len(want), what
        for t, (g, e) in enumerate(zip(got, want)):
            assert g.shape == e.shape and np.array_equal(g, e), f"{what}: frame {t} differs"

    same(read_mots(export(view, "mots", tmp_path / "mots", class_id=class_id, txt=True), view, class_id), "mots")
    for tracks in ("frame", "entity"):
        got, got_labels = read_cvat(export(view, "cvat-video", tmp_path / f"{tracks}.xml", tracks=tracks), view)
        same(got, f"cvat {tracks}")
        assert got_labels == want_labels
    got, got_labels = read_coco_video(export(view, "coco-video", tmp_path / "coco.json"), view)
    same(got, "coco-video")
    assert got_labels == want_labels
    got, records = read_ytvis(export(view, "ytvis", tmp_path / "ytvis.json"), view)
    # a record carries no entity id: each must cover exactly one entity, the records all of them
    entity_of = [0] * (len(records) + 1)
    for k in range(1, len(records) + 1):
        under = {int(i) for g, e in zip(got, want) for i in np.unique(e[g == k])}
        assert len(under) == 1 and 0 not in under, f"record {k - 1} covers {sorted(under)[:5]}"
        entity_of[k] = under.pop()
    assert sorted(entity_of[1:]) == ids
    same([np.array(entity_of, np.uint32)[g] for g in got], "ytvis")
    # categories in order of first use (1: entity): the records' category ids name the labels
    names = list(dict.fromkeys(["entity"] + [want_labels[i] for i in ids]))
    assert [names[r["category_id"] - 1] for r in records] == [want_labels[i] for i in entity_of[1:]]


# ------------------------------------------------------------------ the stress cases
def corners_and_borders(h, w):
    """1-pixel entities in the four corners, one-pixel-wide entities along each border, one
    entity made of the frame's ring touching all four borders around a hole."""
    m = np.zeros((h, w), np.uint32)
    m[2:h - 2, 2:w - 2] = 7
    m[3:h - 3, 3:w - 3] = 0
    m[0, 1:w - 1], m[h - 1, 1:w - 1], m[1:h - 1, 0], m[1:h - 1, w - 1] = 11, 12, 13, 14
    m[0, 0], m[0, w - 1], m[h - 1, 0], m[h - 1, w - 1] = 1, 2, MAX_ID, 65536
    m[h // 2, w // 2] = 255
    return m


def test_corners_borders_and_one_pixel_entities_round_trip(tmp_path):
    maps = [corners_and_borders(12, 17), np.zeros((12, 17), np.uint32), corners_and_borders(12, 17)[::-1].copy()]
    check_exports(tmp_path, make(tmp_path, maps), maps)


@pytest.mark.parametrize("h, w", [(479, 853), (1, 700), (700, 1)])
def test_odd_frame_sizes_round_trip(tmp_path, h, w):
    rng = np.random.default_rng(h * w)
    maps = []
    for t in range(2):
        m = np.zeros((h, w), np.uint32)
        m[: max(1, h // 3), : max(1, w // 2)] = 3
        m[rng.integers(0, h, 20), rng.integers(0, w, 20)] = rng.integers(1, MAX_ID, 20).astype(np.uint32)
        m[-1, -1] = 9 + t
        maps.append(m)
    check_exports(tmp_path, make(tmp_path, maps), maps)


def test_single_frame_and_all_empty_frames(tmp_path):
    one = [corners_and_borders(5, 6)]
    check_exports(tmp_path / "one", make(tmp_path / "one", one), one)
    empty = [np.zeros((4, 5), np.uint32) for _ in range(3)]
    check_exports(tmp_path / "empty", make(tmp_path / "empty", empty), empty)


def test_entities_leaving_and_coming_back_names_not_numbers_unicode_video(tmp_path):
    """Frame order is the result's, whatever the names sort to; an entity absent in the middle
    is not carried over its gap by a CVAT track."""
    names = ["10", "9", "frame 1", "é-名", "a.b", "2"]
    maps = []
    for t in range(len(names)):
        m = np.zeros((6, 7), np.uint32)
        if t in (0, 3, 4):  # leaves, comes back for two frames, leaves for good
            m[1:3, 1:4] = 5
        if t != 2:
            m[4, t] = 6
        m[5, 6] = 1000 + t % 2  # two entities alternating
        maps.append(m)
    view = make(tmp_path, maps, names=names, video="my clip é")
    assert view.name == "my clip é"
    check_exports(tmp_path, view, maps)


@pytest.mark.parametrize("name", [".", ".."])
def test_frames_named_only_with_dots(tmp_path, name):
    """A still image "..png" gives a frame named "."; its MOTS PNG "..png" has no extension for
    os.path.splitext, from which Pillow took the format: the export was a ValueError."""
    maps = [corners_and_borders(5, 6)]
    check_exports(tmp_path, make(tmp_path, maps, names=[name]), maps)


def test_many_entities_and_huge_ids(tmp_path):
    rng = np.random.default_rng(5)
    ids = np.concatenate([np.arange(1, 300), [999, 1000, 65535, 65536, MAX_ID - 1, MAX_ID]]).astype(np.uint32)
    maps = [rng.permutation(np.resize(ids, 24 * 26)).reshape(24, 26) for _ in range(3)]
    check_exports(tmp_path, make(tmp_path, maps), maps, class_id=1)


def test_labels_survive_every_format(tmp_path):
    maps = [corners_and_borders(8, 9)] * 2
    labels = {1: "dog", 2: 'a "quoted" <tag> & \'apostrophe\'', 7: "tab\there", 11: "line\nbreak",
              13: "  spaced  ", 14: "ünï ✓ 名前", 255: "entity"}
    view = make(tmp_path, maps, labels=labels)
    check_exports(tmp_path, view, maps, labels)


def test_an_edited_result_exports_what_the_edits_made(tmp_path):
    """Merge (two entities sharing frames), delete, split, hide and label, checked against maps
    edited here with numpy."""
    base = []
    for t in range(5):
        m = np.zeros((9, 10), np.uint32)
        m[0:3, 0:4] = 1
        m[4:6, t:t + 3] = 2
        m[0:2, 6:10] = 3
        m[7:9, 0:2] = 4
        m[8, 9] = MAX_ID
        if t % 2:
            m[3, 5] = 5
        base.append(m)
    view = EditSession(make(tmp_path, base), [
        {"op": "merge", "ids": [3, 1], "into": 3}, {"op": "delete", "ids": [4]},
        {"op": "split", "id": 2, "frame": 3, "new_id": 70}, {"op": "hide", "ids": [5]},
        {"op": "label", "id": 3, "text": "sky"}, {"op": "label", "id": 70, "text": "car"},
        {"op": "label", "id": 5, "text": "hidden label"}, {"op": "merge", "ids": [MAX_ID, 2], "into": MAX_ID}])
    want = []
    for t, m in enumerate(base):
        m = m.copy()
        m[m == 1] = 3
        m[(m == 4) | (m == 5)] = 0
        m[m == 2] = 70 if t >= 3 else MAX_ID
        want.append(m)
    check_exports(tmp_path, view, want, {3: "sky", 70: "car"})


def test_mots_refuses_more_instances_than_a_class_holds_and_writes_nothing(tmp_path):
    view = make(tmp_path, [np.arange(1, 1001, dtype=np.uint32).reshape(25, 40)])
    with pytest.raises(OutputError, match="at most 999 instances"):
        export(view, "mots", tmp_path / "mots")
    assert not (tmp_path / "mots").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["clip"]  # no staging folder left either


def test_cvat_xml_gives_back_labels_holding_carriage_returns(tmp_path):
    """XML readers turn a raw CR (and CR LF) in element text into LF: the label declared in
    <meta> came back changed and no longer matched its tracks' label attribute."""
    maps = [corners_and_borders(6, 7)]
    labels = {1: "carriage\rreturn", 2: "crlf\r\nend", 7: "\r"}
    check_exports(tmp_path, make(tmp_path, maps, labels=labels), maps, labels)


def test_cvat_xml_is_well_formed_for_a_video_name_xml_cannot_hold(tmp_path):
    """U+FFFE / U+FFFF are valid in a file name (a video's, which names the task), not in XML."""
    maps = [corners_and_borders(6, 7)]
    check_exports(tmp_path, make(tmp_path, maps, video="odd\uffffname\ufffe"), maps)


def test_mots_class_65_keeps_every_instance_inside_16_bits(tmp_path):
    """65 * 1000 + 600 = 65600 does not fit a 16-bit PNG: numpy 1.x wrapped it onto instance 64
    (another entity's pixels), numpy 2 raised OverflowError. Ids above 535 are renumbered for
    class 65; more entities than 535 are refused."""
    maps = [np.array([[1, 600, 999], [0, 535, 536]], np.uint32)]  # all below 1000: kept as they are before
    check_exports(tmp_path / "fits", make(tmp_path / "fits", maps), maps, class_id=65)
    view = make(tmp_path, [np.arange(1, 537, dtype=np.uint32).reshape(8, 67)])
    with pytest.raises(OutputError, match="class 65 holds at most 535 instances"):
        export(view, "mots", tmp_path / "mots", class_id=65)
    assert not (tmp_path / "mots").exists()


def test_mots_class_10_the_ignore_class_is_refused(tmp_path, capsys):
    """KITTI-MOTS / MOTSChallenge read class 10 (values 10000-10999) as ignore regions: every
    entity exported with it was silently an area the evaluation ignores."""
    from entitysam.cli import main
    from entitysam.errors import InvalidArgumentError

    view = make(tmp_path, [corners_and_borders(5, 6)])
    with pytest.raises(InvalidArgumentError, match="ignore regions"):
        export(view, "mots", tmp_path / "mots", class_id=10)
    assert main(["export", str(view.path), "--format", "mots", "-o", str(tmp_path / "mots"), "--class-id", "10"]) == 2
    assert "ignore regions" in capsys.readouterr().err
    assert not (tmp_path / "mots").exists()
