"""What a checkpoint is checked for before torch's weights-only unpickler (or safetensors) reads
it, where that unpickler is safe from code but not from crashes or memory bombs.

* `scan_checkpoint(f, path)`: the structure of the open file, read without building anything: a
  ``torch.save`` zip archive must hold at most `checkpoint_zip.MAX_RECORDS` records (counted
  before they are listed), each once and uncompressed (torch writes them so;
  a compressed record is inflated in memory before its size is checked: a 4 MB file took 1.8 GB,
  a zip bomb any amount), and read alike by torch's own zip reader (`checkpoint_zip`), whose
  data.pkl is the one checked; and each pickle the load would read (a zip archive's data.pkl, the
  legacy format's pickles) is walked by `checkpoint_pickle.walk_pickle`: no tuples nested deeper
  than `MAX_TUPLE_DEPTH` (a dict key of 1 M nested tuples, 1 MB of opcodes, crashed Python with a
  C stack overflow while the unpickler hashed it), and no more data than a few times the file's
  size (``bytearray(10**10)`` from 30 bytes; one 1 MB string encoded 2000 times through the memo),
  nor dict or set keys of one hash (`checkpoint_values`: 60 000 took the unpickler minutes).
* `scan_safetensors(f, path)`: a safetensors file whose header lists over `MAX_TENSORS` tensors
  (500 000 of no elements, a 24 MB file, took 67 s and 700 MB to load), counted as the header's
  JSON is parsed, before any tensor is made.
* `numpy_safe_globals()`: the numpy globals the weights-only load may use besides torch's own.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import IO

from .checkpoint_pickle import MAX_TUPLE_DEPTH, Budget, walk_pickle
from .checkpoint_zip import MAX_STORAGES, ArchiveProblem, count_records, torch_pickle
from .errors import CheckpointReadError, printable

__all__ = ["MAX_TUPLE_DEPTH", "MAX_TENSORS", "REFUSED", "scan_checkpoint", "scan_safetensors", "numpy_safe_globals"]

# How numpy_safe_globals' stand-ins refuse a numpy object (followed by its name): as an unpickling
# refusal, like torch's for any other class, so that allow_pickle=True still reads such a file.
REFUSED = "Refused numpy object:"
# The pickles the legacy (pre-zip) format holds before its raw storages: magic number, protocol
# version, system info, the object, the storage keys; torch reads each with the weights-only unpickler.
_LEGACY_PICKLES = 5
# A safetensors file lists each tensor once (1 473 for the published vit-l), as torch.save writes a
# record each: the same bound.
MAX_TENSORS = MAX_STORAGES
_HEADER = 100_000_000  # the longest header safetensors reads
_ENTRY = object()  # what an object of a safetensors header is parsed as, for counting


class _Capped:
    """A file read no further than its end: a pickle's 4 GB length field made read() allocate 4 GB
    before finding the file shorter."""

    def __init__(self, f: IO[bytes], size: int):
        self.f, self.size = f, size

    def read(self, n: int = -1) -> bytes:
        left = max(0, self.size - self.f.tell())
        return self.f.read(left if n < 0 else min(n, left))

    def readline(self) -> bytes:
        return self.f.readline(max(0, self.size - self.f.tell()))

    def tell(self) -> int:
        return self.f.tell()


def _refuse(path: Path, cause: str) -> CheckpointReadError:
    return CheckpointReadError(f"cannot read checkpoint {path}: {cause}")


def scan_checkpoint(f: IO[bytes], path: Path) -> None:
    """Raise CheckpointReadError for a pickle checkpoint (the open file `f`, named `path` in
    messages) whose structure could crash the loader or make it allocate far more than the file's
    size (see the module's docstring)."""
    size = os.fstat(f.fileno()).st_size
    f.seek(0)
    if f.read(4) != b"PK\x03\x04":  # what torch.load takes for a zip archive; else the legacy format:
        f.seek(0)  # pickles in a row, then raw storages; one load reads them all
        budget = Budget(size)
        for _ in range(_LEGACY_PICKLES):
            cause = walk_pickle(_Capped(f, size), budget, legacy=True)
            if cause:
                raise _refuse(path, f"it {cause}")
        return
    try:
        count_records(f, size)  # before zipfile lists them
        with zipfile.ZipFile(f) as archive:
            records = archive.infolist()
            packed = [r.filename for r in records if r.compress_type != zipfile.ZIP_STORED]
            if packed:
                raise _refuse(path, f"its record {printable(packed[0], 80)} is compressed (torch.save stores "
                                    "records as they are; unpacking one could take far more memory than the file)")
            pickled = torch_pickle(f, archive)  # what torch's own zip reader gives its unpickler
        cause = pickled is not None and walk_pickle(io.BytesIO(pickled), Budget(size))
    except ArchiveProblem as problem:
        raise _refuse(path, f"its zip archive {problem.problem}") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError) as err:
        # refused rather than left to torch: what cannot be checked is not read (ValueError: a
        # name flagged UTF-8 that is not, which zipfile raises as a raw UnicodeDecodeError)
        raise _refuse(path, "not a readable PyTorch checkpoint (truncated, or not written by torch.save?): "
                            f"a damaged zip archive ({type(err).__name__})") from None
    if cause:
        raise _refuse(path, f"its {printable(records[0].filename.partition('/')[0], 80)}/data.pkl {cause}")


