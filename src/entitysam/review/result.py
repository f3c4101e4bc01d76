"""Reading a complete result folder of `entitysam segment` (offline or online) for review.

:meth:`ResultFolder.open` checks the folder once (complete manifest, ``panoptic.json``, one PNG
per frame) and reads the small records (frames, entities, per-frame areas); id maps and source
frames are read lazily, one frame at a time, so a long video costs no memory up front.

Where things come from:

* frames (``{"frame", "source_frame", "name", "time"}``): ``entities.json`` (offline), else
  ``entities.jsonl`` (online), else ``panoptic.json`` (time = source_frame / fps);
* entities: ``entities.json`` records (offline and revisions: ``label``, ``hidden`` too), else
  the manifest's ``tracks`` (online), else the statistics of ``panoptic.json`` (no score);
* per-frame areas (what :class:`~entitysam.review.edits.EditSession` recomputes its table from):
  ``panoptic.json``'s ``segments_info``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError, ResultFolderError
from ..io import idpng
from ..io.paths import safe_name
from ..io.manifest import MANIFEST, manifest_data
from ..io.stream_files import JSONL, read_jsonl
from .source_frames import SourceFrames

__all__ = ["EntityInfo", "ResultFolder", "RESULT_FORMATS", "MAX_LABEL", "label_problem", "read_entity_records",
           "entity_stats"]

RESULT_FORMATS = ("entitysam-segment", "entitysam-online")
RESULT_VERSION = 1  # the manifest format_version read here (a newer layout is refused, not misread)
MAX_LABEL = 1000  # characters of an entity label (what an edit may set, what a result may hold)
ID_PNG_MODES = ("RGB", "RGBA")  # what the id codec reads exactly (others would be converted: ids made up)


@dataclass(frozen=True)
class EntityInfo:
    """One entity of a result. frames are positions ``t`` in the result (indices into
    ``ResultFolder.frames``); area is summed over its frames (pixels); score is None when the
    result does not record it (panoptic only); label: free text given in review, or None."""

    id: int
    score: float | None
    first_frame: int | None
    last_frame: int | None
    num_frames: int
    area: int
    label: str | None = None
    hidden: bool = False
    query_index: int = -1

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able record (what entities.json and the viewer's API carry)."""
        return asdict(self)


