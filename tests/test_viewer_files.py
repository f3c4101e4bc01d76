"""`entitysam.review.web_files.safe_file`: the viewer serves only regular files inside its roots."""

from __future__ import annotations

import os

import pytest

from entitysam.review.web_files import media_type, safe_file


@pytest.fixture()
def tree(tmp_path):
    root = tmp_path / "result"
    (root / "panoptic").mkdir(parents=True)
    (root / "panoptic" / "000000.png").write_bytes(b"png")
    (root / "manifest.json").write_text("{}")
    (tmp_path / "secret.txt").write_text("outside")
    os.symlink(tmp_path / "secret.txt", root / "link-out.txt")
    os.symlink(tmp_path, root / "dir-out")
    os.symlink(root / "manifest.json", root / "link-in.json")
    return root


def test_files_inside_the_root_are_served(tree):
    assert safe_file(tree, "manifest.json") == (tree / "manifest.json").resolve()
    assert safe_file(tree, "panoptic/000000.png") == (tree / "panoptic" / "000000.png").resolve()
    assert safe_file(tree, "link-in.json") == (tree / "manifest.json").resolve()  # a symlink that stays inside


@pytest.mark.parametrize("path", [
    "../secret.txt", "panoptic/../../secret.txt", "..", "./manifest.json", "panoptic//000000.png",
    "/etc/passwd", str("/" / __import__("pathlib").Path("etc/passwd")), "C:/Windows/win.ini", "..\\secret.txt",
    "manifest.json\x00.png", "link-out.txt", "dir-out/secret.txt", "panoptic", "", "missing.json",
])
def test_anything_else_is_refused(tree, path):
    assert safe_file(tree, path) is None


def test_media_types():
    from pathlib import Path

    assert media_type(Path("a.js")) == "text/javascript"
    assert media_type(Path("a.PNG")) == "image/png"
    assert media_type(Path("a.unknownext")) == "application/octet-stream"
