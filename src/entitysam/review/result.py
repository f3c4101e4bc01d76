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

import errno
import hashlib
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..argtypes import check_path_arg
from ..errors import InvalidArgumentError, ResultChangedError, ResultFolderError, ResultFolderNotFoundError
from ..io import idpng
from ..io.paths import safe_name
from ..io.manifest import MANIFEST, manifest_data
from ..io.stream_files import JSONL, read_jsonl
from ..regular_file import path_problem, read_regular_bytes
from .id_files import open_result_file, read_id_rgb
from .id_lookup import dense_table, map_ids
from .on_disk import check_identity, stat_identity, version_token
from .records import (check_entity_record, check_frame_record, entity_stats, panoptic_entries, read_entity_records,
                      segment_areas)
from .source_frames import SourceFrames

__all__ = ["EntityInfo", "ResultFolder", "RESULT_FORMATS", "pixel_shape"]

RESULT_FORMATS = ("entitysam-segment", "entitysam-online")
RESULT_VERSION = 1  # the manifest format_version read here (a newer layout is refused, not misread)


def pixel_shape(value: object) -> list[int]:
    """A manifest's ``sample_aspect_ratio`` as [width, height] of a pixel: [1, 1] when absent (results
    written before it was recorded, or by hand) or implausible (each 1 to 65535, their ratio 1/10 to 10)."""
    if (isinstance(value, list) and len(value) == 2 and all(type(v) is int and 0 < v < 65536 for v in value)
            and value[0] <= 10 * value[1] and value[1] <= 10 * value[0]):
        return list(value)
    return [1, 1]


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