def _read_json(path: Path, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ResultFolderError(f"{path.parent}: {what} is missing ({path.name})") from None
    except (OSError, ValueError) as err:
        raise ResultFolderError(f"{path}: cannot read {what}: {err}") from None
    except RecursionError:
        raise ResultFolderError(f"{path}: cannot read {what}: JSON nested too deeply") from None


class ResultFolder:
    """A validated, read-only view of one complete result folder (see the module docstring).

    Attributes: ``path``, ``manifest`` (dict), ``kind`` (``"offline"`` or ``"online"``),
    ``name`` (the video), ``frames`` (list of ``{"frame", "source_frame", "name", "time"}``),
    ``size`` ((H, W)), ``fps``, ``entities`` (list of :class:`EntityInfo`, by id),
    ``frame_areas`` (per frame, ``{id: area}`` of the entities present).
    """

    def __init__(self, path: Path, manifest: dict[str, Any], frames: list[dict[str, Any]],
                 entities: list[EntityInfo], frame_areas: list[dict[int, int]]):
        self.path = path
        self.manifest = manifest
        self.kind = "online" if manifest.get("format") == "entitysam-online" else "offline"
        video = manifest.get("video")
        # the name names export folders and files: one safe path component whatever the manifest says
        self.name = safe_name(video if isinstance(video, str) and video else path.name)
        self.frames = frames
        self.entities = entities
        self.frame_areas = frame_areas
        self.size = (int(manifest["size"][0]), int(manifest["size"][1]))
        self.fps = float(manifest["fps"])
        self.max_id = max([0] + [e.id for e in entities] + [i for a in frame_areas for i in a])
        self._listed = np.zeros(self.max_id + 1, dtype=bool)  # ids panoptic.json lists (0: no entity)
        self._listed[[0] + [i for a in frame_areas for i in a]] = True
        selection = manifest.get("selection") if isinstance(manifest.get("selection"), dict) else {}
        source = manifest.get("input")  # a path or URL; anything else (a number would be a file descriptor) is none
        self.sources = SourceFrames(source if isinstance(source, str) else None, self.fps, selection.get("stride", 1))

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | os.PathLike) -> "ResultFolder":
        """Open and check a result folder. Raises ResultFolderError naming the folder and what is
        wrong: not a folder, no manifest, unfinished (online run interrupted or still running),
        not an entitysam result, no panoptic output, a missing PNG, inconsistent records."""
        path = Path(path)
        if not path.is_dir():
            raise ResultFolderError(f"{path}: not a folder (expected a result folder of `entitysam segment`)")
        manifest = manifest_data(path)
        if manifest is None:
            raise ResultFolderError(f"{path}: no readable {MANIFEST}: not a result folder of `entitysam segment` "
                                    "(or an unfinished one)")
        fmt = manifest.get("format")
        if fmt not in RESULT_FORMATS:
            raise ResultFolderError(f"{path}: {MANIFEST} says format {fmt!r}, not a result of `entitysam segment`")
        if manifest.get("format_version", RESULT_VERSION) != RESULT_VERSION:
            raise ResultFolderError(f"{path}: {MANIFEST} has format_version {manifest.get('format_version')!r:.40}; "
                                    f"this version of entitysam reads {RESULT_VERSION}")
        if manifest.get("complete") is not True:
            status = manifest.get("status", "unfinished")
            raise ResultFolderError(f"{path}: the result is not complete (status {status!r}); only complete "
                                    "results can be reviewed")
        size, fps = manifest.get("size"), manifest.get("fps")
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
            raise ResultFolderError(f"{path}: {MANIFEST} has no valid size [H, W] (got {size!r})")
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not (fps > 0 and math.isfinite(fps)):
            raise ResultFolderError(f"{path}: {MANIFEST} has no valid fps (got {fps!r})")
        if not (path / "panoptic").is_dir() or not (path / "panoptic.json").is_file():
            raise ResultFolderError(f"{path}: no panoptic output (panoptic/ and panoptic.json): segment with "
                                    "the panoptic format saved to review a result")
        entries = _panoptic_entries(path)
        frame_areas = [_segment_areas(path, t, e) for t, e in enumerate(entries)]
        entities_json = read_entity_records(path / "entities.json") if (path / "entities.json").is_file() else None
        frames = _frames(path, manifest, entries, entities_json)
        entities = _entities(path, manifest, entities_json, frame_areas)
        for rec in frames:
            if not (path / "panoptic" / f"{rec['name']}.png").is_file():
                raise ResultFolderError(f"{path}: panoptic/{rec['name']}.png is missing (frame {rec['frame']})")
        return cls(path, manifest, frames, entities, frame_areas)

    # ------------------------------------------------------------------ per frame
    @property
    def num_frames(self) -> int:
        return len(self.frames)

    def check_frame(self, i: int) -> int:
        """`i` as a frame position, or InvalidArgumentError."""
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < len(self.frames):
            raise InvalidArgumentError(f"frame must be an integer in [0, {len(self.frames)}), got {i!r}")
        return int(i)

    def png_path(self, i: int) -> Path:
        return self.path / "panoptic" / f"{self.frames[self.check_frame(i)]['name']}.png"

    def id_map(self, i: int) -> np.ndarray:
        """The [H, W] uint32 ids of frame position `i` (0 = no entity), read from its PNG."""
        ids = idpng.decode_ids(self.id_rgb(i))
        if int(ids.max(initial=0)) > self.max_id or not self._listed[ids].all():
            unknown = sorted(set(np.unique(ids).tolist()) - set(np.flatnonzero(self._listed).tolist()))
            raise ResultFolderError(f"{self.png_path(i)}: holds id(s) {', '.join(map(str, unknown[:5]))} that "
                                    "panoptic.json does not list")
        return ids.astype(np.uint32, copy=False)

    def id_rgb(self, i: int) -> np.ndarray:
        """The [H, W, 3] uint8 pixels of frame position `i`'s id PNG as stored (id = R + 256 G +
        65536 B; see `entitysam.io.idpng`), checked for mode and size: what the viewer encodes as runs."""
        path = self.png_path(i)
        return _read_id_rgb(path, self.size)

    def source_frame(self, i: int) -> np.ndarray | None:
        """The [H, W, 3] uint8 RGB input frame behind frame position `i`, decoded from the
        manifest's input if it is still there (and still gives this frame); None otherwise.
        Reading forward through a video decodes each frame once (see :mod:`.source_frames`)."""
        rec = self.frames[self.check_frame(i)]
        image = self.sources.frame(int(rec["source_frame"]), rec["name"])
        return image if image is None or image.shape[:2] == self.size else None

    def source_file(self, i: int) -> Path | None:
        """The input file behind frame position `i` when the input is a folder of frames or an
        image still holding it (under its name); None for a video or a missing input."""
        rec = self.frames[self.check_frame(i)]
        return self.sources.frame_file(int(rec["source_frame"]), rec["name"])

    def manifest_digest(self) -> str:
        """SHA-256 (hex) of the bytes of manifest.json: names this exact result (edits.json records it)."""
        return hashlib.sha256((self.path / MANIFEST).read_bytes()).hexdigest()

    def __repr__(self) -> str:
        return (f"ResultFolder({str(self.path)!r}, {self.kind}, {len(self.frames)} frames "
                f"{self.size[1]}x{self.size[0]}, {len(self.entities)} entities)")


