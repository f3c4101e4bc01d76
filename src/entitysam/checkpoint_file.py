"""A checkpoint file opened once, for every read of it: the structure check, torch.load, safetensors.

* `open_checkpoint(path)`: the open file (binary, seekable, blocking), or CheckpointReadError for
  what is no regular file: missing, a folder, a pipe, a device, a socket.
* `is_safetensors(f, path)`: whether the open file is read as safetensors (by its start, else
  by the suffix of `path`).
* `text_start(f)`: the first line of the file when its first KiB is text, else None (asked once
  a load failed, to say what was given instead of a checkpoint).
* `pickle_with_globals(f)`: whether the file starts with whole pickles of which one names a
  global (walked opcode by opcode, nothing built): a protocol-0 pickle is text too.

(A name that opens the same file again, for a reader that only takes names, is
`entitysam.regular_file.reopenable_name`.)

Checking the path, then opening it by name for each reader, let a path swapped for a FIFO between
the check and an open hang the loader for ever (an open of a FIFO waits for a writer). Now the
path is opened once without waiting (O_NONBLOCK), and what is open is checked (fstat;
entitysam.regular_file, the one open of every input and served file), so a file
swapped in after the check is refused, and one swapped after the open is never read.
"""

from __future__ import annotations

import codecs
import io
import os
import pickletools
from pathlib import Path
from typing import BinaryIO

from .errors import CheckpointReadError
from .regular_file import open_regular

__all__ = ["open_checkpoint", "is_safetensors", "text_start", "pickle_with_globals"]

_NOT_REGULAR = "it is not a regular file (a pipe, a device or a socket)"
_FOLDER = "it is a folder, not a checkpoint file"


def _refused(path: Path, why: str) -> CheckpointReadError:
    return CheckpointReadError(f"cannot read checkpoint {path}: {why}")


def open_checkpoint(path: Path) -> BinaryIO:
    """The checkpoint file at `path`, opened for reading (see the module's docstring)."""
    # Checked by name first, so that a pipe or a device is refused without being opened (opening
    # some devices does something); the check of the open file (entitysam.regular_file) is the one that holds.
    if path.is_dir():
        raise _refused(path, _FOLDER)
    if not path.is_file():
        if path.exists():
            raise _refused(path, _NOT_REGULAR)
        raise CheckpointReadError(f"checkpoint not found: {path}")
    try:
        f = open_regular(path)
    except FileNotFoundError:
        raise CheckpointReadError(f"checkpoint not found: {path}") from None
    except OSError as err:  # no permission, ...
        raise _refused(path, err.strerror or type(err).__name__) from None
    if f is None:  # swapped since the check above
        raise _refused(path, _FOLDER if path.is_dir() else _NOT_REGULAR)
    return f


def is_safetensors(f: BinaryIO, path: Path) -> bool:
    """Whether `f` is read as safetensors: by its start where that tells (an 8-byte little-endian
    header length that fits the file, then a JSON object; a zip archive or a pickle's PROTO is
    torch.save's), else by its suffix, in any case. By the suffix alone, a safetensors file named
    .pth or .SAFETENSORS failed as "Unsupported operand 112", a torch.save file named .safetensors
    as "header too large"."""
    f.seek(0)
    head = f.read(9)
    f.seek(0)
    size = os.fstat(f.fileno()).st_size
    # The layout is tested first: a header length's low byte is 0x80 (a pickle's PROTO) for one
    # safetensors file in 32. No torch.save file fits it (byte 8 of a zip or a pickle is no "{").
    if len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= size - 8:
        return True
    named = path.suffix.lower() == ".safetensors"
    if named and head[8:9] == b"{":  # cut short (a copy stopped midway): safetensors' own words say so
        return True
    if head[:1] == b"\x80" or head[:4] == b"PK\x03\x04":
        return False
    return named


def text_start(f: BinaryIO) -> str | None:
    """The first line of `f` when its first KiB is text (UTF-8 without control characters but tabs
    and line breaks), else None. Only asked once a load failed: torch's cause for a text file
    is an unpickler's opcode or memo key ("101"), which says nothing of what the file is."""
    f.seek(0)
    try:  # not final: a character the KiB cuts in two is no sign of binary data
        text = codecs.getincrementaldecoder("utf-8")().decode(f.read(1024)).lstrip("\ufeff")
    except UnicodeDecodeError:
        return None
    if not all(c.isprintable() or c in "\t\n\r\f\v" for c in text):
        return None
    return text.strip().splitlines()[0] if text.strip() else ""


# How much of a text file is walked as pickle opcodes to tell a protocol-0 pickle from text
_WALKED = 1 << 20
# The pickles torch reads from the start of a legacy (pre-zip) file (magic number, protocol,
# system info, the object, the storage keys; as checkpoint_scan._LEGACY_PICKLES)
_PICKLES = 5


def pickle_with_globals(f: BinaryIO) -> bool:
    """Whether `f` starts with whole pickles (each up to its STOP) of which one names a global
    (GLOBAL, INST, STACK_GLOBAL), walked opcode by opcode without building anything. Asked of a
    text file that torch's weights-only unpickler refused for a global: a protocol-0 pickle is
    text too, and one that names a class is refused as pickled objects; but any text starting
    with "c" (pickle's GLOBAL), "i" (INST) reads as one to that unpickler, which takes the global
    before it finds the file ends (a one-word file "cat", a CSV, a YAML file), and those were
    called pickled Python objects. A file longer than the part walked counts as a pickle."""
    f.seek(0)
    data = f.read(_WALKED + 1)
    stream = io.BytesIO(data[:_WALKED])
    try:
        for _ in range(_PICKLES):
            names = [op.name for op, _, _ in pickletools.genops(stream)]  # (all of it: up to its STOP)
            if {"GLOBAL", "INST", "STACK_GLOBAL"} & set(names):
                return True
            if stream.tell() >= len(data):  # (genops stops at STOP: past it, the file goes on or ends)
                return False
    except ValueError:  # cut short before a STOP, or a byte that is no opcode: no unpickler reads it through
        return len(data) > _WALKED
    return False
