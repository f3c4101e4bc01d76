"""Files of a result are read only inside it, also when their path is changed between the check
(the path resolved, inside the result) and the open: a folder on the way swapped for a link to
another folder then was followed, and a file of the same name there was read (an id PNG sent by
/api/idmaps/, read by exports; a file sent by /files/)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette", reason="the viewer needs the `viewer` extra (starlette, uvicorn)")
pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx")

from starlette.testclient import TestClient  # noqa: E402

from _review_result import H, W, make_result  # noqa: E402
from entitysam.errors import ResultFolderError  # noqa: E402
from entitysam.io import idpng  # noqa: E402
from entitysam.review import EditSession, ResultFolder  # noqa: E402
from entitysam.review.export import export_bytes  # noqa: E402
from entitysam.review.server import Viewer, create_app  # noqa: E402

pytestmark = pytest.mark.skipif(os.name == "nt", reason="symbolic links need privileges on Windows")


@pytest.fixture(params=["openat", "by-name"])
def opening(request, monkeypatch):
    """Both ways of opening: component by component (POSIX), and by name with the opened file
    compared to the one checked (where there is no openat without following links: Windows)."""
    if request.param == "by-name":
        import entitysam.review.confined as confined

        monkeypatch.setattr(confined, "_WALKS", False)
    return request.param


def swap_after_the_check(monkeypatch, name: str, folder: Path, elsewhere: Path, back: bool = False) -> list:
    """Once `name` has been resolved (the check), `folder` becomes a link to `elsewhere` (the old
    folder kept beside it); back: and the folder again at the next check (of any file), so that
    only the read of `name` could have gone outside. Returns the list of swaps done (one at most)."""
    resolve, swapped = Path.resolve, []

    def resolve_then_swap(self, strict=False):
        if back and swapped and folder.is_symlink() and strict:
            folder.unlink()
            folder.with_name(folder.name + ".orig").rename(folder)
        real = resolve(self, strict=strict)
        if self.name == name and strict and not swapped:
            folder.rename(folder.with_name(folder.name + ".orig"))
            folder.symlink_to(elsewhere, target_is_directory=True)
            swapped.append(folder)
        return real
    monkeypatch.setattr(Path, "resolve", resolve_then_swap)
    return swapped


def outside_copy(panoptic: Path, tmp_path: Path, name: str) -> Path:
    """A copy of `panoptic` outside the result whose PNG `name` holds other (valid) ids."""
    other = tmp_path / "outside" / "panoptic"
    shutil.copytree(panoptic, other)
    Image.fromarray(idpng.encode_ids(np.ones((H, W), np.uint32))).save(other / name)
    return other


def test_a_panoptic_folder_swapped_for_a_link_after_the_check_is_not_read(tmp_path, monkeypatch, opening):
    result = make_result(tmp_path)
    folder = ResultFolder.open(result)
    png = folder.png_path(0)
    other = outside_copy(result / "panoptic", tmp_path, png.name)
    swapped = swap_after_the_check(monkeypatch, png.name, result / "panoptic", other)
    with pytest.raises(ResultFolderError, match="outside the result folder"):
        data = folder.id_png_bytes(0)
        assert data != (other / png.name).read_bytes()  # the old code read the file outside
    assert swapped


def test_exports_do_not_read_through_a_folder_swapped_after_the_check(tmp_path, monkeypatch, opening):
    result = make_result(tmp_path)
    session = EditSession(ResultFolder.open(result))
    png = session.result.png_path(0)
    other = outside_copy(result / "panoptic", tmp_path, png.name)
    swapped = swap_after_the_check(monkeypatch, png.name, result / "panoptic", other, back=True)
    with pytest.raises(ResultFolderError, match="outside the result folder"):
        export_bytes(session, "ytvis")  # the old code exported the ids of the file outside
    assert swapped


def test_files_does_not_send_through_a_folder_swapped_after_the_check(tmp_path, monkeypatch, opening):
    """/files/ of a folder two levels down (its swap leaves the result folder's own ctime alone,
    which the viewer's check of the result on disk would notice)."""
    result = make_result(tmp_path)
    inner = result / "notes" / "inner"
    inner.mkdir(parents=True)
    (inner / "a.txt").write_text("result's own notes")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "a.txt").write_text("TOP SECRET")
    with TestClient(create_app(Viewer(result, token="t", drafts=False), loopback_only=True)) as client:
        assert client.get("/files/notes/inner/a.txt").text == "result's own notes"
        swapped = swap_after_the_check(monkeypatch, "a.txt", inner, secret)
        reply = client.get("/files/notes/inner/a.txt")
    assert swapped and "TOP SECRET" not in reply.text  # the old server sent it
    assert reply.status_code == 404