def _read_id_rgb(path: Path, size: tuple[int, int]) -> np.ndarray:
    """[H, W, 3] uint8 pixels of an RGB(A) id PNG of the result's size; ResultFolderError otherwise
    (another image mode would be converted to RGB by PIL and give made-up ids)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            kind, width, height = (im.format, im.mode), *im.size
            rgb = np.asarray(im) if kind[0] == "PNG" and kind[1] in ID_PNG_MODES and (height, width) == size else None
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ResultFolderError(f"{path}: cannot read the id PNG: {err}") from None
    if kind[0] != "PNG" or kind[1] not in ID_PNG_MODES:
        raise ResultFolderError(f"{path}: a {kind[0]} image of mode {kind[1]}, not an RGB id PNG "
                                "(id = R + 256 G + 65536 B)")
    if rgb is None:
        raise ResultFolderError(f"{path}: {width}x{height} but the result is {size[1]}x{size[0]} (WxH)")
    return rgb if rgb.shape[2] == 3 else np.ascontiguousarray(rgb[..., :3])


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


def _check_id(where: str, value: Any) -> int:
    if not (_is_int(value) and 1 <= value <= idpng.MAX_ID):
        raise ResultFolderError(f"{where}: id {value!r:.40} is not an entity id (an integer in [1, {idpng.MAX_ID}])")
    return value


def _segment_areas(path: Path, t: int, entry: dict[str, Any]) -> dict[int, int]:
    """Frame `t`'s ``{id: area}`` from its panoptic.json entry, every record checked."""
    where = f"{path / 'panoptic.json'}: frame {t}"
    segments = entry.get("segments_info", [])
    if not isinstance(segments, list) or not all(isinstance(s, dict) for s in segments):
        raise ResultFolderError(f"{where}: segments_info is not a list of records")
    areas: dict[int, int] = {}
    for seg in segments:
        sid = _check_id(where, seg.get("id"))
        area = seg.get("area")
        if not (_is_int(area) and area >= 0):
            raise ResultFolderError(f"{where}: entity {sid} has area {area!r:.40} (expected an integer >= 0)")
        if sid in areas:
            raise ResultFolderError(f"{where}: entity {sid} is listed twice")
        areas[sid] = area
    return areas


