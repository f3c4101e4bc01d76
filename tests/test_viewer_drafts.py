"""The viewer's draft (entitysam.review.draft): unsaved edits kept beside the result after each
change, restored when the result is viewed again, cleared by Save; a stale draft set aside, a
read-only folder, two viewers of one result, a stopped `entitysam view`, a double Save."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("starlette")

from _review_result import make_result  # noqa: E402
from _viewer import URL_LINE  # noqa: E402

from entitysam.io.owned import result_foreign  # noqa: E402
from entitysam.io.staging import StagedOutput, recover_leftovers  # noqa: E402
from entitysam.review import replay_edits  # noqa: E402
from entitysam.review.server import Viewer  # noqa: E402

OPS = [{"op": "merge", "ids": [2, 3], "into": 2}, {"op": "label", "id": 1, "text": "sky"}]


@pytest.fixture()
def result(tmp_path):
    return make_result(tmp_path)


def draft_of(result: Path) -> Path:
    return result.parent / f".{result.name}.draft.json"


def edited(result: Path, ops=OPS, **kwargs) -> Viewer:
    viewer = Viewer(result, token="t", **kwargs)
    for op in ops:
        viewer.apply(op)
    return viewer


def test_each_change_writes_the_draft_and_a_new_viewer_restores_it(result):
    said = []
    viewer = edited(result, say=said.append)
    data = json.loads(draft_of(result).read_text())
    assert [op["op"] for op in data["ops"]] == ["merge", "label"]
    assert said == [] and viewer.state()["draft"] is None and viewer.state()["unsaved"] is True
    # the draft is an edit log as a revision's edits.json: the replay machinery reads it
    assert replay_edits(result, draft_of(result)).ops == viewer.session.ops
    viewer.undo()
    assert [op["op"] for op in json.loads(draft_of(result).read_text())["ops"]] == ["merge"]
    viewer.redo()
    # the viewer stopped (its memory gone): viewing the result again restores the edits
    said = []
    again = Viewer(result, token="t", say=said.append)
    assert again.session.ops == viewer.session.ops and again.unsaved
    assert [e.to_dict() for e in again.session.entities] == [e.to_dict() for e in viewer.session.entities]
    assert len(said) == 1 and said[0].startswith("restored 2 unsaved edits from the draft") and str(draft_of(result)) in said[0]
    assert again.state()["draft"] == said[0] and again.state()["can_undo"]
    # nothing unsaved any more (everything undone): no draft
    again.undo()
    again.undo()
    assert not draft_of(result).exists()


def test_save_clears_the_draft_and_a_second_save_writes_no_second_revision(result):
    viewer = edited(Viewer(result, token="t").root)
    path, new = viewer.save()
    assert new and path.name == "clip.rev1" and not draft_of(result).exists() and not viewer.unsaved
    assert viewer.save() == (path, False)  # a double click: the same revision named, none written
    assert sorted(p.name for p in result.parent.iterdir()) == ["clip", "clip.rev1", "input-clip"]
    assert Viewer(result, token="t").session.ops == []  # nothing to restore
    viewer.apply({"op": "hide", "ids": [1]})
    assert draft_of(result).exists()
    assert viewer.save()[0].name == "clip.rev2" and not draft_of(result).exists()


def test_everything_undone_after_a_save_keeps_no_draft(result):
    """Save, then undo every edit: the log was empty but differed from the Save's, so a draft of 0
    edits stayed beside the result and each later start said "restored 0 unsaved edits" (with
    nothing unsaved on the page)."""
    viewer = edited(result)
    viewer.save()
    viewer.undo()
    assert draft_of(result).exists()  # one edit left: kept
    viewer.undo()
    assert viewer.session.ops == [] and not draft_of(result).exists()
    said = []
    again = Viewer(result, token="t", say=said.append)
    assert said == [] and again.state()["draft"] is None and again.session.ops == []


def test_a_draft_of_another_version_of_the_result_is_set_aside_not_applied(result):
    edited(result)
    kept = draft_of(result).read_bytes()
    panoptic = result / "panoptic.json"
    panoptic.write_text(panoptic.read_text() + "\n")  # the result changed on disk since (same content, other bytes)
    said = []
    viewer = Viewer(result, token="t", say=said.append)
    assert viewer.session.ops == [] and not draft_of(result).exists()
    aside = [p for p in result.parent.iterdir() if p.name.startswith(".clip.draft-stale-")]
    assert len(aside) == 1 and aside[0].read_bytes() == kept  # never dropped: kept, and named
    assert len(said) == 1 and "another version of this result" in said[0] and str(aside[0]) in said[0]
    assert viewer.state()["draft"] == said[0]
    viewer.apply({"op": "hide", "ids": [1]})  # a new draft; the stale one stays
    assert draft_of(result).exists() and aside[0].read_bytes() == kept


def test_a_read_only_folder_is_viewed_without_a_draft_said_once(result, monkeypatch):
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == result.parent else real_access(p, mode, **kw))
    said = []
    viewer = edited(result, say=said.append)
    assert len(viewer.session.ops) == 2 and not draft_of(result).exists()
    assert len(said) == 1 and "is not writable" in said[0] and viewer.state()["draft"] == said[0]


def test_a_draft_that_cannot_be_written_is_said_once(result, monkeypatch):
    from entitysam.review import draft

    def refuse(path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(draft, "write_json_atomic", refuse)
    said = []
    viewer = edited(result, say=said.append)
    assert len(viewer.session.ops) == 2 and not draft_of(result).exists()
    assert len(said) == 1 and "cannot write the draft of the unsaved edits" in said[0] and "not writable" in said[0]
    assert viewer.state()["draft"] == said[0]


def test_a_file_of_the_drafts_name_that_is_no_draft_is_left_alone(result):
    draft_of(result).write_text("my notes\n")
    said = []
    viewer = edited(result, say=said.append)
    assert draft_of(result).read_text() == "my notes\n" and viewer.session.ops
    assert len(said) == 1 and "is not a draft of entitysam" in said[0]
    viewer.save()
    assert draft_of(result).read_text() == "my notes\n"


def test_two_viewers_of_one_result_never_write_over_each_others_draft(result):
    first, said = Viewer(result, token="a"), []
    second = Viewer(result, token="b", say=said.append)
    first.apply(OPS[0])
    second.apply({"op": "delete", "ids": [1]})  # the draft is the first viewer's now: left to it
    assert [op["op"] for op in json.loads(draft_of(result).read_text())["ops"]] == ["merge"]
    assert len(said) == 1 and "written by another viewer" in said[0] and second.state()["draft"] == said[0]
    second.save()  # nor does its Save remove the first one's draft
    assert draft_of(result).exists()
    first.apply(OPS[1])
    assert [op["op"] for op in json.loads(draft_of(result).read_text())["ops"]] == ["merge", "label"]
    first.save()
    assert not draft_of(result).exists()


def test_a_draft_never_makes_overwrite_refuse_the_result_nor_is_deleted_by_a_cleanup(result):
    edited(result)
    kept = draft_of(result).read_bytes()
    assert result_foreign(result) == []  # nothing in the result folder itself
    StagedOutput.check_free(result, overwrite=True)  # `--overwrite` may still replace the result
    recover_leftovers(result.parent, ["clip"])
    assert draft_of(result).read_bytes() == kept


def test_a_stopped_viewer_says_where_its_unsaved_edits_are(result):
    import entitysam

    package_root = str(Path(entitysam.__file__).parents[1])  # the entitysam these tests import
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "entitysam", "view", str(result), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            m = URL_LINE.search(proc.stdout.readline())
            if m:
                break
        assert m, "no URL printed"
        base = m.group(1).split("/?")[0]
        request = urllib.request.Request(f"{base}/api/edits", data=json.dumps(OPS[0]).encode(), method="POST",
                                         headers={"X-EntitySAM-Token": m.group(2), "Content-Type": "application/json"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        for _ in range(300):  # the URL is printed just before the server listens
            try:
                assert opener.open(request, timeout=30).status == 200
                break
            except urllib.error.URLError:
                time.sleep(0.1)
        assert draft_of(result).exists()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [line for line in out.splitlines() if "unsaved edits" in line]
    assert lines == [f"unsaved edits (a log of 1 edit) kept in the draft {draft_of(result)}: viewing {result} "
                     "again restores them"], out
    assert proc.returncode == 0


def test_the_page_says_the_edits_were_restored_and_save_clears_the_draft(result):
    from _viewer import browser_page, chromium_or_skip, open_viewer, view_server

    chromium_or_skip()
    edited(result)  # a viewer stopped with these edits unsaved
    with view_server(result) as (url, _token), browser_page() as page:
        open_viewer(page, url)
        assert page.inner_text("#draft").startswith("restored 2 unsaved edits from the draft")
        assert page.evaluate("viewer.state.ops.length") == 2
        page.dblclick("#save")  # a double click: one revision
        page.wait_for_function("document.getElementById('status').textContent.includes('clip.rev1')")
        page.wait_for_function("!document.getElementById('save').disabled")
        assert page.inner_text("#draft") == "" and page.errors == []
    assert not draft_of(result).exists()
    assert sorted(p.name for p in result.parent.iterdir()) == ["clip", "clip.rev1", "input-clip"]


def own_draft_of(result: Path) -> list[Path]:
    return sorted(result.parent.glob(f".{result.name}.draft-viewer-*.json"))


def logged(path: Path) -> list[str]:
    return [op["op"] for op in json.loads(path.read_text())["ops"]]


def test_two_viewers_through_http_each_keep_their_edits_on_disk_none_written_over(result):
    """Two `entitysam view` of one result: the second one's corrections went to memory only (or,
    before that, over the first one's draft) and were lost when it stopped. Now it keeps them in a
    draft of its own beside the result, says so, and a viewer opened later names that draft."""
    pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx")
    from starlette.testclient import TestClient

    from entitysam.review.draft import unsaved_line
    from entitysam.review.server import TOKEN_HEADER, create_app

    said_a, said_b = [], []
    a, b = Viewer(result, token="a", say=said_a.append), Viewer(result, token="b", say=said_b.append)
    with TestClient(create_app(a, loopback_only=True)) as ca, TestClient(create_app(b, loopback_only=True)) as cb:
        def post(client, token, op):
            reply = client.post("/api/edits", json=op, headers={TOKEN_HEADER: token})
            assert reply.status_code == 200, reply.text
            return reply.json()

        post(ca, "a", OPS[0])
        state = post(cb, "b", {"op": "delete", "ids": [1]})
        own = own_draft_of(result)
        assert len(own) == 1 and logged(own[0]) == ["delete"]  # b's edit is on disk
        assert logged(draft_of(result)) == ["merge"]  # a's draft as a wrote it
        assert len(said_b) == 1 and "written by another viewer" in said_b[0] and str(own[0]) in said_b[0]
        assert state["draft"] == said_b[0] and said_a == []
        post(ca, "a", OPS[1])
        post(cb, "b", {"op": "hide", "ids": [2]})
        assert logged(draft_of(result)) == ["merge", "label"] and logged(own[0]) == ["delete", "hide"]
        assert replay_edits(result, own[0]).ops == b.session.ops  # b's log replays as it is
        line = unsaved_line(b.draft, b.root, 2)
        assert str(own[0]) in line and "rename it to .clip.draft.json" in line
    # both stopped: viewing the result again restores a's draft and names b's
    said = []
    again = Viewer(result, token="c", say=said.append)
    assert again.session.ops == a.session.ops
    assert len(said) == 2 and said[0].startswith("restored 2 unsaved edits") and str(own[0]) in said[1]
    assert again.state()["draft"] == f"{said[0]}; {said[1]}"
    # b's edits restored by renaming its draft to the result's
    os.replace(own[0], draft_of(result))
    assert Viewer(result, token="d").session.ops == b.session.ops


def test_a_viewer_that_restored_the_draft_of_a_running_viewer_never_writes_over_its_later_edits(result):
    first = edited(result, OPS[:1])  # still running
    second = Viewer(result, token="b")  # restores the first one's draft
    assert second.session.ops == first.session.ops
    second.apply({"op": "delete", "ids": [1]})  # the draft was the one it read: replaced
    first.apply(OPS[1])  # the first one finds the second's draft: its log goes to a draft of its own
    assert logged(draft_of(result)) == ["merge", "delete"]
    (own,) = own_draft_of(result)
    assert logged(own) == ["merge", "label"] and first.state()["draft"] and str(own) in first.state()["draft"]
    first.save()  # a Save removes its own draft only
    assert not own.exists() and logged(draft_of(result)) == ["merge", "delete"]
    assert str(own) in first.state()["draft"]  # still said: its next edits go there
    first.apply({"op": "hide", "ids": [2]})
    assert logged(own) == ["merge", "label", "hide"]


def test_the_check_and_the_write_of_the_draft_are_one_step(result, monkeypatch):
    """A viewer's check that the draft is still its own and its write were two steps: another
    viewer writing between them was written over, without a word."""
    import threading

    from entitysam.review import draft

    first, second = Viewer(result, token="a"), Viewer(result, token="b")
    real = draft.write_json_atomic
    others = []

    def write_slowly(path, record, **kwargs):
        if record["draft"]["writer"] == second.draft.writer and not others:
            # the first viewer changes something while the second one is between its check and its write
            others.append(threading.Thread(target=first.apply, args=(OPS[0],)))
            others[0].start()
            others[0].join(0.5)
        real(path, record, **kwargs)

    monkeypatch.setattr(draft, "write_json_atomic", write_slowly)
    second.apply({"op": "delete", "ids": [1]})
    others[0].join(30)
    assert logged(draft_of(result)) == ["delete"]
    (own,) = own_draft_of(result)
    assert logged(own) == ["merge"]  # the first viewer's edit is on disk too, in its own draft


def test_another_process_holding_the_drafts_lock_is_waited_for(result):
    import threading

    pytest.importorskip("fcntl", reason="the draft's check and write are locked with fcntl.flock (POSIX)")
    hold = ("import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\nsys.stdin.read()\n")
    other = subprocess.Popen([sys.executable, "-c", hold, str(result.parent / ".clip.draft-lock")],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    viewer = Viewer(result, token="t")
    editing = threading.Thread(target=viewer.apply, args=(OPS[0],))
    try:
        assert other.stdout.readline().strip() == "locked"
        editing.start()
        editing.join(0.5)
        assert editing.is_alive() and not draft_of(result).exists()  # waiting for the other process
    finally:
        other.stdin.close()
        other.wait(30)
    editing.join(30)
    assert logged(draft_of(result)) == ["merge"] and not (result.parent / ".clip.draft-lock").exists()


def test_a_run_writing_the_result_named_like_the_draft_does_not_hold_the_viewer(result):
    """Drafts were locked on `.<name>.draft.lock`, which is the run lock of the result
    `<name>.draft` (the input clip.draft.mp4): a `segment` run writing it held each edit of the
    viewer of <name> waiting until it ended (and a run starting during an edit was refused)."""
    import threading

    pytest.importorskip("fcntl", reason="runs and drafts are locked with fcntl.flock (POSIX)")
    from entitysam.io.output_lock import OutputLock

    with OutputLock.acquire(result.parent / f"{result.name}.draft"):
        # (opening the result takes the draft's lock too)
        editing = threading.Thread(target=lambda: Viewer(result, token="t").apply(OPS[0]), daemon=True)
        editing.start()
        editing.join(20)
        assert not editing.is_alive(), "the viewer waited for the run writing another result"
    assert logged(draft_of(result)) == ["merge"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_named_pipe_where_the_drafts_lock_goes_is_left_and_said(result):
    said = []
    lock = result.parent / f".{result.name}.draft-lock"
    os.mkfifo(lock)
    viewer = edited(result, say=said.append)
    assert lock.is_fifo() and not draft_of(result).exists()
    assert viewer.state()["unsaved"] is True and any("not a lock file" in s for s in said), said