def test_a_file_swapped_for_a_link_after_the_check_is_not_read(tmp_path, monkeypatch, opening):
    result = make_result(tmp_path)
    folder = ResultFolder.open(result)
    png = folder.png_path(0)
    outside = tmp_path / "elsewhere.png"
    shutil.copy(png, outside)
    resolve, swapped = Path.resolve, []

    def resolve_then_swap(self, strict=False):
        real = resolve(self, strict=strict)
        if self.name == png.name and strict and not swapped:
            png.unlink()
            png.symlink_to(outside)
            swapped.append(png)
        return real
    monkeypatch.setattr(Path, "resolve", resolve_then_swap)
    with pytest.raises(ResultFolderError, match="outside the result folder|symbolic links"):
        folder.id_png_bytes(0)
    assert swapped


def test_reads_inside_the_result_still_work(tmp_path, opening):
    result = make_result(tmp_path)
    folder = ResultFolder.open(result)
    png = folder.png_path(0)
    moved = result / "panoptic" / "moved.bin"
    png.rename(moved)
    png.symlink_to(moved.name)  # a link that stays inside (made after the open, which refuses links)
    assert folder.id_png_bytes(0) == moved.read_bytes()
    assert all(folder.id_map(t).shape == folder.size for t in range(folder.num_frames))
    png.unlink()
    moved.rename(png)
    with TestClient(create_app(Viewer(result, token="t", drafts=False), loopback_only=True)) as client:
        (result / "link.json").symlink_to("manifest.json")
        assert client.get("/files/link.json").json()["format"] == "entitysam-segment"
        assert client.get(f"/files/panoptic/{png.name}").content == png.read_bytes()


def test_by_name_a_path_outside_at_the_open_is_refused_whatever_it_was_before(tmp_path, monkeypatch):
    """Windows (opened by name, links followed): the path leads outside, is made to lead inside
    when it is resolved and outside again when it is opened. The old code compared the opened
    file with a stat taken before the check (outside, as at the open) and read the file outside."""
    import entitysam.review.confined as confined

    root = tmp_path / "result"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.png").write_bytes(b"inside")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "a.png").write_bytes(b"SECRET")
    sub = root / "sub"

    def lead(where: str) -> None:
        if sub.is_symlink():
            sub.unlink()
        elif sub.exists():
            shutil.rmtree(sub)
        if where == "outside":
            sub.symlink_to(secret, target_is_directory=True)
        else:
            sub.mkdir()
            (sub / "a.png").write_bytes(b"inside")

    resolve, open_regular, opened = Path.resolve, confined.open_regular, []

    def resolve_inside(self, strict=False):
        if strict and self.name == "a.png":
            lead("inside")
        return resolve(self, strict=strict)

    def open_outside(path, **options):
        lead("outside")
        options["follow_links"] = True  # no O_NOFOLLOW on Windows
        f = open_regular(path, **options)
        opened.append(f)
        return f
    monkeypatch.setattr(confined, "_WALKS", False)
    monkeypatch.setattr(Path, "resolve", resolve_inside)
    monkeypatch.setattr(confined, "open_regular", open_outside)
    roots = (resolve(root),)
    lead("outside")
    with pytest.raises(confined.OutsideRootsError):
        f = confined.open_confined(root / "sub" / "a.png", roots)
        assert f.read() != b"SECRET"  # the old code read it
    assert opened and opened[0].closed


def test_by_name_a_file_inside_is_read(tmp_path, monkeypatch):
    import entitysam.review.confined as confined

    monkeypatch.setattr(confined, "_WALKS", False)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.png").write_bytes(b"inside")
    with confined.open_confined(tmp_path / "sub" / "a.png", (tmp_path.resolve(),)) as f:
        assert f.read() == b"inside"
    with pytest.raises(confined.OutsideRootsError):
        confined.open_confined(tmp_path / "sub" / "a.png", ((tmp_path / "other").resolve(),))
