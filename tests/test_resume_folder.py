"""resume=<a folder>: the checkpoint suggested is one in that folder, never one elsewhere."""

from __future__ import annotations

import pytest

from entitysam.train.resume import folder_given


@pytest.mark.parametrize("named", ["../elsewhere.pth", "ABSOLUTE", "sub/../../elsewhere.pth"])
def test_a_last_checkpoint_naming_a_file_elsewhere_is_not_suggested(tmp_path, named):
    """A last_checkpoint naming '../elsewhere.pth' or an absolute path had that file suggested as
    "the checkpoint in it" (resume=FOLDER/../elsewhere.pth); now a checkpoint of the folder is."""
    folder = tmp_path / "run"
    (folder / "sub").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere.pth"
    elsewhere.write_bytes(b"x")
    (folder / "model_0000009.pth").write_bytes(b"x")
    (folder / "last_checkpoint").write_text(str(elsewhere) if named == "ABSOLUTE" else named)
    message = folder_given(folder, tmp_path / "out")
    assert "elsewhere" not in message
    assert f"resume={folder / 'model_0000009.pth'}" in message
