"""Output paths FFmpeg could read as a protocol and an address: a relative path whose first part is
letters, digits, '+', '-' or '.' followed by a colon (`10:30/`, `pipe:x/`, `.t10:30.partial-*/`).
The overlay video was opened by that name: a traceback ("Protocol not found") or a failure in
words that meant nothing ("Invalid argument"), after the whole video was segmented."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _cli import run_cli
from _media import scene, write_video
from entitysam.io.overlay import OverlayWriter

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("folder", ["10:30", "pipe:x", "file:y", "concat:z"])
@pytest.mark.parametrize("streaming", [False, True])
def test_the_overlay_goes_to_the_file_named(tmp_path, monkeypatch, folder, streaming):
    import av

    monkeypatch.chdir(tmp_path)
    (tmp_path / folder).mkdir()
    name = f"{folder}/overlay.{'ts' if streaming else 'mp4'}"
    writer = OverlayWriter(name, 10, streaming=streaming)
    for t in range(2):
        writer.add(scene(t), np.zeros((48, 64), np.int32))
    writer.close()
    assert [p.name for p in (tmp_path / folder).iterdir()] == [name.split("/")[1]]
    with av.open(str(tmp_path / name)) as c:
        assert len(list(c.decode(video=0))) == 2


def test_a_video_named_with_a_colon_segmented_into_the_current_folder(tmp_path, monkeypatch, tiny_checkpoint):
    """A recording named by its time, written into the current folder: its partial folder
    `.t10:30.partial-*` read as the protocol `.t10`."""
    monkeypatch.chdir(tmp_path)
    write_video(tmp_path / "t10:30.mp4", 2)
    r = run_cli("t10:30.mp4", "-o", ".", "--checkpoint", tiny_checkpoint, "-q", "--save", "overlay")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert json.loads((tmp_path / "t10:30" / "manifest.json").read_text())["complete"] is True
    assert (tmp_path / "t10:30" / "overlay.mp4").stat().st_size > 0
