"""Checkpoint files made by hand to break the loader (see tests/test_checkpoint_safety.py for the
refusal of pickled code): each gives one short message naming the file, never a crash, a
traceback, a terminal escape or a huge allocation."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from _media import tiny_state_dict
from entitysam import cli
from entitysam.checkpoints import load_entitysam
from entitysam.errors import CheckpointMismatchError, CheckpointReadError

ESCAPES = "\x1b]0;OWNED\x07\x1b[2J\x1b[31m"


def _segment(path, tmp_path, capsys) -> tuple[int, str]:
    """`entitysam segment` of a one-frame still with --checkpoint `path`: exit code, stderr."""
    import numpy as np
    from PIL import Image

    still = tmp_path / "still.png"
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(still)
    rc = cli.main(["segment", str(still), "-o", str(tmp_path / "out"), "--checkpoint", str(path), "-q"])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("kind", ["key", "safetensors-dtype"])
def test_text_from_the_file_cannot_drive_the_terminal(tmp_path, capsys, kind):
    """A key or a dtype name of the file went raw into the message: escape sequences of a hostile
    file cleared the terminal, retitled it, coloured what followed; a 3 MB key made a 3 MB message."""
    if kind == "key":
        path = tmp_path / "escape.pth"
        torch.save({"model": {**tiny_state_dict(), ESCAPES + "fake": torch.zeros(1),
                              "k" * 3_000_000: torch.zeros(1)}}, path)
        error = CheckpointMismatchError
    else:
        path = tmp_path / "escape.safetensors"
        header = json.dumps({"a": {"dtype": ESCAPES + "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
        path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
        error = CheckpointReadError
    with pytest.raises(error) as err:
        load_entitysam(path)
    rc, text = _segment(path, tmp_path, capsys)
    for message in (str(err.value), text):
        assert "\x1b" not in message and "\x07" not in message and "\\x1b" in message
        assert len(message) < 3000
    assert rc == 1 and "Traceback" not in text
