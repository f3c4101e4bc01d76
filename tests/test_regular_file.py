"""entitysam.regular_file where the platform lacks O_NONBLOCK (Windows), emulated here."""

from __future__ import annotations

import os

from entitysam import regular_file


def test_files_open_where_there_is_no_o_nonblock_nor_os_set_blocking(tmp_path, monkeypatch):
    """Windows has no O_NONBLOCK, and os.set_blocking only from Python 3.12: every file opened
    through regular_file (checkpoints, frames, training and eval logs) was an AttributeError
    traceback there. Emulated: the flag cleared, os.set_blocking removed."""
    monkeypatch.setattr(regular_file, "_NONBLOCK", 0, raising=False)
    monkeypatch.setattr(regular_file, "_FLAGS", regular_file._FLAGS & ~os.O_NONBLOCK)
    monkeypatch.setattr(regular_file, "_WRITE_FLAGS", regular_file._WRITE_FLAGS & ~os.O_NONBLOCK)
    monkeypatch.delattr(os, "set_blocking")
    path = tmp_path / "log.csv"
    with regular_file.open_regular_for_writing(path, newline="", encoding="utf-8") as f:
        f.write("a,b\r\n")
    with regular_file.open_regular_for_writing(path, append=True, newline="", encoding="utf-8") as f:
        f.write("1,2\r\n")
    assert path.read_bytes() == b"a,b\r\n1,2\r\n"
    with regular_file.open_regular(path) as f:
        assert f.read() == b"a,b\r\n1,2\r\n"
    assert regular_file.read_regular_text(path) == "a,b\r\n1,2\r\n"