def check_result_path(path: Path) -> None:
    """ResultFolderNotFoundError when `path`, as given, names no folder ("missing" was said "not a
    folder", of a folder mistyped; a broken link's resolved path named its target)."""
    problem = path_problem(path, folder=True)
    if problem == os.strerror(errno.ENAMETOOLONG):  # raised, as a look at the path raised it before
        raise OSError(errno.ENAMETOOLONG, problem, os.fspath(path))
    if problem == "missing" and os.path.islink(path):
        problem = f"a symbolic link to {os.readlink(path)}, which does not exist"
    if problem:
        cause = "not found" if problem == "missing" else problem
        raise ResultFolderNotFoundError(f"{path}: {cause} (expected a result folder of `entitysam segment`)")


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
        # where its files may lie, links followed: the folder, and panoptic/ as when opened (the user's layout)
        self.read_roots = (path.resolve(), (path / "panoptic").resolve())
        self.manifest = manifest
        self.kind = "online" if manifest.get("format") == "entitysam-online" else "offline"
        video = manifest.get("video")
        # the name names export folders and files: one safe path component whatever the manifest says
        self.name = safe_name(video if isinstance(video, str) and video else path.name)
        self.frames = frames
        self.entities = entities
        self.frame_areas = frame_areas
        # what the folder was when opened (set by open): save and export check it is still that
        self.fingerprint: tuple[str | None, str | None] = (None, None)
        self.identity = None  # its stat_identity when opened (set by open), then what check_current last accepted
        self.size = (int(manifest["size"][0]), int(manifest["size"][1]))
        self.fps = float(manifest["fps"])
        self.sample_aspect_ratio = pixel_shape(manifest.get("sample_aspect_ratio"))
        self.max_id = max([0] + [e.id for e in entities] + [i for a in frame_areas for i in a])
        # the ids panoptic.json lists, 0 (no entity) first: per-id tables are indexed by the position
        # of an id here (O(number of entities)), never by the id itself (ids go up to 2**24 - 1)
        self.ids = np.array(sorted({0} | {i for a in frame_areas for i in a}), dtype=np.uint32)
        self._positions = np.arange(len(self.ids), dtype=np.int32)
        self._dense = dense_table(self.ids, self._positions, -1, int(self.ids[-1]) + 1)  # kept: made once
        selection = manifest.get("selection") if isinstance(manifest.get("selection"), dict) else {}
        source = manifest.get("input")  # a path or URL; anything else (a number would be a file descriptor) is none
        source = source if isinstance(source, str) else None
        self.sources = SourceFrames(source, self.fps, selection.get("stride", 1))
        # stills (entity thumbnails) have a cursor of their own: they jump around the video, and
        # on the player's cursor each jump sent it back (a new pass) and made it wait
        self.still_sources = SourceFrames(source, self.fps, selection.get("stride", 1))
        self.still_sources.keep_bytes = 0  # the fewest frames kept (2): a still is read once

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | os.PathLike) -> "ResultFolder":
        """Open and check a result folder. Raises ResultFolderError naming the folder and what is
        wrong: not a folder, no manifest, unfinished (online run interrupted or still running),
        not an entitysam result, no panoptic output, a missing PNG, inconsistent records."""
        path = check_path_arg(path, "path")  # None or a number: not a bare TypeError; "": not the current folder
        check_result_path(path)
        identity = stat_identity(path)  # both before anything is read: a change while opening shows later
        fingerprint = _fingerprint(path)
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
        entries = panoptic_entries(path)
        frame_areas = [segment_areas(path, t, e) for t, e in enumerate(entries)]
        entities_json = read_entity_records(path / "entities.json") if (path / "entities.json").is_file() else None
        frames = _frames(path, manifest, entries, entities_json)
        entities = _entities(path, manifest, entities_json, frame_areas)
        for rec in frames:
            png = path / "panoptic" / f"{rec['name']}.png"
            if not png.is_file() or png.is_symlink():
                state = ("is a symbolic link, not a file entitysam wrote" if png.is_symlink() else
                         "is not a regular file" if os.path.lexists(png) else "is missing")
                raise ResultFolderError(f"{path}: panoptic/{rec['name']}.png {state} (frame {rec['frame']})")
        folder = cls(path, manifest, frames, entities, frame_areas)
        folder.fingerprint, folder.identity = fingerprint, identity
        return folder

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
        self.id_index(ids, i)  # raises for ids panoptic.json does not list
        return ids.astype(np.uint32, copy=False)

    def id_index(self, ids: np.ndarray, i: int | None = None) -> np.ndarray:
        """The positions in :attr:`ids` of the ids of a map (int32, its shape): what per-id tables
        (:meth:`~entitysam.review.edits.EditSession.id_lookup`) are indexed by. ResultFolderError
        for an id panoptic.json does not list (i: the frame position named in the message)."""
        ids = np.asarray(ids)
        pos = map_ids(ids, self.ids, self._positions, -1, self._dense)
        bad = pos < 0
        if bad.any():
            unknown = sorted(set(np.unique(ids[bad]).tolist()))
            where = self.png_path(i) if i is not None else self.path
            raise ResultFolderError(f"{where}: holds id(s) {', '.join(map(str, unknown[:5]))} that "
                                    "panoptic.json does not list")
        return pos

    def id_rgb(self, i: int) -> np.ndarray:
        """The [H, W, 3] uint8 pixels of frame position `i`'s id PNG as stored (id = R + 256 G +
        65536 B; see `entitysam.io.idpng`), checked for mode and size: what the viewer encodes as runs."""
        path = self.png_path(i)
        return read_id_rgb(path, self.size, self.read_roots)

    def id_png_bytes(self, i: int) -> bytes:
        """The bytes of frame position `i`'s id PNG as stored (what the viewer sends as it is)."""
        with open_result_file(self.png_path(i), self.read_roots) as f:
            return f.read()

    def source_frame(self, i: int, still: bool = False) -> np.ndarray | None:
        """The [H, W, 3] uint8 RGB input frame behind frame position `i`, decoded from the
        manifest's input if it is still there (and still gives this frame); None otherwise.
        Reading forward through a video decodes each frame once (see :mod:`.source_frames`).
        still: for a still image (a thumbnail), read through the stills' own cursor."""
        rec = self.frames[self.check_frame(i)]
        image = (self.still_sources if still else self.sources).frame(int(rec["source_frame"]), rec["name"])
        return image if image is None or image.shape[:2] == self.size else None

    def source_file(self, i: int) -> Path | None:
        """The input file behind frame position `i` when the input is a folder of frames or an
        image still holding it (under its name); None for a video or a missing input."""
        rec = self.frames[self.check_frame(i)]
        return self.sources.frame_file(int(rec["source_frame"]), rec["name"])

    def manifest_digest(self) -> str:
        """SHA-256 (hex) of the bytes manifest.json had when the folder was opened: names the exact
        result this view was read from (edits.json records it); see :meth:`check_unchanged`."""
        return self.fingerprint[0] or ""

    def check_unchanged(self) -> None:
        """ResultChangedError when manifest.json or panoptic.json are no longer the bytes they were
        when the folder was opened (rewritten by `segment --overwrite`, edited, deleted, unreadable):
        the frames, entities and areas read then would be mixed with the new files. Save and
        export call it before (and after) they write."""
        if self.fingerprint[0] is None or _fingerprint(self.path) != self.fingerprint:
            raise ResultChangedError(f"{self.path}: the result changed on disk since it was opened (rewritten, "
                                     "deleted or unreadable); nothing was written: reopen it to review what is "
                                     "there now")

    def check_current(self) -> None:
        """Cheaply (a few stat calls, nothing read) that the folder on disk is still the one opened:
        ResultFileGoneError when it is gone, ResultChangedError when another result (or another
        manifest.json / panoptic.json) is there now (see `entitysam.review.on_disk`). The viewer
        calls it for each request that reads the result's files."""
        self.identity = check_identity(self.path, self.identity)

    @property
    def version(self) -> str:
        """A short name of the opened result's content (`entitysam.review.on_disk.version_token`)."""
        return version_token(self.fingerprint)

    def __repr__(self) -> str:
        return (f"ResultFolder({str(self.path)!r}, {self.kind}, {len(self.frames)} frames "
                f"{self.size[1]}x{self.size[0]}, {len(self.entities)} entities)")


def _fingerprint(path: Path) -> tuple[str | None, str | None]:
    """SHA-256 (hex) of manifest.json and of panoptic.json, None for one that cannot be read or is
    not a regular file (a FIFO in its place would block the read for good)."""
    return _digest(path / MANIFEST), _digest(path / "panoptic.json")


def _digest(path: Path) -> str | None:
    """SHA-256 (hex) of the regular file `path`; None when it is not one or cannot be read."""
    try:
        data = read_regular_bytes(path)
        return None if data is None else hashlib.sha256(data).hexdigest()
    except OSError:
        return None


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
        check_frame_record(path, rec)
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
        sid = check_entity_record(where, rec)["id"]
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
