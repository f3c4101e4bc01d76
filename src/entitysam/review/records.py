"""The records of a result folder, read and type-checked: ``panoptic.json``'s frame entries and
per-frame areas, ``entities.json`` (read line by line, without its masks), the frame and entity
records. What is not a valid id, area, score, label, hidden flag, name or time is refused with a
ResultFolderError naming the file and the value, never guessed: a result folder may have been
edited by hand or by anyone."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from .. import jsonio
from ..errors import ResultFolderError
from ..io import idpng

__all__ = ["MAX_LABEL", "label_problem", "read_json", "check_id", "segment_areas", "check_frame_record",
           "check_entity_record", "read_entity_records", "panoptic_entries", "entity_stats"]

MAX_LABEL = 1000  # characters of an entity label (what an edit may set, what a result may hold)


def read_json(path: Path, what: str) -> Any:
    """The JSON document `path` holds, read as every user's JSON file is (`jsonio.load_file`: a
    regular file, at most its size limit); ResultFolderError naming `what` otherwise."""
    if not os.path.lexists(path):
        raise ResultFolderError(f"{path.parent}: {what} is missing ({path.name})")
    return jsonio.load_file(path, what, ResultFolderError)


def label_problem(text: Any) -> str | None:
    """Why `text` cannot be an entity label, or None: a label is a string of at most MAX_LABEL
    characters without the control characters XML 1.0 (what CVAT reads) cannot carry (tab and
    line breaks are fine) nor lone surrogates (not encodable as UTF-8: every writer would fail)."""
    if not isinstance(text, str):
        return "not a string"
    if len(text) > MAX_LABEL:
        return f"longer than {MAX_LABEL} characters"
    if any((ord(c) < 32 and c not in "\t\n\r") or 0xD800 <= ord(c) < 0xE000 or c in "\ufffe\uffff" for c in text):
        return "holds a control character or a lone surrogate"
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_id(where: str, value: Any) -> int:
    if not (_is_int(value) and 1 <= value <= idpng.MAX_ID):
        raise ResultFolderError(f"{where}: id {value!r:.40} is not an entity id (an integer in [1, {idpng.MAX_ID}])")
    return value


def segment_areas(path: Path, t: int, entry: dict[str, Any]) -> dict[int, int]:
    """Frame `t`'s ``{id: area}`` from its panoptic.json entry, every record checked."""
    where = f"{path / 'panoptic.json'}: frame {t}"
    segments = entry.get("segments_info", [])
    if not isinstance(segments, list) or not all(isinstance(s, dict) for s in segments):
        raise ResultFolderError(f"{where}: segments_info is not a list of records")
    areas: dict[int, int] = {}
    for seg in segments:
        sid = check_id(where, seg.get("id"))
        area = seg.get("area")
        if not (_is_int(area) and area >= 0):
            raise ResultFolderError(f"{where}: entity {sid} has area {area!r:.40} (expected an integer >= 0)")
        if sid in areas:
            raise ResultFolderError(f"{where}: entity {sid} is listed twice")
        areas[sid] = area
    return areas


def check_frame_record(path: Path, rec: dict[str, Any]) -> None:
    """A frame record's types: its name is a file name of the result (panoptic/<name>.png), so
    one path component; positions and times are numbers."""
    name, where = rec["name"], f"{path}: frame record {rec['frame']!r:.40}"
    if not isinstance(name, str) or not name or any(c in name for c in "/\\\0"):
        raise ResultFolderError(f"{where}: name {name!r:.80} is not a file name (no folders, not empty)")
    if not _is_int(rec["frame"]) or not (_is_int(rec["source_frame"]) and rec["source_frame"] >= 0):
        raise ResultFolderError(f"{where}: frame and source_frame must be integers >= 0 "
                                f"(got {rec['source_frame']!r:.40})")
    if not _is_number(rec["time"]):
        raise ResultFolderError(f"{where}: time {rec['time']!r:.40} is not a finite number")