def scan_safetensors(f: IO[bytes], path: Path) -> None:
    """Raise CheckpointReadError for a safetensors file (the open file `f`) whose header lists over
    MAX_TENSORS tensors. A header safetensors cannot read is left to it: its own message says why."""
    f.seek(0)
    length = int.from_bytes(f.read(8), "little")
    left, braces = (length, 0) if 2 <= length <= min(_HEADER, os.fstat(f.fileno()).st_size - 8) else (0, 0)
    while left > 0 and braces <= MAX_TENSORS + 1:  # each entry is an object: its "{" bound them, read in parts
        part = f.read(min(left, 1 << 20))
        left, braces = (left - len(part) if part else 0), braces + part.count(b"{")
    if braces > MAX_TENSORS + 1:  # (the header's own "{"; a string may hold "{" too: counted as JSON is parsed)
        f.seek(8)
        too_many = _refuse(path, f"its safetensors header lists over {MAX_TENSORS} tensors (a checkpoint holds "
                                 "one a weight, and each takes time and memory to make)")
        try:
            json.loads(f.read(length), object_pairs_hook=_counted(MAX_TENSORS, too_many))
        except (ValueError, RecursionError):
            pass
    f.seek(0)


def _counted(most: int, too_many: CheckpointReadError):
    """A hook of json.loads that stops the parse with `too_many` once over `most` tensors are
    certain (the entries so far are all it has built): an object a tensor, the metadata's, the
    header's own (the last: its entries that are objects, less "__metadata__", are the tensors)."""
    objects = 0

    def hook(pairs: list) -> object:
        nonlocal objects
        objects += 1
        if objects > most + 2 or sum(value is _ENTRY and key != "__metadata__" for key, value in pairs) > most:
            raise too_many
        return _ENTRY

    return hook


def numpy_safe_globals() -> list:
    """The numpy globals a weights-only load may call, besides what torch allows by default.

    Checkpoints of detectron2-style trainers (``{"model", "optimizer", "scheduler", "iteration",
    ...}``, as the official training code writes them) can hold numpy scalars (an iteration or a
    learning rate computed with numpy) or small numeric arrays. Under numpy's names stand checked
    versions that build only what numpy's own pickles build: a dtype of a number or a string (no
    object, no fields, no sub-array), a scalar from its bytes, an array as an empty one that
    ``ndarray.__setstate__`` fills from bytes in the file (checking their length). The array class
    itself cannot be called: ``numpy.ndarray((10**9,), "O")``, a few bytes, made an 8 GB array of
    None, and ``_reconstruct`` with dtype "O" rebuilt object arrays, which stay refused.
    """
    try:
        import numpy as np  # noqa: PLC0415
    except ImportError:
        return []
    try:
        from numpy._core import multiarray  # noqa: PLC0415 - numpy 2
    except ImportError:
        from numpy.core import multiarray  # noqa: PLC0415 - numpy 1

    def plain(dtype):
        d = np.dtype(dtype)
        if d.hasobject or d.fields is not None or d.subdtype is not None or d.kind not in "biufcSU":
            raise pickle.UnpicklingError(f"{REFUSED} numpy.{d.type.__name__}")  # object_, void, datetime64, ...
        return d

    def dtype(*args):  # numpy pickles a dtype as dtype(code, False, True), then sets its state
        return plain(np.dtype(*args))

    def ndarray(*args, **kwargs):  # only ever an argument of _reconstruct below
        raise pickle.UnpicklingError(f"{REFUSED} numpy.ndarray")

    def reconstruct(subtype, shape, code):  # what numpy pickles: _reconstruct(ndarray, (0,), b"b")
        if subtype is not ndarray or shape != (0,):
            raise pickle.UnpicklingError(f"{REFUSED} numpy.core.multiarray._reconstruct")
        return multiarray._reconstruct(np.ndarray, (0,), plain(code))

    # The class itself is listed so that the unpickler lets __setstate__ fill an array, under a
    # name without a dot, which no GLOBAL opcode ("module.name") can ask for.
    allowed: list = [(ndarray, "numpy.ndarray"), (dtype, "numpy.dtype"), (np.ndarray, "numpy arrays (setstate)")]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):  # names in pickles of numpy 1 / 2
        allowed += [(multiarray.scalar, f"{module}.scalar"), (reconstruct, f"{module}._reconstruct")]
    allowed += list(dict.fromkeys(type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDGUS"))  # numeric, str
    return allowed
