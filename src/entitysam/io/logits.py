"""``logits.npz``: the low-res mask logits of a run (``--save-logits``), and where they may go."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import OutputError, Remedy
from .atomic import locked_temp_file, publish_no_replace, temp_path
from .paths import UnsafeOverwriteError, check_not_input, check_name_fits, describe_os_error, path_relation

__all__ = ["logits_file", "check_logits_file", "save_logits_npz", "remove_failed_logits"]


def logits_file(path: str | os.PathLike) -> Path:
    """The file a logits path names: ``.npz`` is added when missing."""
    path = Path(path)
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def check_logits_file(path: str | os.PathLike, *, overwrite: bool = False, result_dir: str | os.PathLike | None = None,
                      inputs: Sequence[Any] = ()) -> Path:
    """Where ``--save-logits FILE`` may write: the folder must exist; an existing FILE is replaced
    only with ``overwrite`` and only if it is a plain file and not an input; never inside the
    result folder (replaced as a whole, which would delete it). Raises OutputError
    (UnsafeOverwriteError for the unsafe cases); returns the file."""
    path = logits_file(path)
    if result_dir is not None and path_relation(Path(os.path.realpath(path)), Path(os.path.realpath(result_dir))):
        raise UnsafeOverwriteError(f"logits file {path} lies inside the result folder {result_dir}, which is "
                                   "written as a whole: choose a file outside it (the result folder itself "
                                   "can hold logits.npz)")
    if not path.parent.is_dir():
        raise OutputError(f"logits file {path}: the folder {path.parent} does not exist (create it first)")
    check_name_fits(path, "logits file")
    if os.path.lexists(path):
        if path.is_symlink() or not path.is_file():
            raise UnsafeOverwriteError(f"logits file {path} exists and is not a plain file: refusing to replace it")
        if not overwrite:
            raise OutputError(f"logits file {path} already exists", Remedy("overwrite", True, "to replace it"))
        check_not_input(path, inputs, "the logits file")
    return path


def save_logits_npz(path: str | os.PathLike, logits: Any, scores: np.ndarray, *, overwrite: bool = True,
                    **extra: np.ndarray) -> Path:
    """Write ``logits`` [n, Q, h, w] (low-res mask logits after hole filling, frame-major),
    ``scores`` [Q] and any ``extra`` arrays to an uncompressed .npz (``np.load`` reads it),
    atomically: a temporary file in the same folder, renamed when complete. overwrite=False:
    an existing file is never replaced, even one that appeared while the data was written
    (another run given the same file): OutputError, nothing written.

    ``logits`` is an array or an object with ``.frames()`` returning a fresh [n, Q, h, w]
    memmap (a LogitStore): it is then copied a few frames at a time, each through a new
    mapping, so the process never holds more than one chunk of it.
    """
    import zipfile  # noqa: PLC0415

    path = logits_file(path)
    if not path.parent.is_dir():  # never create folders anywhere a mistyped path points to
        raise OutputError(f"cannot write {path}: the folder {path.parent} does not exist")
    from .staging import remove_dead_temp_files  # noqa: PLC0415

    # A run killed while writing (SIGKILL: the OOM killer, a pre-empted node) left its temporary
    # file, as large as the logits, hidden in this folder for good.
    remove_dead_temp_files(path.parent, "partial")
    tmp = temp_path(path, "partial")
    fresh = logits.frames if hasattr(logits, "frames") else (lambda: logits)
    first = fresh()
    shape, dtype = tuple(first.shape), first.dtype
    del first
    frame_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    step = max(1, (16 << 20) // max(1, frame_bytes))
    try:
        with locked_temp_file(tmp) as raw:  # (locked while written: never taken for a killed run's leftover)
            with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
                with zf.open("logits.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array_header_2_0(
                        f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
                    for t0 in range(0, shape[0], step):
                        chunk = fresh()[t0:t0 + step]
                        f.write(np.ascontiguousarray(chunk).tobytes())
                        del chunk
                for key, value in {"scores": np.asarray(scores), **extra}.items():
                    with zf.open(f"{key}.npy", "w", force_zip64=True) as f:
                        np.lib.format.write_array(f, np.asarray(value), allow_pickle=False)
            # closed first (a write error that the file system reports only on close publishes
            # nothing), published still locked (no cleaner takes it for a killed run's in between)
            raw.close()
            if overwrite:
                os.replace(tmp, path)
            else:
                publish_no_replace(tmp, path)
    except FileExistsError:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"logits file {path} appeared while this run wrote it (another run writing the same "
                          "file?): left as it is, this run's logits not saved",
                          Remedy("overwrite", True, "to replace it")) from None
    except OSError as err:  # named here: the run's caller would blame its result folder, on another disk maybe
        tmp.unlink(missing_ok=True)
        if err.filename == str(tmp):
            err.filename = None  # (the hidden name is gone; the message names the file)
        raise OutputError(describe_os_error(err, f"logits file {path}")) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def remove_failed_logits(written: Sequence[tuple[Path, os.stat_result]]) -> None:
    """Remove the logits files a run wrote (`written`: each with its identity right after it was
    published) when the run then fails: a FILE left without its result made every re-run fail on
    it ("already exists", exit 2; a resumed shard failed the video for good). Only a file that is
    still the one written is removed."""
    for path, identity in written:
        try:
            if os.path.samestat(os.lstat(path), identity):
                os.unlink(path)
        except OSError:
            pass