def check_entity_record(where: str, rec: Any) -> dict[str, Any]:
    """An entity record (entities.json or the manifest's tracks) with checked types: what is
    not a valid id, score, label, hidden flag or query index is refused, not guessed
    (``bool("false")`` would hide an entity)."""
    if not isinstance(rec, dict):
        raise ResultFolderError(f"{where}: an entity record is not an object (got {rec!r:.40})")
    sid = check_id(where, rec.get("id"))
    score, label = rec.get("score"), rec.get("label")
    hidden, query_index = rec.get("hidden", False), rec.get("query_index", -1)
    if score is not None and not _is_number(score):
        raise ResultFolderError(f"{where}: entity {sid} has score {score!r:.40} (expected a finite number or null)")
    if label is not None and label_problem(label):
        raise ResultFolderError(f"{where}: entity {sid} has label {label!r:.40}: {label_problem(label)} (a label "
                                f"is a string of at most {MAX_LABEL} printable characters, or null)")
    if not isinstance(hidden, bool):
        raise ResultFolderError(f"{where}: entity {sid} has hidden {hidden!r:.40} (expected true or false)")
    if not _is_int(query_index):
        raise ResultFolderError(f"{where}: entity {sid} has query_index {query_index!r:.40} (expected an integer)")
    return rec


# ---------------------------------------------------------------------- readers of the records
def read_entity_records(path: Path) -> dict[str, Any]:
    """``entities.json`` without its masks: ``{"frames": [...], "entities": [records without
    "frames"]}``. Files in the layout :class:`~entitysam.io.entities.EntitiesWriter` writes (one
    frame or entity per line) are read line by line, so the per-frame RLE masks (most of the
    file) are never held all at once; any other layout is parsed whole."""
    try:
        with open(path, encoding="utf-8") as f:
            fast = _entity_lines(f)
    except FileNotFoundError:
        raise ResultFolderError(f"{path.parent}: entities.json is missing") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ResultFolderError(f"{path}: cannot read entities.json: {err}") from None
    if fast is not None:
        return fast
    data = read_json(path, "entities.json")
    frames, entities = (data.get("frames"), data.get("entities")) if isinstance(data, dict) else (None, None)
    if not (isinstance(frames, (list, type(None))) and isinstance(entities, (list, type(None)))
            and all(isinstance(e, dict) for e in entities or [])):
        raise ResultFolderError(f"{path}: entities.json is not an object with lists of frames and entity records")
    return {"frames": frames or [], "entities": [{k: v for k, v in e.items() if k != "frames"} for e in entities or []]}


_ENTITY_MASKS = ',"frames":['  # where an entity line's masks start (cannot occur inside a JSON string: quotes there are escaped)


def _entity_lines(f) -> dict[str, Any] | None:
    """The line-by-line reading of :func:`read_entity_records`; None if the layout differs."""
    head = f.readline().rstrip("\n")
    if not (head.startswith("{") and head.endswith(_ENTITY_MASKS)):
        return None
    frames: list[Any] = []
    entities: list[Any] = []
    part = frames
    try:
        for line in f:
            text = line.strip()
            if not text:
                continue
            if text == '],"entities":[' and part is frames:
                part = entities
            elif text == "]}" and part is entities:
                return {"frames": frames, "entities": entities}
            elif part is frames:
                frames.append(json.loads(text.rstrip(",")))
            else:
                cut = text.find(_ENTITY_MASKS)
                if cut < 0:
                    return None
                entities.append(json.loads(text[:cut] + "}"))
    except (ValueError, RecursionError):
        return None
    return None


def panoptic_entries(path: Path) -> list[dict[str, Any]]:
    data = read_json(path / "panoptic.json", "panoptic.json")
    try:
        videos = data["annotations"]
        if len(videos) != 1:
            raise ValueError(f"{len(videos)} videos")
        entries = videos[0]["annotations"]
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ValueError("no frame list")
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise ResultFolderError(f"{path / 'panoptic.json'}: not a one-video panoptic.json ({err})") from None
    if not entries:
        raise ResultFolderError(f"{path}: the result has no frames")
    return entries


def entity_stats(frame_areas: list[dict[int, int]]) -> dict[int, tuple[int, int, int, int]]:
    """id -> (first frame, last frame, frames present, summed area) from the per-frame areas."""
    acc: dict[int, list[int]] = {}
    for t, areas in enumerate(frame_areas):
        for sid, area in areas.items():
            st = acc.setdefault(sid, [t, t, 0, 0])
            st[1] = t
            st[2] += 1
            st[3] += area
    return {sid: tuple(v) for sid, v in sorted(acc.items())}
