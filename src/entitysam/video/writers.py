"""Output writers: panoptic PNG + JSON, entities.json (COCO RLE), overlay.mp4, logits.npz,
and the staged (atomic) output folder.

Every writer is fed one frame at a time (`id_map` [H, W] int32, 0 = no entity), so nothing
grows with the length of the video except small per-frame JSON records, which are streamed to
disk as they come.

Panoptic PNGs and their JSON are shared by two layouts:

* the user layout written by `entitysam segment` (`panoptic/<stem>.png` + `panoptic.json`,
  COCO bbox convention: width = number of columns, `x_max - x_min + 1`);
* the official evaluation layout (`pan_pred/<video>/<stem>.png` + `pred.json`, bbox width
  `x_max - x_min` without the +1, as the official script writes it): call
  :func:`frame_segments` with ``bbox="official"`` and :func:`write_id_png`.

In both, the PNG encodes the entity id as ``id = R + 256 G + 65536 B`` and the JSON lists, per
frame, the entities with area > 0 in increasing id order (= creation order).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import scipy.ndimage as ndi
from PIL import Image

from .. import jsonio
from ..io import idpng
from ..errors import OutputError

__all__ = [
    "encode_id_png",
    "decode_id_png",
    "write_id_png",
    "frame_segments",
    "PanopticWriter",
    "EntitiesWriter",
    "OverlayWriter",
    "entity_color",
    "render_overlay",
    "save_logits_npz",
    "check_logits_file",
    "StagedOutput",
    "OutputLock",
    "OutputLockedError",
    "UnsafeOverwriteError",
    "recover_output",
    "safe_name",
    "check_not_input",
    "written_by_entitysam",
    "read_manifest",
    "describe_os_error",
    "MANIFEST",
]

MANIFEST = "manifest.json"
CATEGORIES = [{"id": 1, "name": "entity", "isthing": 1, "supercategory": "entity"}]


# ----------------------------------------------------------------------------- ids and PNGs


def encode_id_png(id_map: np.ndarray) -> np.ndarray:
    """[H, W] ids -> [H, W, 3] uint8 RGB with id = R + 256 G + 65536 B (see `entitysam.io.idpng`)."""
    return idpng.encode_ids(id_map)


def decode_id_png(rgb: np.ndarray | str | os.PathLike) -> np.ndarray:
    """[H, W, 3] uint8 (or a PNG path) -> [H, W] int32 ids."""
    return idpng.decode_ids(rgb) if isinstance(rgb, np.ndarray) else idpng.read_id_png(rgb)


def write_id_png(path: str | os.PathLike, id_map: np.ndarray) -> None:
    """Write the RGB-encoded id PNG (fast zlib level: the files are re-read, not archived)."""
    idpng.write_id_png(path, id_map)


def frame_segments(id_map: np.ndarray, bbox: str = "coco") -> list[dict[str, Any]]:
    """The entities present in one frame, in increasing id order: ``{"id", "area", "bbox"}``.

    bbox: ``"coco"`` -> [x, y, w, h] with w = x_max - x_min + 1 (columns covered);
    ``"official"`` -> w = x_max - x_min (the official EntitySAM pred.json, no +1).
    """
    if bbox not in ("coco", "official"):
        raise ValueError(f"bbox must be 'coco' or 'official', got {bbox!r}")
    ids = np.asarray(id_map)
    top = int(ids.max(initial=0))
    if top <= 0:
        return []
    areas = np.bincount(ids.ravel(), minlength=top + 1)
    boxes = ndi.find_objects(ids.astype(np.int32, copy=False), max_label=top)
    extra = 0 if bbox == "coco" else 1
    out = []
    for seg_id in range(1, top + 1):
        area = int(areas[seg_id])
        if area == 0:
            continue
        rows, cols = boxes[seg_id - 1]
        out.append({
            "id": seg_id,
            "area": area,
            "bbox": [int(cols.start), int(rows.start),
                     int(cols.stop - cols.start - extra), int(rows.stop - rows.start - extra)],
        })
    return out


# ----------------------------------------------------------------------------- panoptic


def _dumps(obj: Any) -> str:
    return jsonio.dumps(obj, compact=True)


class PanopticWriter:
    """``<dir>/panoptic/<stem>.png`` + ``<dir>/panoptic.json`` (a one-video VIPSeg ``pred.json``).

    panoptic.json::

        {"annotations": [{"video_id": <name>, "annotations": [
            {"image_id": <stem>, "file_name": "<stem>.png", "frame": t, "source_frame": i,
             "segments_info": [{"id", "area", "bbox": [x, y, w, h], "iscrowd": 0, "category_id": 1}]},
            ...]}],
         "categories": [{"id": 1, "name": "entity", "isthing": 1, "supercategory": "entity"}]}

    Frame entries are streamed to the file as frames come. With ``png_dir =
    <pred_dir>/pan_pred/<video>``, ``bbox="official"`` and ``json_path=None`` (the caller
    gathers :meth:`frame_entry` records of several videos into ``pred.json``) the same writer
    produces the official evaluation layout.
    """

    def __init__(self, png_dir: str | os.PathLike, json_path: str | os.PathLike | None, video_id: str,
                 bbox: str = "coco"):
        self.png_dir = Path(png_dir)
        self.png_dir.mkdir(parents=True, exist_ok=True)
        self.video_id = video_id
        self.bbox = bbox
        self.num_frames = 0
        self._json = None
        if json_path is not None:
            self._json = open(json_path, "w", encoding="utf-8")
            self._json.write(f'{{"annotations": [{{"video_id": {_dumps(video_id)}, "annotations": [\n')

    @staticmethod
    def frame_entry(t: int, frame: Any, segments: list[dict[str, Any]]) -> dict[str, Any]:
        info = [{**s, "iscrowd": 0, "category_id": 1} for s in segments]
        return {"image_id": frame.name, "file_name": f"{frame.name}.png", "frame": t,
                "source_frame": int(frame.index), "segments_info": info}

    def add(self, t: int, frame: Any, id_map: np.ndarray, segments: list[dict[str, Any]] | None = None) -> None:
        """frame: has ``.name`` (file stem) and ``.index`` (source frame index)."""
        if segments is None:
            segments = frame_segments(id_map, self.bbox)
        write_id_png(self.png_dir / f"{frame.name}.png", id_map)
        if self._json is not None:
            self._json.write(("" if self.num_frames == 0 else ",\n") + _dumps(self.frame_entry(t, frame, segments)))
        self.num_frames += 1

    def close(self) -> None:
        if self._json is not None and not self._json.closed:
            self._json.write(f'\n]}}], "categories": {_dumps(CATEGORIES)}}}\n')
            self._json.close()

    def abort(self) -> None:
        if self._json is not None:
            self._json.close()


# ----------------------------------------------------------------------------- entities


def _rle(mask: np.ndarray) -> dict[str, Any]:
    from pycocotools import mask as mask_utils  # noqa: PLC0415 - optional dependency

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


class EntitiesWriter:
    """``entities.json``: one record per entity with its per-frame COCO RLE mask.

    ::

        {"video": <name>, "size": [H, W], "fps": f, "num_frames": n,
         "frames": [{"frame": t, "source_frame": i, "name": <stem>, "time": s}, ...],
         "entities": [{"id", "score", "query_index", "first_frame", "last_frame", "num_frames",
                       "area", "frames": [{"frame": t, "area", "bbox": [x, y, w, h],
                                           "rle": {"size": [H, W], "counts": str}}, ...]}, ...]}

    ``frame`` numbers are positions in the processed sequence (0 .. n-1, an index into
    ``frames``); ``area`` of an entity is summed over its frames; bbox is COCO's (w = columns
    covered). Per-entity records are streamed to one temporary file per entity and joined
    when the video is finished, so memory does not grow with the video length.
    """

    def __init__(self, path: str | os.PathLike, video_id: str):
        self.path = Path(path)
        self.video_id = video_id
        self._tmp = self.path.parent / f".{self.path.name}.parts"
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._frames = open(self._tmp / "frames.jsonl", "w", encoding="utf-8")
        self._files: dict[int, Any] = {}
        self.stats: dict[int, dict[str, int]] = {}
        self.size: tuple[int, int] | None = None
        self.num_frames = 0

    def add(self, t: int, frame: Any, id_map: np.ndarray, segments: list[dict[str, Any]] | None = None) -> None:
        if segments is None:
            segments = frame_segments(id_map, "coco")
        self.size = (int(id_map.shape[0]), int(id_map.shape[1]))
        self._frames.write(_dumps({"frame": t, "source_frame": int(frame.index), "name": frame.name,
                                   "time": round(float(frame.time), 6)}) + "\n")
        for seg in segments:
            sid = seg["id"]
            rec = {"frame": t, "area": seg["area"], "bbox": seg["bbox"], "rle": _rle(id_map == sid)}
            f = self._files.get(sid)
            if f is None:
                f = self._files[sid] = open(self._tmp / f"{sid}.jsonl", "w", encoding="utf-8")
                self.stats[sid] = {"first_frame": t, "last_frame": t, "num_frames": 0, "area": 0}
            f.write(_dumps(rec) + "\n")
            st = self.stats[sid]
            st["last_frame"] = t
            st["num_frames"] += 1
            st["area"] += seg["area"]
        self.num_frames += 1

    def close(self, entities: Sequence[Mapping[str, Any]], fps: float | None = None) -> None:
        """entities: ``{"id", "score", "query_index"}`` of every segment (any order)."""
        self._frames.close()
        for f in self._files.values():
            f.close()
        head = {"video": self.video_id, "size": list(self.size) if self.size else None,
                "fps": fps, "num_frames": self.num_frames}
        with open(self.path, "w", encoding="utf-8") as out:
            out.write(_dumps(head)[:-1] + ',"frames":[\n')
            with open(self._tmp / "frames.jsonl", encoding="utf-8") as f:
                for i, line in enumerate(f):
                    out.write(("" if i == 0 else ",\n") + line.rstrip("\n"))
            out.write('\n],"entities":[\n')
            for k, ent in enumerate(sorted(entities, key=lambda e: e["id"])):
                sid = int(ent["id"])
                st = self.stats.get(sid, {"first_frame": None, "last_frame": None, "num_frames": 0, "area": 0})
                rec = {"id": sid, "score": float(ent["score"]), "query_index": int(ent.get("query_index", -1)), **st}
                out.write(("" if k == 0 else ",\n") + _dumps(rec)[:-1] + ',"frames":[')
                part = self._tmp / f"{sid}.jsonl"
                if part.exists():
                    with open(part, encoding="utf-8") as f:
                        for i, line in enumerate(f):
                            out.write(("" if i == 0 else ",") + line.rstrip("\n"))
                out.write("]}")
            out.write("\n]}\n")
        shutil.rmtree(self._tmp, ignore_errors=True)

    def abort(self) -> None:
        self._frames.close()
        for f in self._files.values():
            f.close()
        shutil.rmtree(self._tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- overlay


def entity_color(entity_id: int) -> tuple[int, int, int]:
    """A stable, distinct RGB colour per id (golden-ratio hue steps, alternating brightness)."""
    import colorsys  # noqa: PLC0415

    h = (entity_id * 0.6180339887498949 + 0.11) % 1.0
    s = 0.85 if entity_id % 2 else 0.65
    v = 1.0 if (entity_id // 2) % 2 == 0 else 0.8
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return int(r * 255 + 0.5), int(g * 255 + 0.5), int(b * 255 + 0.5)


def _palette(max_id: int) -> np.ndarray:
    pal = np.zeros((max_id + 1, 3), dtype=np.float32)
    for i in range(1, max_id + 1):
        pal[i] = entity_color(i)
    return pal


def _font(size: int):
    from PIL import ImageFont  # noqa: PLC0415

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def render_overlay(image: np.ndarray, id_map: np.ndarray, alpha: float = 0.5, labels: bool = False) -> np.ndarray:
    """The frame with each entity tinted in its colour and its contour drawn; optional ids."""
    ids = np.asarray(id_map)
    top = int(ids.max(initial=0))
    if top == 0:
        return image.copy()
    pal = _palette(top)
    fg = ids > 0
    out = image.astype(np.float32)
    out[fg] = out[fg] * (1 - alpha) + pal[ids[fg]] * alpha
    # Contours: entity pixels with a 4-neighbour of another id.
    edge = np.zeros_like(fg)
    edge[:-1] |= ids[:-1] != ids[1:]
    edge[1:] |= ids[1:] != ids[:-1]
    edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    edge &= fg
    out[edge] = pal[ids[edge]] * 0.6
    result = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    if labels:
        from PIL import ImageDraw  # noqa: PLC0415

        pil = Image.fromarray(result)
        draw = ImageDraw.Draw(pil)
        font = _font(max(10, min(ids.shape) // 25))
        for seg_id, box in enumerate(ndi.find_objects(ids.astype(np.int32, copy=False)), start=1):
            if box is None:
                continue
            rows, cols = box
            ys, xs = np.nonzero(ids[rows, cols] == seg_id)
            cy, cx = ys.mean(), xs.mean()
            k = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))  # the entity pixel nearest its centroid
            x, y = int(xs[k] + cols.start), int(ys[k] + rows.start)
            try:
                draw.text((x, y), str(seg_id), fill=(255, 255, 255), font=font, anchor="mm",
                          stroke_width=2, stroke_fill=(0, 0, 0))
            except (TypeError, ValueError):  # bitmap fonts: no anchor / stroke
                draw.text((x, y), str(seg_id), fill=(255, 255, 255), font=font)
        result = np.asarray(pil)
    return result


class OverlayWriter:
    """``overlay.mp4`` (H.264, yuv420p) at the given frame rate, encoded with PyAV.

    yuv420p needs even sizes: an odd width or height is padded by repeating the last column or
    row (the video is then 1 pixel wider or taller than the frames).
    """

    def __init__(self, path: str | os.PathLike, fps: float, labels: bool = False, alpha: float = 0.5):
        import av  # noqa: PLC0415 - optional dependency

        self.path = Path(path)
        self.labels = labels
        self.alpha = alpha
        self.rate = Fraction(fps).limit_denominator(1001) if fps > 0 else Fraction(25)
        self._container = av.open(str(self.path), mode="w", format="mp4")
        self._stream = None
        self.num_frames = 0
        self._av = av

    def _open_stream(self, h: int, w: int) -> None:
        codec = "libx264" if "libx264" in self._av.codecs_available else "mpeg4"
        stream = self._container.add_stream(codec, rate=self.rate)
        stream.width, stream.height = w + (w % 2), h + (h % 2)
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "20", "preset": "veryfast"}
        self._stream = stream

    def add(self, image: np.ndarray, id_map: np.ndarray) -> None:
        h, w = id_map.shape
        if image.shape[:2] != (h, w):
            image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
        frame = render_overlay(image, id_map, self.alpha, self.labels)
        if self._stream is None:
            self._open_stream(h, w)
        if h % 2 or w % 2:
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        vf = self._av.VideoFrame.from_ndarray(frame, format="rgb24")
        for packet in self._stream.encode(vf):
            self._container.mux(packet)
        self.num_frames += 1

    def close(self) -> None:
        if self._stream is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
        self._container.close()

    def abort(self) -> None:
        try:
            self._container.close()
        except Exception:  # noqa: BLE001 - best effort on an error path
            pass


# ----------------------------------------------------------------------------- logits


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
    if result_dir is not None and _overlaps(Path(os.path.realpath(path)), Path(os.path.realpath(result_dir))):
        raise UnsafeOverwriteError(f"--save-logits {path} lies inside the result folder {result_dir}, which is "
                                   "written as a whole: use --save-logits without FILE to put logits.npz there")
    if not path.parent.is_dir():
        raise OutputError(f"--save-logits {path}: the folder {path.parent} does not exist (create it first)")
    if os.path.lexists(path):
        if path.is_symlink() or not path.is_file():
            raise UnsafeOverwriteError(f"--save-logits {path} exists and is not a plain file: refusing to replace it")
        if not overwrite:
            raise OutputError(f"--save-logits {path} already exists: use --overwrite to replace it")
        check_not_input(path, inputs, "--save-logits")
    return path


def save_logits_npz(path: str | os.PathLike, logits: Any, scores: np.ndarray, **extra: np.ndarray) -> Path:
    """Write ``logits`` [n, Q, h, w] (low-res mask logits after hole filling, frame-major),
    ``scores`` [Q] and any ``extra`` arrays to an uncompressed .npz (``np.load`` reads it),
    atomically: a temporary file in the same folder, renamed when complete.

    ``logits`` is an array or an object with ``.frames()`` returning a fresh [n, Q, h, w]
    memmap (a LogitStore): it is then copied a few frames at a time, each through a new
    mapping, so the process never holds more than one chunk of it.
    """
    import zipfile  # noqa: PLC0415

    path = logits_file(path)
    if not path.parent.is_dir():  # never create folders anywhere a mistyped path points to
        raise OutputError(f"cannot write {path}: the folder {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}-{secrets.token_hex(3)}")
    fresh = logits.frames if hasattr(logits, "frames") else (lambda: logits)
    first = fresh()
    shape, dtype = tuple(first.shape), first.dtype
    del first
    frame_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    step = max(1, (16 << 20) // max(1, frame_bytes))
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
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
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# ----------------------------------------------------------------------------- staged folder
#
# A result folder DIR/<name> is written through these siblings (all hidden, all in DIR):
#
#   .<name>.lock                  the OS lock (fcntl.flock) of the run writing <name>; holds its pid
#   .<name>.partial-<pid>-<hex>   the new result while it is written (the staging folder)
#   .<name>.old-<pid>-<hex>       the previous result, moved aside while the new one moves in
#   .<name>.commit.json           the journal of a replacement in progress: {"old", "new"}
#
# Replacing an existing result takes two renames (a non-empty folder cannot be renamed over
# another). The journal is written before the first and removed after the second, so whatever
# instant a run is killed at, the next run that takes the lock (:func:`recover_output`) finds
# either the result in place, or the journal and enough to finish the move (the new result is
# complete before the journal is written) or to put the old result back.

LOCK_SUFFIX = ".lock"
JOURNAL_SUFFIX = ".commit.json"
WRITER = "entitysam"  # manifest "writer": marks folders this tool wrote (only those --overwrite replaces)
# Bytes of a result name: the longest sibling adds ".", ".partial-<pid>-<8 hex>" (about 30 bytes)
# and file systems allow 255 bytes per name.
MAX_NAME_BYTES = 200


class OutputLockedError(OutputError):
    """Another run holds the lock of the result folder."""


class UnsafeOverwriteError(OutputError):
    """--overwrite would replace a folder this tool did not write, or an input."""


def safe_name(name: str) -> str:
    """`name` (derived from an input: a file stem, a folder name, a stream) made into one safe
    path component: no separators, NUL or control characters (each becomes ``_``), no leading
    dot (``.``, ``..`` and hidden names would be the output root, its parent, or look like our
    staging folders), at most MAX_NAME_BYTES bytes of UTF-8 (a longer name is cut and gets a
    hash of the full name, so two long names stay distinct). Never empty."""
    import hashlib  # noqa: PLC0415
    import unicodedata  # noqa: PLC0415

    cleaned = "".join("_" if (ch in "/\\" or unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs")) else ch
                      for ch in str(name))
    cleaned = cleaned.strip()
    if cleaned.startswith("."):
        cleaned = "_" + cleaned.lstrip(".")
    cleaned = cleaned or "_"
    encoded = cleaned.encode("utf-8", "surrogatepass")
    if len(encoded) > MAX_NAME_BYTES:
        digest = hashlib.sha1(str(name).encode("utf-8", "surrogatepass")).hexdigest()[:10]
        head = encoded[:MAX_NAME_BYTES - len(digest) - 1].decode("utf-8", "ignore")
        cleaned = f"{head}~{digest}"
    return cleaned


def read_manifest(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of a complete output folder, or None (missing, unreadable, incomplete)."""
    data = _manifest_data(directory)
    return data if data is not None and data.get("complete") is True else None


