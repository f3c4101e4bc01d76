"""Hostile and careless inputs to the review layer (`entitysam export`, ResultFolder, edits,
revisions): a tampered result folder is refused with one line naming the file and the cause
(no traceback, no made-up ids, nothing written outside the output), a FIFO does not hang it."""

from __future__ import annotations

import json
import os
import shutil
import threading

import numpy as np
import pytest
from PIL import Image

from _review_result import make_result
from entitysam.cli import main
from entitysam.errors import EditError, ResultFolderError
from entitysam.review import EditSession, ResultFolder
from entitysam.review.revision import replay_edits, save_revision


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return make_result(tmp_path_factory.mktemp("pristine"), with_input=False)


@pytest.fixture
def result_dir(pristine, tmp_path):
    return shutil.copytree(pristine, tmp_path / "clip")


def _edit_json(name, change):
    def tamper(d):
        data = json.loads((d / name).read_text())
        change(data)
        (d / name).write_text(json.dumps(data))
    return tamper


def _segment(frame, **fields):
    return _edit_json("panoptic.json", lambda m: m["annotations"][0]["annotations"][frame]["segments_info"][0]
                      .update(fields))


def _entity(**fields):
    return _edit_json("entities.json", lambda m: m["entities"][0].update(fields))


def _frame(**fields):
    return _edit_json("entities.json", lambda m: m["frames"][0].update(fields))


def _png(change):
    return lambda d: change(d / "panoptic" / "f003.png")


def _rgb(p):
    return np.asarray(Image.open(p).convert("RGB"))


def _set_text(name, old, new):
    return lambda d: (d / name).write_text((d / name).read_text().replace(old, new, 1))


# (tamper, what the one-line error must say); each was a traceback, an export of wrong data or
# an accepted value before the checks of ResultFolder.open
TAMPERS = {
    "format-version-2": (_edit_json("manifest.json", lambda m: m.update(format_version=2)),
                         "format_version 2; this version of entitysam reads 1"),
    "fps-infinite": (_set_text("manifest.json", '"fps": 5.0', '"fps": Infinity'), "no valid fps"),
    "area-nan": (_set_text("panoptic.json", '"area":368', '"area":NaN'), "area nan"),
    "area-string": (_segment(0, area="x"), "area 'x'"),
    "segment-id-string": (_segment(0, id="x"), "id 'x' is not an entity id"),
    "segment-id-negative": (_segment(0, id=-5), "id -5 is not an entity id"),
    "segment-id-huge": (_segment(0, id=10 ** 30), "is not an entity id"),
    "segment-id-float": (_segment(0, id=1.5), "id 1.5 is not an entity id"),
    "segments-not-a-list": (_edit_json("panoptic.json", lambda m: m["annotations"][0]["annotations"][0]
                                       .update(segments_info="x")), "segments_info is not a list"),
    "segment-twice": (_edit_json("panoptic.json", lambda m: m["annotations"][0]["annotations"][0]["segments_info"]
                                 .append({"id": 1, "area": 5})), "entity 1 is listed twice"),
    "entities-not-a-list": (_edit_json("entities.json", lambda m: m.update(entities="x")), "not an object with lists"),
    "entity-not-an-object": (_edit_json("entities.json", lambda m: m.update(entities=[1])), "not an object with lists"),
    "entity-id-string": (_entity(id="x"), "id 'x' is not an entity id"),
    "entity-id-huge": (_entity(id=10 ** 12), "is not an entity id"),
    "entity-id-negative": (_entity(id=-3), "id -3 is not an entity id"),
    "entity-twice": (_edit_json("entities.json", lambda m: m["entities"].append(dict(m["entities"][0]))),
                     "entity 1 has two records"),
    "score-string": (_entity(score="x"), "score 'x'"),
    "label-number": (_entity(label=5), "label 5"),
    "label-list": (_entity(label=["a"]), "label ['a']"),
    "label-huge": (_entity(label="x" * 100_000), "longer than 1000 characters"),
    "hidden-string": (_entity(hidden="false"), "hidden 'false'"),  # bool("false") would hide it
    "label-control-character": (_entity(label="a\x00b"), "holds a control character"),  # invalid in CVAT's XML
    "query-index-string": (_entity(query_index="x"), "query_index 'x'"),
    "frame-name-with-folders": (_frame(name="../../x"), "is not a file name"),
    "frame-time-string": (_frame(time="x"), "time 'x' is not a finite number"),
    "frame-name-twice": (lambda d: (_edit_json("panoptic.json", lambda m: m["annotations"][0]["annotations"][1]
                                               .update(image_id="f000"))(d),
                                    _edit_json("entities.json", lambda m: m["frames"][1].update(name="f000"))(d)),
                         "f000 used by several frames"),
    "source-frame-negative": (_frame(source_frame=-1), "source_frame must be integers >= 0"),
    "entities-too-deep": (lambda d: (d / "entities.json").write_text("[" * 100_000 + "]" * 100_000),
                          "nested too deeply"),
    "panoptic-too-deep": (lambda d: (d / "panoptic.json").write_text('{"a":' + "[" * 100_000 + "]" * 100_000 + "}"),
                          "nested too deeply"),
    "png-grayscale": (_png(lambda p: Image.fromarray(_rgb(p)[..., 0]).save(p)), "mode L, not an RGB id PNG"),
    "png-16-bit": (_png(lambda p: Image.fromarray(_rgb(p)[..., 0].astype(np.uint16) * 300).save(p)),
                   "not an RGB id PNG"),
    "png-palette": (_png(lambda p: Image.open(p).convert("P").save(p)), "mode P, not an RGB id PNG"),
    "png-jpeg": (_png(lambda p: Image.open(p).save(p, format="JPEG")), "a JPEG image"),
    "png-wrong-size": (_png(lambda p: Image.new("RGB", (10, 10)).save(p)), "10x10 but the result is 32x24"),
    "png-unlisted-id": (_png(lambda p: Image.fromarray(np.full((24, 32, 3), 77, np.uint8)).save(p)),
                        "holds id(s) 5066061 that panoptic.json does not list"),
}