def _check_frame_record(path: Path, rec: dict[str, Any]) -> None:
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


def _check_entity_record(where: str, rec: Any) -> dict[str, Any]:
    """An entity record (entities.json or the manifest's tracks) with checked types: what is
    not a valid id, score, label, hidden flag or query index is refused, not guessed
    (``bool("false")`` would hide an entity)."""
    if not isinstance(rec, dict):
        raise ResultFolderError(f"{where}: an entity record is not an object (got {rec!r:.40})")
    sid = _check_id(where, rec.get("id"))
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
    data = _read_json(path, "entities.json")
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


def _panoptic_entries(path: Path) -> list[dict[str, Any]]:
    data = _read_json(path / "panoptic.json", "panoptic.json")
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


def _frames(path: Path, manifest: dict[str, Any], entries: list[dict[str, Any]],
            entities_json: dict[str, Any] | None) -> list[dict[str, Any]]:
    keys = ("frame", "source_frame", "name", "time")
    if entities_json is not None:
        records = entities_json.get("frames")
    elif (path / JSONL).is_file():
        records = read_jsonl(path / JSONL)  # one line at a time: its masks are dropped at once
    else:
        fps = float(manifest["fps"])
        records = [{"frame": e.get("frame", t), "source_frame": e["source_frame"], "name": e["image_id"],
                    "time": round(e["source_frame"] / fps, 6)} for t, e in enumerate(entries)]
    try:
        frames = [{k: rec[k] for k in keys} for rec in records]
    except (KeyError, TypeError, ValueError) as err:
        raise ResultFolderError(f"{path}: unreadable frame records ({type(err).__name__}: {err})") from None
    except RecursionError:
        raise ResultFolderError(f"{path}: unreadable frame records (JSON nested too deeply)") from None
    except OSError as err:
        raise ResultFolderError(f"{path}: cannot read the frame records: {err}") from None
    for rec in frames:
        _check_frame_record(path, rec)
    names = [e.get("image_id") for e in entries]
    if [f["name"] for f in frames] != names or [f["frame"] for f in frames] != list(range(len(frames))):
        raise ResultFolderError(f"{path}: the frames of panoptic.json and of the entity records disagree "
                                f"({len(names)} vs {len(frames)} frames)")
    if len(set(names)) != len(names):  # one PNG for two frames: an export would write one over the other
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ResultFolderError(f"{path}: frame name(s) {', '.join(map(str, twice[:5]))} used by several frames")
    return frames


def _entities(path: Path, manifest: dict[str, Any], entities_json: dict[str, Any] | None,
              frame_areas: list[dict[int, int]]) -> list[EntityInfo]:
    stats = entity_stats(frame_areas)
    if entities_json is not None:
        records, where = entities_json.get("entities") or [], f"{path / 'entities.json'}"
    else:
        records, where = manifest.get("tracks") or [{"id": i} for i in stats], f"{path / MANIFEST}: tracks"
    if not isinstance(records, list):
        raise ResultFolderError(f"{where}: the entity records are not a list")
    out = []
    seen: set[int] = set()
    for rec in records:
        sid = _check_entity_record(where, rec)["id"]
        if sid in seen:
            raise ResultFolderError(f"{where}: entity {sid} has two records")
        seen.add(sid)
        first, last, count, area = stats.get(sid, (None, None, 0, 0))
        score = rec.get("score")
        out.append(EntityInfo(id=sid, score=None if score is None else float(score), first_frame=first,
                              last_frame=last, num_frames=count, area=area, label=rec.get("label"),
                              hidden=bool(rec.get("hidden", False)), query_index=int(rec.get("query_index", -1))))
    known = {e.id for e in out}
    out += [EntityInfo(id=i, score=None, first_frame=s[0], last_frame=s[1], num_frames=s[2], area=s[3])
            for i, s in stats.items() if i not in known]  # present in the maps, absent from the records
    return sorted(out, key=lambda e: e.id)


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
