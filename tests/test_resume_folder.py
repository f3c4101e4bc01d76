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


@pytest.mark.parametrize("value", ["never", "no", "false", "off", "NO", "Auto"])
def test_resume_words_read_as_yaml_booleans_are_not_file_names(tmp_path, value):
    """resume=no / false / off arrive as the string "False" (the override is read as YAML): it was
    looked for as a file, "resume checkpoint not found: False"."""
    from entitysam.train.config import load_config
    from entitysam.train.resume import find_resume_checkpoint

    (tmp_path / "model_final.pth").write_bytes(b"x")
    (tmp_path / "last_checkpoint").write_text("model_final.pth")
    cfg = load_config("tiny-stage2", [f"resume={value}", f"output_dir={tmp_path}"])
    expected = str(tmp_path / "model_final.pth") if value.lower() == "auto" else None
    assert find_resume_checkpoint(cfg) == expected