def _manifest_data(directory: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(directory) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def written_by_entitysam(directory: str | os.PathLike) -> bool:
    """Whether `directory` is a real folder whose manifest.json says this tool wrote it (complete or
    not: an interrupted online result is one). The only kind of folder --overwrite replaces."""
    directory = Path(directory)
    if directory.is_symlink() or not directory.is_dir():
        return False
    data = _manifest_data(directory)
    if data is None:
        return False
    return data.get("writer") == WRITER or str(data.get("format", "")).startswith("entitysam-")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (used to clean partial outputs of dead runs)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def describe_os_error(err: OSError, what: str) -> str:
    cause = err.strerror or str(err)
    if err.errno == errno.ENOSPC:
        cause = "no space left on the device (disk full)"
    elif err.errno == errno.EDQUOT:
        cause = "disk quota exceeded"
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        cause = f"{cause} (the output folder is not writable)"
    name = f" {err.filename}" if err.filename else ""
    return f"cannot write {what}{name}: {cause}"


def _fsync_dir(path: Path) -> None:
    """Make renames in `path` durable (best effort: not every file system supports it)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _overlaps(a: Path, b: Path) -> str | None:
    """How folder/file `a` relates to `b` ("is", "contains", "lies inside"), or None."""
    if a == b:
        return "is"
    if a in b.parents:
        return "contains"
    if b in a.parents:
        return "lies inside"
    return None


def check_not_input(target: str | os.PathLike, inputs: Sequence[Any], what: str) -> None:
    """Raise UnsafeOverwriteError if `target` is, contains or lies inside one of `inputs`
    (paths; other inputs, e.g. stream URLs, are ignored)."""
    target_real = Path(os.path.realpath(target))
    for item in inputs:
        if not isinstance(item, (os.PathLike, Path)):
            continue
        relation = _overlaps(target_real, Path(os.path.realpath(item)))
        if relation is not None:
            raise UnsafeOverwriteError(f"{what} {target} {relation} the input {item}: refusing to replace it "
                                       "(even with --overwrite); choose another --output")


try:  # POSIX; elsewhere runs are not locked (documented)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


def _open_lock_file(path: Path) -> int:
    """Open (create) a lock file. A batch run holds one per video: when the soft limit of open
    files is reached, it is raised to the hard limit once."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        if err.errno != errno.EMFILE:
            raise
        import resource  # noqa: PLC0415 - POSIX only, like fcntl

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = hard if hard != resource.RLIM_INFINITY else max(soft * 16, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            raise err from None
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


class OutputLock:
    """The exclusive lock of one result folder: ``fcntl.flock`` on ``.<name>.lock`` beside it,
    holding the pid of its owner. The OS releases it when the process ends, however it ends, so
    a killed run never leaves a stale lock. Re-entrant within a process (the command line takes
    it before loading the model, the writer takes it again); the file is removed on release.
    """

    _held: dict[str, "OutputLock"] = {}

    def __init__(self, final: Path):
        self.final = final
        self.path = final.parent / f".{final.name}{LOCK_SUFFIX}"
        self._fd: int | None = None
        self._count = 0
        self._created: list[Path] = []

    @classmethod
    def acquire(cls, final: str | os.PathLike, *, wait: bool = False,
                on_wait: Any = None) -> "OutputLock":
        """Take the lock of `final` (creating its parent folders). Busy: raise OutputLockedError
        naming the holder's pid, or with ``wait`` block until it is free (``on_wait(message)``
        is called first)."""
        final = Path(os.path.abspath(final))
        key = str(final)
        lock = cls._held.get(key)
        if lock is None:
            lock = cls(final)
            lock._take(wait, on_wait)
            cls._held[key] = lock
        lock._count += 1
        return lock

    def _make_parent(self) -> None:
        missing = []
        for p in [self.final.parent, *self.final.parent.parents]:
            if p.exists():
                break
            missing.append(p)
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(describe_os_error(err, "the output folder")) from None
        self._created = missing  # innermost first: removed on release if still empty

    def _holder(self) -> str:
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.path.read_text().strip() or "x")
            return f"pid {pid}"
        return "another process"

    def _take(self, wait: bool, on_wait: Any) -> None:
        self._make_parent()
        if fcntl is None:
            return
        while True:
            try:
                fd = _open_lock_file(self.path)
            except OSError as err:
                self._remove_created_parents()
                raise OutputError(describe_os_error(err, "the output folder")) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder()
                if not wait:
                    os.close(fd)
                    raise OutputLockedError(
                        f"{self.final} is being written by another entitysam run ({holder}, lock file "
                        f"{self.path}): wait for it to finish, or pass --wait-lock to wait for it") from None
                if on_wait is not None:
                    on_wait(f"{self.final} is being written by another entitysam run ({holder}); waiting")
                fcntl.flock(fd, fcntl.LOCK_EX)
            # The previous holder removes the file before releasing it: a lock on a removed file
            # locks nothing, so check that the path still names the file locked.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def _remove_created_parents(self) -> None:
        for p in self._created:
            with contextlib.suppress(OSError):
                p.rmdir()  # only if still empty

    def release(self) -> None:
        if self._count <= 0:
            return
        self._count -= 1
        if self._count:
            return
        OutputLock._held.pop(str(self.final), None)
        if self._fd is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()  # while still locked: nobody can be relying on it
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        self._remove_created_parents()

    def __enter__(self) -> "OutputLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


# Staging folders this process is writing now (never "stale", whatever their pid says).
_ACTIVE_STAGING: set[str] = set()


def _sibling_pid(path: Path, prefix: str) -> int | None:
    rest = path.name[len(prefix):]
    head, _, tail = rest.partition("-")
    if not head.isdigit() or not tail or not all(c in "0123456789abcdef" for c in tail):
        return None
    return int(head)


def _leftovers(final: Path, kind: str) -> list[Path]:
    """``.<name>.<kind>-<pid>-<hex>`` siblings of dead runs (or of this process, not active)."""
    prefix = f".{final.name}.{kind}-"
    out = []
    with contextlib.suppress(OSError):
        for p in final.parent.iterdir():
            if not p.name.startswith(prefix) or str(p) in _ACTIVE_STAGING:
                continue
            pid = _sibling_pid(p, prefix)
            if pid is not None and (pid == os.getpid() or not pid_alive(pid)):
                out.append(p)
    return sorted(out, key=lambda p: p.stat().st_mtime if p.exists() else 0, reverse=True)


def _journal_path(final: Path) -> Path:
    return final.parent / f".{final.name}{JOURNAL_SUFFIX}"


def recover_output(final: str | os.PathLike) -> str | None:
    """Finish or undo a replacement of `final` that a killed run left half done, and remove the
    leftovers of dead runs. Call with the lock of `final` held. Returns what was done (or None).

    With a journal: the new result is moved in if it is complete and `final` is missing or
    still the old one; else the old one is put back. Without one (runs of older versions): a
    missing `final` gets the newest complete staging folder of a dead run, else its newest
    moved-aside old result.
    """
    final = Path(os.path.abspath(final))
    parent = final.parent
    journal = _journal_path(final)
    done = None
    try:
        data = json.loads(journal.read_text(encoding="utf-8"))
    except FileNotFoundError:
        data = None
    except (OSError, ValueError):
        data = {}  # unreadable (written atomically, so not expected): use what the folders say
    if data is not None:
        names = {k: data.get(k) for k in ("old", "new")}
        old = new = None
        if isinstance(names["old"], str) and names["old"].startswith(f".{final.name}.old-") and "/" not in names["old"]:
            old = parent / names["old"]
        if isinstance(names["new"], str) and names["new"].startswith(f".{final.name}.partial-") \
                and "/" not in names["new"]:
            new = parent / names["new"]
        new_ready = new is not None and read_manifest(new) is not None
        if os.path.lexists(final):
            if new_ready and (old is None or not old.exists()):  # killed before the old result moved aside
                os.rename(final, old or parent / f".{final.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
                os.rename(new, final)
                done = "finished replacing the result"
        elif new_ready:
            os.rename(new, final)  # killed between the two renames
            done = "finished replacing the result"
        elif old is not None and old.is_dir():
            os.rename(old, final)
            done = "restored the previous result"
        _fsync_dir(parent)
        journal.unlink(missing_ok=True)
    if not os.path.lexists(final):
        for kind, what in (("partial", "moved in the complete result"), ("old", "restored the previous result")):
            for p in _leftovers(final, kind):
                if p.is_dir() and (kind == "old" or read_manifest(p) is not None):
                    os.rename(p, final)
                    done = f"{what} a killed run left in {p.name}"
                    break
            if os.path.lexists(final):
                break
    for kind in ("partial", "old"):
        for p in _leftovers(final, kind):
            shutil.rmtree(p, ignore_errors=True)
    with contextlib.suppress(OSError):
        for p in parent.glob(f".{final.name}{JOURNAL_SUFFIX}.tmp-*"):
            p.unlink()
    return done


class StagedOutput:
    """An output folder that appears only when complete, written by one run at a time.

    The lock of the folder is taken (see :class:`OutputLock`; ``wait_lock`` waits for another
    run instead of failing) and leftovers of killed runs are recovered (:func:`recover_output`).
    Files are written into a hidden sibling ``.<name>.partial-<pid>-<rand>``; :meth:`commit`
    writes ``manifest.json`` last and renames the folder into place, replacing an older result
    (``overwrite``) crash-safely: a kill at any instant leaves the old or the new result, or a
    journal from which the next run restores one. ``overwrite`` only replaces a folder this
    tool wrote, never one that is, contains or lies inside one of ``inputs``. On error (or
    :meth:`abort`) the partial folder is removed.
    """

    def __init__(self, final: str | os.PathLike, overwrite: bool = False, *, inputs: Sequence[Any] = (),
                 wait_lock: bool = False):
        self.final = Path(final)
        self.overwrite = overwrite
        self._done = True
        self._lock = OutputLock.acquire(self.final, wait=wait_lock)
        try:
            recover_output(self.final)
            self.check_free(self.final, overwrite, inputs=inputs)
            self.path = self.final.parent / f".{self.final.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
            self.path.mkdir()
        except OSError as err:
            self._lock.release()
            raise OutputError(describe_os_error(err, "the output folder")) from None
        except BaseException:
            self._lock.release()
            raise
        _ACTIVE_STAGING.add(str(self.path))
        self._done = False

    @staticmethod
    def check_free(final: str | os.PathLike, overwrite: bool = False, inputs: Sequence[Any] = ()) -> None:
        """Raise OutputError if `final` exists and may not be replaced: without ``overwrite``,
        or (UnsafeOverwriteError) when it is not a folder this tool wrote, or is, contains or lies
        inside one of `inputs`."""
        final = Path(final)
        if not os.path.lexists(final):
            return
        error = UnsafeOverwriteError if overwrite else OutputError  # (--overwrite asked for a deletion)
        if final.is_symlink():
            raise error(f"{final} is a symbolic link: refusing to replace it (even with --overwrite); "
                        "choose another --output")
        if not final.is_dir():
            raise error(f"{final} exists and is not a folder: refusing to replace it (even with --overwrite); "
                        "choose another --output")
        if not overwrite:
            if read_manifest(final) is not None:
                raise OutputError(f"{final} already holds results: use --overwrite to replace them "
                                  "(or --skip-existing to skip finished videos)")
            if written_by_entitysam(final):
                raise OutputError(f"{final} holds an unfinished entitysam result: use --overwrite to replace it "
                                  "or choose another --output")
            raise OutputError(f"{final} already exists (not a complete entitysam result): "
                              "choose another --output (--overwrite only replaces entitysam results)")
        check_not_input(final, inputs, "the result folder")
        if not written_by_entitysam(final):
            raise UnsafeOverwriteError(
                f"{final} was not written by entitysam (no entitysam manifest.json in it): refusing to delete "
                "it even with --overwrite; move it away or choose another --output")

    def commit(self, manifest: Mapping[str, Any]) -> Path:
        data = {**manifest, "writer": WRITER, "complete": True, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        parent = self.final.parent
        journal = _journal_path(self.final)
        old = None
        try:
            tmp = self.path / f".{MANIFEST}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(jsonio.dumps(data, indent=1) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path / MANIFEST)
            if os.path.lexists(self.final):
                self.check_free(self.final, self.overwrite)  # (it may have appeared since the start)
                old = parent / f".{self.final.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
                _write_journal(journal, {"old": old.name, "new": self.path.name, "pid": os.getpid()})
                os.rename(self.final, old)  # step 1: the old result aside
            os.rename(self.path, self.final)  # step 2: the new result in
            _fsync_dir(parent)
            journal.unlink(missing_ok=True)  # step 3: the replacement is done
        except OSError as err:
            self._roll_back(old)
            raise OutputError(describe_os_error(err, str(self.final))) from None
        except BaseException:
            self._roll_back(old)
            raise
        self._finish()
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)  # step 4 (a leftover is removed by the next run)
        return self.final

    def _roll_back(self, old: Path | None) -> None:
        """After a failed commit in this process: the old result back in place, no journal."""
        with contextlib.suppress(OSError):
            if old is not None and old.is_dir() and not os.path.lexists(self.final):
                os.rename(old, self.final)
            _journal_path(self.final).unlink(missing_ok=True)
        self.abort()

    def _finish(self) -> None:
        self._done = True
        _ACTIVE_STAGING.discard(str(self.path))
        self._lock.release()

    def abort(self) -> None:
        if not self._done:
            shutil.rmtree(self.path, ignore_errors=True)
            self._finish()

    def __enter__(self) -> "StagedOutput":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def _write_journal(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(data) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
