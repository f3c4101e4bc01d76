"""What a pickle checkpoint is checked for before torch's weights-only unpickler reads it, where
that unpickler is safe from code but not from crashes or memory bombs.

* `scan_checkpoint(path)`: the structure of the file, read without building anything: a
  ``torch.save`` zip archive must hold each record once and uncompressed (torch writes them so;
  a compressed record is inflated in memory before its size is checked: a 4 MB file took 1.8 GB,
  a zip bomb any amount), and no pickle in it may nest tuples deeper than `MAX_TUPLE_DEPTH`
  (a dict key of 1 M nested tuples, 1 MB of opcodes, crashed Python with a C stack overflow
  while the unpickler hashed it).
* `numpy_safe_globals()`: the numpy globals the weights-only load may use besides torch's own.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import zipfile
from pathlib import Path
from typing import IO

from .errors import CheckpointReadError

__all__ = ["MAX_TUPLE_DEPTH", "REFUSED", "scan_checkpoint", "numpy_safe_globals", "printable"]

# torch.save nests tuples a few levels deep (a tensor's size inside its rebuild arguments); hashing
# a tuple recurses in C once per level, and some ten thousand levels overflow the C stack.
MAX_TUPLE_DEPTH = 100
_TUPLES = {"EMPTY_TUPLE": 0, "TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}
# How numpy_safe_globals' stand-ins refuse a numpy object (followed by its name): as an unpickling
# refusal, like torch's for any other class, so that allow_pickle=True still reads such a file.
REFUSED = "Refused numpy object:"


def _tuple_depth_ok(stream: IO[bytes]) -> bool:
    """Walk one pickle's opcodes (nothing is built) tracking, for each stack entry, how deeply it
    nests tuples; False as soon as a tuple nests deeper than MAX_TUPLE_DEPTH. A pickle this walk
    cannot follow is left to the unpickler, which fails at the same opcode before reaching later ones."""
    stack: list[int] = []
    marks: list[int] = []
    memo: dict = {}
    try:
        for op, arg, _ in pickletools.genops(stream):
            name = op.name
            if name == "MARK":
                marks.append(len(stack))
                continue
            if name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1]
                continue
            if name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo.get(arg, 0))
                continue
            before = op.stack_before
            popped: list[int] = []
            if pickletools.markobject in before:
                start = marks.pop()
                popped, stack[start:] = stack[start:], []
                before = before[:before.index(pickletools.markobject)]
            if before:
                popped += stack[-len(before):]
                del stack[-len(before):]
            if name == "TUPLE" or name in _TUPLES:
                depth = 1 + max(popped, default=0)
                if depth > MAX_TUPLE_DEPTH:
                    return False
                stack.append(depth)
            else:  # anything else that is pushed nests no tuple a hash would walk into (lists, dicts: unhashable)
                stack.extend(0 for _ in op.stack_after)
    except (ValueError, IndexError, EOFError, MemoryError, OverflowError):  # a 2**62 length field: read() gives up
        pass
    return True


def printable(text: str, limit: int = 200) -> str:
    """Text from a checkpoint (a key, a record name, a loader's message quoting the file) as a
    message shows it: control characters escaped (a hostile file could otherwise drive the
    terminal: clear it, retitle it, fake lines), cut to `limit` characters (a 5 MB key)."""
    cut = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit + 1])
    return cut if len(cut) <= limit else cut[:limit] + " ..."


def _refuse(path: Path, cause: str) -> CheckpointReadError:
    return CheckpointReadError(f"cannot read checkpoint {path}: {cause}")


def scan_checkpoint(path: Path) -> None:
    """Raise CheckpointReadError for a pickle checkpoint whose structure could crash the loader
    or make it allocate far more than the file's size (see the module's docstring)."""
    with open(path, "rb") as f:
        zipped = f.read(4) == b"PK\x03\x04"  # what torch.load takes for a zip archive
        if not zipped:  # the legacy format: up to 4 pickles in a row, then raw storages
            f.seek(0)
            for _ in range(4):
                if not _tuple_depth_ok(f):
                    raise _refuse(path, f"it nests tuples more than {MAX_TUPLE_DEPTH} deep (torch.save never does; "
                                        "unpickling it would crash Python)")
            return
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
            names = [r.filename for r in records]
            if len(set(names)) != len(names):
                raise _refuse(path, "its zip archive holds a record name twice (torch.save never does; "
                                    "which one is read depends on the reader)")
            packed = [r.filename for r in records if r.compress_type != zipfile.ZIP_STORED]
            if packed:
                raise _refuse(path, f"its record {printable(packed[0], 80)} is compressed (torch.save stores "
                                    "records as they are; unpacking one could take far more memory than the file)")
            for record in records:
                if record.filename.rpartition("/")[2] == "data.pkl" and \
                        not _tuple_depth_ok(io.BytesIO(archive.read(record))):
                    raise _refuse(path, f"its {printable(record.filename, 80)} nests tuples more than "
                                        f"{MAX_TUPLE_DEPTH} deep (torch.save never does; unpickling it would crash)")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as err:
        # refused rather than left to torch: what cannot be checked is not read
        raise _refuse(path, "not a readable PyTorch checkpoint (truncated, or not written by torch.save?): "
                            f"a damaged zip archive ({type(err).__name__})") from None


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
