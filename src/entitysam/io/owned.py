"""What an output folder of this tool holds, by name: --overwrite deletes an old output as a
whole, so it first lists what else is in it (:func:`foreign_entries`) and refuses to delete a
folder that holds anything a user put there.

A layout maps each name a writer creates (a string, or a compiled pattern the whole name must
match) to ``None`` for a regular file or to the layout of a folder. Symbolic links, files where
a folder belongs and the reverse are foreign too: no writer here creates them.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from ..regular_file import read_regular_text
from .atomic import TEMP_PREFIX
from .manifest import MANIFEST, manifest_data

__all__ = ["RESULT_FILES", "foreign_entries", "result_layout", "result_foreign", "list_foreign"]

Layout = Mapping[Union[str, "re.Pattern[str]"], Optional["Layout"]]

# The files (and the one folder) of a result: offline (`segment`, a review revision) and online.
RESULT_FILES = ("panoptic.json", "entities.json", "overlay.mp4", "logits.npz", "edits.json",
                "entities.jsonl", "overlay.ts")
_PNG = re.compile(r"[^/]+\.png")
# io.atomic's temporary file beside its target, which a killed online run leaves behind: its
# name now, and the one of earlier versions (derived from the target's name)
_ATOMIC_TMP = re.compile(re.escape(TEMP_PREFIX) + r"tmp-[0-9]+-[0-9a-f]+")
_TMP = r"\.{}\.tmp-[0-9]+-[0-9a-f]{{6}}"
_PNG_TMP = re.compile(_TMP.format(r"[^/]+\.png"))


def _matching(layout: Layout, name: str) -> tuple[bool, Layout | None]:
    if name in layout:
        return True, layout[name]  # type: ignore[index]
    for key, sub in layout.items():
        if isinstance(key, re.Pattern) and key.fullmatch(name):
            return True, sub
    return False, None


def foreign_entries(folder: str | os.PathLike, layout: Layout, *, only: tuple[str, ...] | None = None,
                    prefix: str = "") -> list[str]:
    """The paths under `folder` (relative, a folder's with a trailing ``/``) that `layout` does
    not name, sorted; a foreign folder is listed, not its content. only: look at these entries
    of `folder` alone (the others are left where they are, whatever they are)."""
    out: list[str] = []
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        if only is not None and entry.name not in only:
            continue
        known, sub = _matching(layout, entry.name)
        is_dir = entry.is_dir(follow_symlinks=False)
        rel = prefix + entry.name + ("/" if is_dir else "")
        if not known or (sub is None and not entry.is_file(follow_symlinks=False)) or (sub is not None and not is_dir):
            out.append(rel)
        elif sub is not None:
            out += foreign_entries(entry.path, sub, prefix=rel)
    return out


def _frame_pngs(folder: Path) -> set[str] | None:
    """The PNG names ``panoptic.json`` lists (None if it cannot be read as one, e.g. a named pipe:
    opened without waiting, where reading it waited for a writer for ever)."""
    try:
        text = read_regular_text(folder / "panoptic.json")
        data = None if text is None else json.loads(text)
        return None if data is None else {str(a["file_name"]) for a in data["annotations"][0]["annotations"]}
    except (OSError, ValueError, RecursionError, LookupError, TypeError):
        return None


def result_layout(folder: str | os.PathLike, manifest: Mapping[str, Any] | None = None) -> Layout:
    """The layout of the result folder `folder` (`manifest`: its manifest.json, read if not given):
    manifest.json and the files its ``"files"`` record lists (all of a result's files for a
    manifest without that record); io.atomic's temporary files of manifest.json and
    panoptic.json (a killed online run); in ``panoptic/`` the frame PNGs that panoptic.json
    lists when the result is complete, else any ``<frame>.png`` and its temporary file."""
    folder = Path(folder)
    manifest = manifest_data(folder) if manifest is None else manifest
    listed = (manifest or {}).get("files")
    if isinstance(listed, list) and all(isinstance(f, str) for f in listed):
        names = {f.rstrip("/") for f in listed} & {*RESULT_FILES, "panoptic"}
    else:
        names = {*RESULT_FILES, "panoptic"}
    layout: dict[Any, Any] = {MANIFEST: None, re.compile(_TMP.format(re.escape(MANIFEST))): None, _ATOMIC_TMP: None}
    for name in names - {"panoptic"}:
        layout[name] = None
    if "panoptic.json" in names:
        layout[re.compile(_TMP.format(re.escape("panoptic.json")))] = None
    if "panoptic" in names:
        pngs = _frame_pngs(folder) if (manifest or {}).get("complete") is True else None
        layout["panoptic"] = dict.fromkeys(pngs) if pngs is not None else {_PNG: None, _PNG_TMP: None, _ATOMIC_TMP: None}
    return layout


def result_foreign(folder: str | os.PathLike) -> list[str]:
    """What a result folder holds that no run of this tool wrote (see :func:`result_layout`)."""
    return foreign_entries(folder, result_layout(folder))


def list_foreign(folder: str | os.PathLike, foreign: list[str], shown: int = 3) -> str:
    """``DIR/a, DIR/b/ and 2 more``: the first foreign paths, for a message."""
    head = ", ".join(str(Path(folder) / p) + ("/" if p.endswith("/") else "") for p in foreign[:shown])
    return head + (f" and {len(foreign) - shown} more" if len(foreign) > shown else "")