@pytest.mark.parametrize("fmt", ["mots", "cvat-video", "ytvis", "coco-video"])
@pytest.mark.parametrize("case", sorted(TAMPERS))
def test_a_tampered_result_is_refused_in_one_line(result_dir, tmp_path, capsys, case, fmt):
    tamper, message = TAMPERS[case]
    tamper(result_dir)
    out = tmp_path / "out"
    assert main(["export", str(result_dir), "--format", fmt, "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err and str(result_dir) in err, err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["clip"]  # nothing half-written


def test_an_rgba_id_png_still_reads_its_ids(result_dir):
    png = result_dir / "panoptic" / "f003.png"
    before = ResultFolder.open(result_dir).id_map(3)
    Image.open(png).convert("RGBA").save(png)
    assert np.array_equal(ResultFolder.open(result_dir).id_map(3), before)


@pytest.mark.parametrize("video", ["ABSOLUTE", "../../evil", "..", "", 12])
def test_the_manifest_video_name_cannot_place_an_export_outside_its_folder(result_dir, tmp_path, video):
    manifest = json.loads((result_dir / "manifest.json").read_text())
    manifest["video"] = str(tmp_path / "work" / "evil") if video == "ABSOLUTE" else video  # stays in tmp_path
    (result_dir / "manifest.json").write_text(json.dumps(manifest))
    work = tmp_path / "work"
    out = work / "a" / "out"
    out.parent.mkdir(parents=True)
    assert main(["export", str(result_dir), "--format", "mots", "-o", str(out), "-q"]) == 0
    made = [p for p in work.rglob("*")]
    assert all(p == out.parent or out in p.parents or p == out for p in made), made
    (inner,) = [p for p in out.iterdir() if p.is_dir()]
    assert len(list((inner / "instances").glob("*.png"))) == 8
    assert ResultFolder.open(result_dir).name == inner.name and "/" not in inner.name


def _opens_within(folder, seconds=30.0):
    """ResultFolder.open(folder) in a thread: its error, or "hung" (then unblocks the FIFO)."""
    outcome = []

    def target():
        try:
            ResultFolder.open(folder)
            outcome.append(None)
        except Exception as err:  # noqa: BLE001 - the test reports whatever it was
            outcome.append(err)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        for fifo in folder.rglob("*"):
            if fifo.is_fifo():
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                os.close(fd)
        return "hung"
    return outcome[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_in_place_of_the_manifest_does_not_hang(result_dir):
    (result_dir / "manifest.json").unlink()
    os.mkfifo(result_dir / "manifest.json")
    err = _opens_within(result_dir)
    assert isinstance(err, ResultFolderError) and "no readable manifest.json" in str(err), err


def test_a_panoptic_json_over_the_json_size_limit_is_refused_unread(result_dir, monkeypatch):
    from entitysam import jsonio

    monkeypatch.setattr(jsonio, "MAX_JSON_BYTES", (result_dir / "panoptic.json").stat().st_size - 1)
    with pytest.raises(ResultFolderError, match=r"panoptic\.json .* bytes, more than the"):
        ResultFolder.open(result_dir)


@pytest.mark.parametrize("fmt", ["mots", "cvat-video", "ytvis", "coco-video"])
@pytest.mark.parametrize("target", ["manifest.json", "panoptic.json", "panoptic/f000.png", "panoptic", ".",
                                    "sibling/manifest.json", "new.json"])
def test_an_export_never_lands_in_a_result_folder_even_with_overwrite(result_dir, tmp_path, capsys, fmt, target):
    from _review_result import folder_bytes

    sibling = shutil.copytree(result_dir, result_dir / "sibling")  # another result inside this one
    before = folder_bytes(result_dir)
    out = result_dir / target
    assert main(["export", str(result_dir), "--format", fmt, "-o", str(out), "--overwrite", "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "is inside the result folder" in err, err
    assert folder_bytes(result_dir) == before and sibling.is_dir()


@pytest.mark.parametrize("fmt", ["mots", "cvat-video", "ytvis", "coco-video"])
def test_an_export_through_a_link_and_dot_dot_never_lands_in_a_result_folder(result_dir, tmp_path, capsys,
                                                                            monkeypatch, fmt):
    """link -> RESULT/panoptic: "link/../x" is RESULT/x for the system; the check read it as
    text ("./x") and let the export be written into the result folder."""
    from _review_result import folder_bytes

    work = tmp_path / "work"
    work.mkdir()
    (work / "link").symlink_to(result_dir / "panoptic")
    monkeypatch.chdir(work)
    before = folder_bytes(result_dir)
    assert main(["export", str(result_dir), "--format", fmt, "-o", "link/../new.out", "-q"]) == 1
    err = capsys.readouterr().err
    assert "is inside the result folder" in err, err
    assert folder_bytes(result_dir) == before and not (result_dir / "new.out").exists()


def test_an_output_whose_parent_is_a_file_says_so(result_dir, tmp_path, capsys):
    (tmp_path / "plain").write_text("x")
    # a mistaken -o, refused before any work: exit 2 (it was 1, a failed export)
    assert main(["export", str(result_dir), "--format", "ytvis", "-o", str(tmp_path / "plain" / "o.json")]) == 2
    assert f"{tmp_path / 'plain'} is not a folder" in capsys.readouterr().err


def _log(ops, **fields):
    return {"format": "entitysam-edits", "format_version": 1, "ops": ops, **fields}


@pytest.mark.parametrize("log, message", [
    (_log([{"op": "label", "id": 1, "text": "a\ud800"}]), "lone surrogate"),  # JSON "\ud800": UTF-8 cannot hold it
    (_log([{"op": "label", "id": 1, "text": "a\x00<b>"}]), "control character"),
    (_log([{"op": "label", "id": 1, "text": "x" * 1001}]), "longer than 1000"),
    (_log([], original="x"), '"original" is not an object'),
    ("DEEP", "nested too deeply"),
])
def test_a_hostile_edit_log_is_refused_with_an_edit_error(result_dir, tmp_path, log, message):
    if log == "DEEP":
        log = tmp_path / "edits.json"
        log.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(EditError, match=message):
        replay_edits(result_dir, log)


def test_labels_that_pass_the_edit_checks_survive_every_writer(result_dir, tmp_path):
    from entitysam.review.export import export

    session = EditSession(ResultFolder.open(result_dir), [{"op": "label", "id": 1, "text": "<ä & \"b\" 'c'>"}])
    for fmt in ("cvat-video", "coco-video", "ytvis"):
        export(session, fmt, tmp_path / f"out.{fmt}")
    import xml.etree.ElementTree as ET

    names = [n.text for n in ET.parse(tmp_path / "out.cvat-video").iter("name")]
    assert "<ä & \"b\" 'c'>" in names
    revision = save_revision(session, dest=tmp_path / "rev")
    assert ResultFolder.open(revision).entities[0].label == "<ä & \"b\" 'c'>"


def test_a_revision_is_not_written_into_its_original(result_dir):
    from _review_result import folder_bytes
    from entitysam.errors import OutputError

    session = EditSession(ResultFolder.open(result_dir), [{"op": "hide", "ids": [1]}])
    before = folder_bytes(result_dir)
    for dest in (result_dir / "rev", result_dir / "panoptic" / "rev"):
        with pytest.raises(OutputError, match="is inside the result folder"):
            save_revision(session, dest=dest)
    assert folder_bytes(result_dir) == before
    assert ResultFolder.open(save_revision(session)).entities[0].hidden  # beside it: clip.rev1


def test_a_revision_through_a_link_and_dot_dot_is_not_written_into_its_original(result_dir, tmp_path, monkeypatch):
    """dest "link/../rev", link -> ORIGINAL/panoptic, is ORIGINAL/rev for the system; the check
    read it as text ("./rev") and wrote the revision inside the original."""
    from _review_result import folder_bytes
    from entitysam.errors import OutputError

    work = tmp_path / "work"
    work.mkdir()
    (work / "link").symlink_to(result_dir / "panoptic")
    monkeypatch.chdir(work)
    session = EditSession(ResultFolder.open(result_dir), [{"op": "hide", "ids": [1]}])
    before = folder_bytes(result_dir)
    with pytest.raises(OutputError, match="is inside the result folder"):
        save_revision(session, dest="link/../rev")
    assert folder_bytes(result_dir) == before and not (result_dir / "rev").exists()


def _as_online(folder, jsonl=None, tracks=None):
    """`folder` turned into the online layout (entities.jsonl + the manifest's tracks), with
    the given jsonl text or tracks instead of the real ones."""
    records = json.loads((folder / "entities.json").read_text())
    (folder / "entities.json").unlink()
    text = "".join(json.dumps(f) + "\n" for f in records["frames"])
    (folder / "entities.jsonl").write_text(text if jsonl is None else jsonl)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["format"] = "entitysam-online"
    manifest["tracks"] = [{"id": e["id"], "score": e["score"]} for e in records["entities"]] if tracks is None else tracks
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("jsonl, tracks, message", [
    (None, None, None),
    ("[" * 100_000 + "]" * 100_000 + "\n", None, "nested too deeply"),
    ('{"frame": 0,\n', None, "unreadable frame records"),
    (None, "x", "tracks: the entity records are not a list"),
    (None, [{"id": 1, "hidden": "no"}], "hidden 'no'"),
    (None, [5], "an entity record is not an object"),
])
def test_a_tampered_online_result_is_refused(result_dir, jsonl, tracks, message):
    _as_online(result_dir, jsonl, tracks)
    if message is None:
        assert ResultFolder.open(result_dir).kind == "online"
        return
    with pytest.raises(ResultFolderError, match=message):
        ResultFolder.open(result_dir)


@pytest.mark.parametrize("source", ["FD", [[[1, 2, 3]]], {"a": 1}, "", None])
def test_a_manifest_input_that_is_not_a_path_gives_no_source_frames(result_dir, source):
    manifest = json.loads((result_dir / "manifest.json").read_text())
    fd = os.open(result_dir / "manifest.json", os.O_RDONLY)  # an open descriptor: os.path.exists(fd) is True
    try:
        manifest["input"] = fd if source == "FD" else source
        (result_dir / "manifest.json").write_text(json.dumps(manifest))
        assert ResultFolder.open(result_dir).source_frame(0) is None
    finally:
        os.close(fd)


@pytest.mark.parametrize("value", ["66", "0", "1e3"])
def test_a_mots_class_id_out_of_range_is_a_usage_error(result_dir, tmp_path, capsys, value):
    argv = ["export", str(result_dir), "--format", "mots", "-o", str(tmp_path / "out"), "--class-id", value]
    try:
        code = main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    assert code == 2 and "--class-id" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("body, message", [
    ("[" * 100_000 + "]" * 100_000, "the edit must be a JSON object"),
    ('{"op": "label", "id": 1, "text": "a\\ud800"}', "lone surrogate"),
    ('{"op": "split", "id": 2, "frame": 3, "new_id": 16777216}', "new_id must be an entity id"),
])
def test_a_hostile_edit_posted_to_the_viewer_is_a_400(result_dir, body, message):
    pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx")
    from starlette.testclient import TestClient

    from entitysam.review.server import TOKEN_HEADER, Viewer, create_app

    app = create_app(Viewer(result_dir, token="t"), loopback_only=True)
    with TestClient(app, raise_server_exceptions=False) as client:
        reply = client.post("/api/edits", content=body.encode(), headers={TOKEN_HEADER: "t"})
        assert reply.status_code == 400 and message in reply.text, reply.text
        assert client.get("/api/state").json()["version"] == 0


@pytest.mark.parametrize("fmt", ["cvat-video", "ytvis", "coco-video"])
@pytest.mark.parametrize("content", ["my notes\n", '{"info": "mine"}', "[1, 2]", '<?xml version="1.0"?><annotations/>',
                                     '[{"video_id":5,"score":0.9,"category_id":3,"segmentations":[]}]'])
def test_overwrite_replaces_only_a_file_entitysam_exported(result_dir, tmp_path, capsys, fmt, content):
    mine = tmp_path / "mine.out"
    mine.write_text(content)
    assert main(["export", str(result_dir), "--format", fmt, "-o", str(mine), "--overwrite", "-q"]) == 1
    assert "is not a file entitysam exported in this format" in capsys.readouterr().err
    assert mine.read_text() == content
    assert main(["export", str(result_dir), "--format", fmt, "-o", str(tmp_path / "a.out"), "-q"]) == 0
    assert main(["export", str(result_dir), "--format", fmt, "-o", str(tmp_path / "a.out"), "--overwrite", "-q"]) == 0


@pytest.mark.parametrize("fmt", ["mots", "cvat-video", "ytvis", "coco-video"])
@pytest.mark.parametrize("what", ["file", "folder", "link"])
def test_without_overwrite_only_an_earlier_export_is_said_to_need_overwrite(result_dir, tmp_path, capsys, fmt,
                                                                            what):
    """A file of the user's answered "already exists: use --overwrite to replace it", and
    --overwrite then refused it: the advice led only to the refusal."""
    mine = tmp_path / "mine"
    if what == "file":
        mine.write_text("my notes\n")
    elif what == "folder":
        mine.mkdir()
    else:
        mine.symlink_to(tmp_path / "elsewhere")
    for overwrite in ([], ["--overwrite"]):
        assert main(["export", str(result_dir), "--format", fmt, "-o", str(mine), "-q", *overwrite]) == 1
        err = capsys.readouterr().err
        assert "refusing to replace it, even when overwriting" in err and "use --overwrite" not in err, err
    assert os.path.lexists(mine) and (what != "file" or mine.read_text() == "my notes\n")
    out = tmp_path / "earlier"
    assert main(["export", str(result_dir), "--format", fmt, "-o", str(out), "-q"]) == 0
    assert main(["export", str(result_dir), "--format", fmt, "-o", str(out), "-q"]) == 1
    assert "already exists: use --overwrite to replace it" in capsys.readouterr().err


def test_an_empty_export_can_be_overwritten_too(result_dir, tmp_path):
    from entitysam.review.export import export

    session = EditSession(ResultFolder.open(result_dir), [{"op": "hide", "ids": [1, 2, 3, 1005]}])
    for fmt in ("cvat-video", "ytvis", "coco-video"):
        out = export(session, fmt, tmp_path / fmt)
        assert export(session, fmt, out, overwrite=True) == out
    import xml.etree.ElementTree as ET

    assert ET.parse(tmp_path / "cvat-video").getroot().tag == "annotations"
