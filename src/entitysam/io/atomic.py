"""Writing a file so that readers see the old content or the new one, never a part of it.

The data goes to a hidden temporary file in the same folder, which is renamed over the target
(`os.replace` is atomic on POSIX and Windows within one file system). `durable=True` also
flushes the file and its folder to disk, for records that must survive a power loss
(journals of a commit in progress).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import IO, Any, Iterator

from .. import jsonio


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", *, durable: bool = False) -> Iterator[IO]:
    """A file object to write `path` through: the data goes to a hidden temporary file beside it,
    renamed over `path` when the block ends without an error (removed when it raises).
    mode: "wb" or "w" (UTF-8 text)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(3)}")
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable:
        fsync_dir(path.parent)


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, durable: bool = False) -> None:
    with atomic_file(path, "wb", durable=durable) as f:
        f.write(data)


def write_text_atomic(path: str | os.PathLike, text: str, *, durable: bool = False) -> None:
    write_bytes_atomic(path, text.encode("utf-8"), durable=durable)


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int | None = None, durable: bool = False) -> None:
    """`obj` as JSON (strict: NaN/inf refused by `jsonio`) plus a newline."""
    write_text_atomic(path, jsonio.dumps(obj, indent=indent, compact=not indent) + "\n", durable=durable)
