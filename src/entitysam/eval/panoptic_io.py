"""Reading VIPSeg-style panoptic ground truth / predictions for the video metrics.

Layout (the one the official EntitySAM evaluation scripts read)::

    <gt_dir>/<video_id>/<file_name>            RGB PNG, id = R + 256 G + 65536 B, 0 = VOID
    <gt_json>                                  {"videos": [{"video_id", "images": [{"file_name", ...}]}],
                                                "annotations": [{"video_id", "annotations":
                                                    [{"segments_info": [{"id", "iscrowd", "area", ...}]}]}]}
    <pred_dir>/pan_pred/<video_id>/<file_name> RGB PNG (same encoding)
    <pred_dir>/pred.json                       {"annotations": [{"video_id", "annotations":
                                                    [{"segments_info": [{"id", "area", ...}], "file_name"}]}]}

Like the official scripts, both PNGs of a frame are located with the *ground-truth*
image ``file_name`` (the ``file_name`` stored in ``pred.json`` is ignored), and the
per-frame JSON entries (GT and prediction) are paired with the frames by position.

Everything that the official scripts would reject with an ``assert``/``KeyError``/crash
is reported here as :class:`MetricsInputError` with a message naming the video,
frame and segment id.  Two deliberate differences: a video missing from ``pred.json``
is an error (the official VEQ script prints a warning and skips it, the STQ script
crashes), and a GT video whose ``images`` and ``annotations`` lists have different
lengths is an error (the official scripts silently truncate to the shorter one).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import EntitySAMError
from ..io.idpng import MAX_ID, decode_ids
from ..io.image_file import NotRegularFileError, TooManyPixelsError, open_image_file
from ..io.paths import leaves_its_folder
from ..io.sources.selection import DEFAULT_MAX_PIXELS
from ..jsonio import load_file

__all__ = [
    "MetricsInputError",
    "FrameSpec",
    "VideoSpec",
    "load_videos",
    "annotations_by_video",
    "check_png",
    "read_id_png",
    "pair_counts",
    "segment_id",
]

PathLike = str | os.PathLike


class MetricsInputError(EntitySAMError, ValueError):
    """Inconsistent or missing metric inputs (files, JSON entries, segment ids, sizes)."""


@dataclass(frozen=True)
class FrameSpec:
    file_name: str
    gt_segments: tuple[Mapping[str, Any], ...]
    pred_segments: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True)
class VideoSpec:
    video_id: str
    seq_id: int  # position in the GT "videos" list (the official STQ sequence id)
    gt_dir: str  # directory holding this video's GT PNGs
    pred_dir: str  # directory holding this video's predicted PNGs
    frames: tuple[FrameSpec, ...]


# ----------------------------------------------------------------------------- JSON


def _load_json(path_or_obj: PathLike | Mapping[str, Any], what: str) -> Mapping[str, Any]:
    if isinstance(path_or_obj, Mapping):
        return path_or_obj
    return load_file(path_or_obj, what, MetricsInputError)


def segment_id(value: Any, *, where: str) -> int:
    """A segment id as a Python int (ints and integral floats accepted, like Python's dict lookup)."""
    if isinstance(value, (bool, np.bool_)):
        raise MetricsInputError(f"{where}: segment id {value!r} is not an integer")
    if isinstance(value, (int, np.integer)):
        sid = int(value)
    elif isinstance(value, (float, np.floating)) and float(value).is_integer():
        sid = int(value)
    else:
        raise MetricsInputError(f"{where}: segment id {value!r} is not an integer")
    # an id no RGB PNG can hold: in the GT JSON it would be counted as a missed segment (or
    # overflow the int64 tables with a traceback) instead of being refused
    if not 0 <= sid <= MAX_ID:
        raise MetricsInputError(f"{where}: segment id {value!r} is outside 0..{MAX_ID} "
                                "(ids are encoded as R + 256 G + 65536 B)")
    return sid


def _require(mapping: Any, key: str, where: str) -> Any:
    if not isinstance(mapping, Mapping) or key not in mapping:
        raise MetricsInputError(f"{where}: missing key {key!r}")
    return mapping[key]


def _require_list(mapping: Any, key: str, where: str) -> list:
    value = _require(mapping, key, where)
    if not isinstance(value, list):
        raise MetricsInputError(f"{where}: {key!r} is {type(value).__name__}, not a list")
    return value


def _video_id(entry: Any, where: str) -> str | int:
    vid = _require(entry, "video_id", where)
    if isinstance(vid, bool) or not isinstance(vid, (str, int)):
        raise MetricsInputError(f"{where}: video_id {vid!r} is not a string")
    return vid


def _path_part(value: Any, key: str, where: str) -> str:
    """`value` of a JSON `key` (a video id, a frame file name) as a path under its folder."""
    text = str(value)
    try:  # a NUL or an unpaired surrogate made os.stat raise a bare ValueError: a traceback
        os.fsencode(text)
        ok = "\0" not in text
    except UnicodeError:
        ok = False
    if not ok or not text:
        raise MetricsInputError(f"{where}: {key} {value!r} cannot be a file name")
    # an absolute name or "..": both PNGs of a frame are found through the GT's names, so
    # "/data/gt/x.png" read the ground truth as its own prediction
    if leaves_its_folder(text):
        raise MetricsInputError(f"{where}: {key} {value!r} names a file outside its folder")
    return text


def annotations_by_video(doc: Any, what: str, *, unique: bool = True) -> dict[Any, list]:
    """``annotations[]`` of a GT / prediction document as video id -> list of per-frame records.

    Each entry needs a ``video_id`` and an ``annotations`` list. ``unique``: a video listed twice
    is an error (it would count twice or shadow the other entry); otherwise the last one wins,
    like the official dict construction. Shared by ``entitysam metrics`` and ``eval vipseg``."""
    annos = _require_list(doc, "annotations", what)
    out: dict[Any, list] = {}
    for i, entry in enumerate(annos):
        vid = _video_id(entry, f"{what} annotations[{i}]")
        frames = _require_list(entry, "annotations", f"{what} annotations[{i}] (video {vid!r})")
        if unique and vid in out:
            raise MetricsInputError(f"{what} annotations[{i}]: video {vid!r} is listed twice")
        out[vid] = frames
    return out


def _segments(frame: Any, where: str, required: Sequence[str]) -> tuple[Mapping[str, Any], ...]:
    segs = _require_list(frame, "segments_info", where)
    for j, s in enumerate(segs):
        for key in ("id", *required):
            _require(s, key, f"{where} segments_info[{j}]")
        segment_id(s["id"], where=f"{where} segments_info[{j}]")
    return tuple(segs)


def load_videos(
    pred_dir: PathLike,
    gt_dir: PathLike,
    gt_json: PathLike | Mapping[str, Any],
    *,
    gt_required: Sequence[str] = ("iscrowd", "area"),
) -> list[VideoSpec]:
    """Pair GT and prediction JSON entries per video and frame; JSON-level validation only."""
    pred_dir = Path(pred_dir)
    gt_dir = Path(gt_dir)
    if not pred_dir.is_dir():
        raise MetricsInputError(f"prediction directory not found: {pred_dir}")
    if not gt_dir.is_dir():
        raise MetricsInputError(f"ground-truth PNG directory not found: {gt_dir}")
    gt_doc = _load_json(gt_json, "GT JSON")
    pred_doc = _load_json(pred_dir / "pred.json", "prediction JSON")

    gt_by_video = annotations_by_video(gt_doc, "GT JSON")
    pred_by_video = annotations_by_video(pred_doc, "pred.json", unique=False)
    videos = _require_list(gt_doc, "videos", "GT JSON")
    if not videos:  # else a table of zeros and STQ nan, exit 0: a score of nothing
        raise MetricsInputError("GT JSON lists no videos: nothing to score")

    specs: list[VideoSpec] = []
    seen: set[Any] = set()
    for seq_id, video in enumerate(videos):
        vid = _video_id(video, f"GT JSON videos[{seq_id}]")
        _path_part(vid, "video_id", f"GT JSON videos[{seq_id}]")
        if vid in seen:
            raise MetricsInputError(f"GT JSON videos[{seq_id}]: video {vid!r} is listed twice")
        seen.add(vid)
        images = _require_list(video, "images", f"GT JSON videos[{seq_id}] (video {vid!r})")
        if not images:  # as `eval vipseg`: a video without frames is a broken GT file, not a score
            raise MetricsInputError(f"GT JSON videos[{seq_id}] (video {vid!r}): lists no images")
        if vid not in gt_by_video:
            raise MetricsInputError(f"video {vid!r}: listed in GT 'videos' but has no GT 'annotations' entry")
        if vid not in pred_by_video:
            raise MetricsInputError(f"video {vid!r}: no predictions for this video in pred.json")
        gt_frames = gt_by_video[vid]
        pred_frames = pred_by_video[vid]
        if len(gt_frames) != len(pred_frames):
            raise MetricsInputError(
                f"video {vid!r}: {len(gt_frames)} GT frame annotations but {len(pred_frames)} "
                f"predicted frame annotations in pred.json"
            )
        if len(images) != len(gt_frames):
            raise MetricsInputError(
                f"video {vid!r}: GT JSON lists {len(images)} images but {len(gt_frames)} frame annotations"
            )
        frames = []
        names: set[str] = set()
        for t, (img, gfr, pfr) in enumerate(zip(images, gt_frames, pred_frames)):
            name = _path_part(_require(img, "file_name", f"GT JSON video {vid!r} images[{t}]"), "file_name",
                              f"GT JSON video {vid!r} images[{t}]")
            if name in names:
                raise MetricsInputError(f"GT JSON video {vid!r} images[{t}]: frame {name!r} is listed twice")
            names.add(name)
            frames.append(
                FrameSpec(
                    file_name=name,
                    gt_segments=_segments(gfr, f"GT JSON video {vid!r} frame {t} ({name})", gt_required),
                    pred_segments=_segments(pfr, f"pred.json video {vid!r} frame {t} ({name})", ()),
                )
            )
        specs.append(
            VideoSpec(
                video_id=str(vid),
                seq_id=seq_id,
                gt_dir=str(gt_dir / str(vid)),
                pred_dir=str(pred_dir / "pan_pred" / str(vid)),
                frames=tuple(frames),
            )
        )
    return specs


# ----------------------------------------------------------------------------- PNG

_ID_MASK = 0xFFFFFF
# Largest id PNG decoded (width x height), as inference's default --max-pixels: a PNG of a few
# hundred bytes declaring 12000x12000 was decoded (1.6 GB per worker) after Pillow's warning
# printed two lines.
MAX_PNG_PIXELS = DEFAULT_MAX_PIXELS


@contextlib.contextmanager
def _open_png(path: PathLike, what: str) -> Iterator[Image.Image]:
    """io.image_file: opened once without waiting (a FIFO put in a PNG's place after a check would
    block for ever), refused from its header over MAX_PNG_PIXELS; MetricsInputError naming it."""
    try:
        with open_image_file(path, MAX_PNG_PIXELS) as im:
            yield im
    except NotRegularFileError:
        raise MetricsInputError(f"{what} {path}: not a regular file") from None
    except TooManyPixelsError as err:
        raise MetricsInputError(f"{what} {err}") from None


def _require_png(im: Image.Image, path: PathLike, what: str) -> None:
    # the rule of the review's id maps: a JPEG (or any lossy file) under a .png name would give
    # made-up ids at every compression artefact, so only the PNG format is read
    if im.format != "PNG":
        raise MetricsInputError(f"{what} {path}: a {im.format} image, not a PNG "
                                "(ids are exact only in a lossless PNG: id = R + 256 G + 65536 B)")
    # Pillow opens a 16-bit-per-channel RGB(A) PNG as mode "RGB"/"RGBA", keeping the high byte of
    # each sample (raw mode "RGB;16B"): its ids would be made up without a word, so it is refused
    if any(";16" in str(tile[3]) for tile in im.tile):
        raise MetricsInputError(f"{what} {path}: a 16-bit-per-channel PNG; ids are read from 8-bit RGB "
                                "(id = R + 256 G + 65536 B)")


def _unreadable_png(path: PathLike, what: str, err: Exception) -> MetricsInputError:
    if isinstance(err, OSError) and err.strerror:  # str(err) said the path twice: "[Errno 40] ...: 'PATH'"
        return MetricsInputError(f"cannot read {what} {path}: {err.strerror}")
    return MetricsInputError(f"{what} cannot be read: {path} ({err})")


def check_png(path: PathLike, *, what: str = "PNG") -> tuple[int, int]:
    """Raise :class:`MetricsInputError` unless `path` is a readable 8-bit RGB(A) PNG file (header only);
    its (width, height)."""
    try:
        with _open_png(path, what) as im:
            _require_png(im, path, what)
            mode, size = im.mode, im.size
    except FileNotFoundError:
        raise MetricsInputError(f"{what} not found: {path}") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise _unreadable_png(path, what, e) from None
    # the modes read_id_png reads (a PNG's others have 1, 2 or 16-bit channels): `eval vipseg`
    # found a palette or gray GT PNG only when scoring, after every video was segmented
    if mode not in ("RGB", "RGBA", "RGBX"):
        raise MetricsInputError(f"{what} {path}: expected an 8-bit RGB image (ids encoded as R + 256 G + 65536 B), "
                                f"got mode {mode!r}")
    return size


def read_id_png(path: PathLike, *, what: str = "PNG", packed: bool = False) -> np.ndarray:
    """Read an RGB-encoded id PNG as a uint32 (H, W) map, id = R + 256 G + 65536 B.

    The file must be a PNG (a JPEG under a .png name would give made-up ids, see
    ``review.result``); like the official scripts, any 8-bit PNG with at least 3 channels is
    accepted and its first three channels are used.  With ``packed=True`` the fourth byte of each
    value may be non-zero (an alpha channel); the id is then ``value & 0xFFFFFF``
    (this skips a pass over the image; :func:`pair_counts` accepts packed maps).

    RGB / RGBA / RGBX files (all real ones) take a fast path that :mod:`entitysam.io.idpng` has
    not: PIL's C conversion to RGBA read as one little-endian uint32 per pixel, the id being its
    low 24 bits (1280x720, best of 5 on a shared 2-core EPYC: 26 ms packed, 32 ms masked,
    41 ms with ``io.idpng.read_id_png``; the metrics read every GT and predicted PNG); other
    modes with >= 3 channels are decoded by :func:`entitysam.io.idpng.decode_ids`.
    """
    try:
        with _open_png(path, what) as im:
            _require_png(im, path, what)
            mode = im.mode
            if mode in ("RGB", "RGBA", "RGBX"):
                if mode == "RGB":
                    im = im.convert("RGBA")  # fast C path to one uint32 per pixel
                w, h = im.size
                vals = np.frombuffer(im.tobytes(), dtype="<u4").reshape(h, w)
                return vals if packed else vals & np.uint32(_ID_MASK)
            arr = np.asarray(im)
    except FileNotFoundError:
        raise MetricsInputError(f"{what} not found: {path}") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        # DecompressionBombError (a header of over 2 x Image.MAX_IMAGE_PIXELS) is no OSError
        raise _unreadable_png(path, what, e) from None
    if arr.ndim != 3 or arr.shape[2] < 3 or arr.dtype != np.uint8:
        raise MetricsInputError(
            f"{what} {path}: expected an 8-bit RGB image (ids encoded as R + 256 G + 65536 B), "
            f"got mode {mode!r} with array shape {arr.shape}"
        )
    return decode_ids(arr).view(np.uint32)  # ids < 2**24: the int32 bits are the uint32 value


# ----------------------------------------------------------------------------- pair counting


def pair_counts(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel counts of every co-occurring (gt id, pred id) pair, sorted by (gt id, pred id).

    ``gt`` and ``pred`` are same-shape uint32 id maps (only the low 24 bits are the id).
    Returns int64 arrays ``(gt_ids, pred_ids, counts)``.  Panoptic maps are piecewise
    constant, so the pairs are counted over runs of equal consecutive pixels
    (a sort of a few thousand runs instead of the whole image; noise degrades
    gracefully to a sort of every pixel).
    """
    g = np.ascontiguousarray(gt).reshape(-1)
    p = np.ascontiguousarray(pred).reshape(-1)
    if g.shape != p.shape:
        raise ValueError(f"pair_counts: shapes differ {gt.shape} vs {pred.shape}")
    if g.size == 0:
        z = np.zeros(0, np.int64)
        return z, z.copy(), z.copy()
    change = g[1:] != g[:-1]
    change |= p[1:] != p[:-1]
    starts = np.flatnonzero(change)
    starts += 1
    starts = np.concatenate((np.zeros(1, starts.dtype), starts))
    lengths = np.diff(starts, append=g.size)
    keys = ((g[starts] & np.uint32(_ID_MASK)).astype(np.int64) << 24) | (p[starts] & np.uint32(_ID_MASK))
    uniq, inv = np.unique(keys, return_inverse=True)
    counts = np.bincount(inv.reshape(-1), weights=lengths, minlength=uniq.size)
    return uniq >> 24, uniq & _ID_MASK, counts.astype(np.int64)
