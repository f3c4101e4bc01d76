"""Checkpoints of a huge number of empty parts, made by hand: a zip archive of a million empty
records (90 MB) took 58 s and 1.2 GB to load, a safetensors file of 500 000 tensors of no elements
(24 MB) 67 s and 700 MB. Over 100 000 (torch.save writes a record a tensor storage, safetensors an
entry a tensor: 1 479 and 1 473 for the published vit-l) each is refused before anything is listed."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
import torch

from _blocking import within
from entitysam import cli
from entitysam.checkpoint_scan import MAX_TENSORS, scan_safetensors
from entitysam.checkpoint_zip import MAX_RECORDS, MAX_STORAGES, count_records
from entitysam.checkpoints import read_checkpoint
from entitysam.errors import CheckpointReadError

_LOCAL = struct.Struct("<4s5H3L2H")
_CENTRAL = struct.Struct("<4s6H3L5H2L")


def _archive(path, count: int) -> None:
    """A torch.save archive of {} and `count` empty records besides, written by hand (zipfile
    takes seconds), with zip64 end records as zipfile writes them past 65 535 records."""
    records = [("a/data.pkl", b"\x80\x02}q\x00."), ("a/byteorder", b"little"), ("a/version", b"3\n")]
    records += [(f"a/data/{i}", b"") for i in range(count)]
    local, central, offset = [], [], 0
    for name, data in records:
        crc, raw = zlib.crc32(data), name.encode()
        local.append(_LOCAL.pack(b"PK\x03\x04", 20, 0, 0, 0, 0, crc, len(data), len(data), len(raw), 0) + raw + data)
        central.append(_CENTRAL.pack(b"PK\x01\x02", 20, 20, 0, 0, 0, 0, crc, len(data), len(data), len(raw), 0, 0, 0,
                                     0, 0, offset) + raw)
        offset += len(local[-1])
    directory = b"".join(central)
    end64 = offset + len(directory)
    tail = (struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, len(records), len(records), len(directory),
                        offset) + struct.pack("<4sLQL", b"PK\x06\x07", 0, end64, 1)
            + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, len(directory), offset, 0))
    path.write_bytes(b"".join(local) + directory + tail)


def _safetensors(path, count: int, note: str | None = "") -> None:
    """A safetensors file of one float and `count` tensors of no elements (metadata: `note`, none
    where None)."""
    header = {"__metadata__": {"note": note}} if note is not None else {}
    header["w"] = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
    header.update({f"e{i}": {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]} for i in range(count)})
    data = json.dumps(header, separators=(",", ":")).encode()
    path.write_bytes(struct.pack("<Q", len(data)) + data + bytes(4))


def _one_line(path, tmp_path, capsys) -> str:
    from PIL import Image

    still = tmp_path / "still.png"
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(still)
    rc = cli.main(["segment", str(still), "-o", str(tmp_path / "out"), "--checkpoint", str(path), "-q"])
    text = capsys.readouterr().err
    assert rc == 1 and text.startswith("error: ") and len(text.strip().splitlines()) == 1, (rc, text)
    return text


def test_an_archive_of_too_many_records_is_refused_before_they_are_listed(tmp_path, capsys):
    path = tmp_path / "records.pth"
    _archive(path, MAX_RECORDS + 1)
    message = f"its zip archive holds over {MAX_RECORDS} records (torch.save writes one a tensor's storage"
    with pytest.raises(CheckpointReadError, match=message.replace("(", r"\(")):
        within(30, read_checkpoint, path)
    assert message in _one_line(path, tmp_path, capsys)
    fewer = tmp_path / "fewer.pth"  # the same layout, a few records: read (an empty dict)
    _archive(fewer, 10)
    assert read_checkpoint(fewer) == {}


def test_a_safetensors_header_of_too_many_tensors_is_refused_before_they_are_made(tmp_path, capsys):
    path = tmp_path / "many.safetensors"
    _safetensors(path, MAX_TENSORS)
    message = f"its safetensors header lists over {MAX_TENSORS} tensors"
    with pytest.raises(CheckpointReadError, match=message):
        within(30, read_checkpoint, path)
    assert message in _one_line(path, tmp_path, capsys)
    braces = tmp_path / "braces.safetensors"  # "{" in a string are no tensors: counted as the JSON is read
    _safetensors(braces, 3, note="{" * (MAX_TENSORS + 10))
    assert within(30, read_checkpoint, braces)["w"].shape == (1,)


def test_a_checkpoint_of_the_most_tensors_allowed_passes_the_counts(tmp_path):
    """A torch.save archive of MAX_STORAGES tensors (a record each and six more) and a
    safetensors file of MAX_TENSORS, with or without metadata, pass; one tensor more does not."""
    most = tmp_path / "most.pth"
    _archive(most, MAX_STORAGES + 3)  # (with its data.pkl, byteorder and version: torch.save's count)
    with open(most, "rb") as f:
        count_records(f, most.stat().st_size)
    for note in ("", None):
        at_most, over = tmp_path / "at-most.safetensors", tmp_path / "over.safetensors"
        _safetensors(at_most, MAX_TENSORS - 1, note)
        _safetensors(over, MAX_TENSORS, note)
        with open(at_most, "rb") as f:
            scan_safetensors(f, at_most)
        with open(over, "rb") as f, pytest.raises(CheckpointReadError, match=f"lists over {MAX_TENSORS} tensors"):
            scan_safetensors(f, over)


def test_the_published_models_are_far_under_the_bounds():
    """vit-l: a record a tensor and six more, a safetensors entry a tensor; its training
    checkpoint with two moments a weight (AdamW) three times as many."""
    from entitysam.config import get_config
    from entitysam.modeling.entitysam import EntitySAM

    with torch.device("meta"):
        tensors = len(EntitySAM(get_config("vit-l")).state_dict())
    assert 1000 < tensors and 3 * tensors + 6 < MAX_RECORDS / 10 and MAX_TENSORS == MAX_STORAGES
    assert MAX_STORAGES + 6 <= MAX_RECORDS <= MAX_STORAGES + 100
