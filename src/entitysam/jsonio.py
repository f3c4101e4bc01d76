"""Strict JSON for every file the package writes.

``json.dumps`` writes ``NaN`` and ``Infinity`` by default, which are not JSON: other readers
(browsers, ``jq``, most JSON libraries) reject the whole file. Everything the package writes goes
through :func:`dumps`, which refuses them with a message naming the offending key, so that a
non-finite number is caught where it is made instead of in a reader much later.

File names need not be UTF-8 on Linux: Python reads such bytes as lone surrogates
(``surrogateescape``: byte 0xff is ``"\\udcff"``), which no UTF-8 file can hold. :func:`dumps`
writes them as JSON escapes (``"00\\udcff"``), so every file stays valid UTF-8 and the name is
kept losslessly: ``os.fsencode(json.loads(text)[...])`` gives back the original bytes.

:func:`load_file` is the reading side for a user's JSON file (a GT JSON, a prediction JSON): one
wording for each way it can be unusable, and no wait on a named pipe in its place.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Mapping

from .errors import EntitySAMError, NonFiniteJSONError
from .regular_file import open_regular

__all__ = ["MAX_JSON_BYTES", "NonFiniteJSONError", "dumps", "find_non_finite", "jsonable", "load_file",
           "nulls_for_non_finite"]

# The largest JSON file load_file reads: far above the real ones (COCO panoptic's train json and
# VIPSeg's GT are a few hundred MB at most), and parsed, a file takes several times its size in memory.
MAX_JSON_BYTES = 1 << 30


def find_non_finite(obj: Any, where: str = "$") -> str | None:
    """The path (``$.entities[3].score``) of the first NaN / infinite float in `obj`, or None."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else where
    if isinstance(obj, dict):
        for key, value in obj.items():
            found = find_non_finite(value, f"{where}.{key}")
            if found:
                return found
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            found = find_non_finite(value, f"{where}[{i}]")
            if found:
                return found
    return None


_SURROGATE = re.compile("[\ud800-\udfff]")  # lone surrogates: undecodable bytes of a file name


def _escape(match: re.Match) -> str:
    return f"\\u{ord(match.group()):04x}"


def dumps(obj: Any, *, indent: int | None = None, compact: bool = False, ensure_ascii: bool = False) -> str:
    """``json.dumps`` that refuses NaN and infinities (``allow_nan=False``).

    compact: no spaces after separators (one-line records). Lone surrogates (the undecodable
    bytes of a file name) are written as ``\\udcXX`` escapes: the text always encodes as UTF-8.
    Raises NonFiniteJSONError naming the first non-finite value.
    """
    try:
        text = json.dumps(obj, indent=indent, ensure_ascii=ensure_ascii, allow_nan=False,
                          separators=(",", ":") if compact else None)
        return text if ensure_ascii else _SURROGATE.sub(_escape, text)
    except ValueError as err:
        where = find_non_finite(obj)
        if where is None:  # another ValueError (e.g. a circular reference): not ours to explain
            raise
        raise NonFiniteJSONError(f"refusing to write a non-finite number (NaN or infinity) as JSON at {where}: "
                                 "JSON has no such values") from err


def nulls_for_non_finite(obj: Any) -> Any:
    """A copy of `obj` with NaN / infinite floats replaced by None (JSON null). For last-resort
    records that must be written anyway (a final manifest saying why a run failed)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: nulls_for_non_finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nulls_for_non_finite(v) for v in obj]
    return obj


def jsonable(obj: Any) -> Any:
    """Results as JSON values: string keys, and null for a metric that is undefined (the official
    code's NaN, e.g. the IoU of a video with no labelled pixel): NaN is not valid JSON."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def load_file(path: str | os.PathLike, what: str, error: type[EntitySAMError]) -> Any:
    """The JSON document in the file `path`; `error` (one line naming `what` and `path`) when it is
    missing, not a regular file, unreadable, over MAX_JSON_BYTES or not JSON (also: nested too
    deeply for Python's parser, an integer over Python's digit limit, bytes that are not UTF-8)."""
    try:
        f = open_regular(path)  # without waiting: open() of a named pipe waits for a writer
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except OSError as err:
        raise error(f"cannot read {what} {path}: {err.strerror or err}") from None
    if f is None:
        raise error(f"{what} {path} is not a regular file")
    with f:
        # sized from the open file before reading: a file of gigabytes was read whole (and decoded:
        # twice that) before anything could refuse it; no more than the limit is read should it grow
        try:
            size = os.fstat(f.fileno()).st_size
            # what fstat says, then the rest up to the limit should it have grown: read(limit + 1)
            # first asked for a buffer of the whole limit (a 9-byte file failed under `ulimit -v 900000`)
            data = b"" if size > MAX_JSON_BYTES else f.read(size + 1)
            if size < len(data) <= MAX_JSON_BYTES:
                data += f.read(MAX_JSON_BYTES + 1 - len(data))
        except OSError as err:
            raise error(f"cannot read {what} {path}: {err.strerror or err}") from None
        if max(size, len(data)) > MAX_JSON_BYTES:
            amount = f"{size} bytes" if size > MAX_JSON_BYTES else f"over {MAX_JSON_BYTES} bytes"  # (grown since)
            raise error(f"{what} {path} is {amount}, more than the {MAX_JSON_BYTES / 2**30:g} GiB a JSON file read "
                        "here may hold (parsed, it would take several times that in memory)")
    try:
        return json.loads(data.decode("utf-8"))
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, an integer over the digit limit
        raise error(f"{what} {path} is not valid JSON: {str(err).splitlines()[0][:200]}") from None
    except RecursionError:
        raise error(f"{what} {path} is unreadable: JSON nested too deeply") from None
