"""Frame sources: video files, folders of frames, single images, in-memory frames.

Every source is re-iterable and lazy: iterating decodes one frame at a time (a video file is
reopened for each pass), so no more than one decoded frame is held by the source. A source
knows its name (the output folder name), its frame rate and each frame's name (the stem of the
output files) before and while decoding.

* Video files (``.mp4 .mov .mkv .webm .avi``) are decoded with PyAV (the first video stream).
  Frame ``i`` is named ``f"{i:06d}"``; its time is its presentation timestamp.
* Folders of frames (``.jpg .jpeg .png``, any case; hidden files are ignored) are read in
  natural order: ``2.jpg`` before ``10.jpg``. For zero-padded names of one width (VIPSeg's
  ``00000.jpg`` ...) this is the same as the lexicographic order the official evaluation uses
  (``sorted(os.listdir(...))``); for unpadded names the official order would be wrong
  (``1, 10, 2``) and natural order is the temporal one. A frame is named by its file name
  without the extension. Frame ``i`` is at ``i / fps`` seconds (``fps`` defaults to 25).
* A single image is a one-frame video.
* Live sources (:class:`LiveSource`, online mode only): URLs PyAV opens (``rtsp://``,
  ``http://``, ``udp://``, ...) and video devices (``/dev/video0``, read with v4l2). They are read
  once, as they come: frame ``i`` is the ``i``-th frame decoded, named ``f"{i:06d}"``, its time
  is its timestamp relative to the first frame (wall-clock time when the stream has none).

Frame selection (:class:`FrameSelection`): ``start`` (inclusive) and ``end`` (exclusive) are
frame indices (``int``) or seconds (``float``, or strings like ``"2.5s"`` via
:func:`parse_position`), then every ``stride``-th frame from the first selected one, then at most
``max_frames`` frames. Indices always refer to the whole source (before selection).

Inputs are read as people see them: images are turned upright by their EXIF orientation and
converted to 8-bit RGB with their full range (16-bit grayscale scaled, not clipped); video frames
are rotated (and mirrored) by the stream's display matrix, as players show them.

Hostile inputs fail early with a :class:`SourceError` instead of hanging or exhausting memory:
only regular files and folders are read (a named pipe, socket or device other than a video
capture device is refused before it is opened), and a frame larger than ``max_pixels``
(:data:`DEFAULT_MAX_PIXELS` unless set; None: no limit) is refused from its header, before
it is decoded.
"""

from __future__ import annotations

import errno
import math
import os
import re
import stat
import threading
import time as _time  # "time" is a frame's time in this module
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import SourceError

__all__ = [
    "VIDEO_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "DEFAULT_FPS",
    "DEFAULT_MAX_PIXELS",
    "Frame",
    "FrameSelection",
    "FrameSource",
    "VideoFileSource",
    "FrameFolderSource",
    "ImageSource",
    "ArraySource",
    "LiveSource",
    "is_live_input",
    "live_source_name",
    "open_source",
    "list_batch_inputs",
    "input_problem",
    "check_max_pixels",
    "image_to_rgb",
    "natural_key",
    "parse_position",
]

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
DEFAULT_FPS = 25.0
# Largest frame decoded, in pixels (width x height): 50 MP takes 8K video (7680x4320 = 33.2 MP,
# 8192x4320 = 35.4 MP) and the 48-50 MP photos of current phones. Decoding and preprocessing peak at
# about 10 MiB per megapixel for images and 20 MiB for video frames (benchmarks/decode_memory.py), so
# 0.5-1 GiB at the limit (see the README, "Reliability"). Larger frames are refused from their
# header, before decoding (--max-pixels / max_pixels raise or lift the limit).
DEFAULT_MAX_PIXELS = 50_000_000
_TIME_EPS = 1e-6


# ----------------------------------------------------------------------------- input checks

_SPECIAL_FILES = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                  (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def input_problem(path: str | os.PathLike, what: str = "input") -> str | None:
    """Why `path` cannot be read as a video file, image or folder of frames, or None if it can.

    Only regular files and folders pass: reading a named pipe, socket or device would block
    until something writes to it (forever, for a pipe nobody feeds), or consume it. Checked
    with stat(), which never blocks, before anything is opened or created.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return (f"{what} {path} is a symbolic link loop (links that point back to each other): "
                    "it leads to no file")
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            if os.path.islink(path):
                return f"{what} not found: {path} is a symbolic link to {os.readlink(path)}, which does not exist"
            return f"{what} not found: {path}"
        if err.errno in (errno.EACCES, errno.EPERM):
            return f"cannot read {path}: permission denied"
        return f"cannot read {what} {path}: {err.strerror or err}"
    if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
        return None
    kind = next((name for test, name in _SPECIAL_FILES if test(st.st_mode)), "not a regular file")
    return (f"{what} {path} is {kind}, not a regular file or folder: entitysam reads video files, images and "
            "folders of frames (save a pipe's or stream's content to a file first; cameras are read as "
            "/dev/videoN or stream URLs with --online)")


def check_max_pixels(max_pixels: int | None) -> int | None:
    """Validate a frame size limit: a positive integer, or None (no limit)."""
    if max_pixels is None:
        return None
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise SourceError(f"max_pixels must be a positive number of pixels (or None: no limit), got {max_pixels!r}")
    return max_pixels


def _check_frame_size(label: str, frame: str, width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise SourceError(
            f"{label}: {frame} is {width}x{height} = {width * height / 1e6:.1f} megapixels, over the limit of "
            f"{max_pixels / 1e6:g} megapixels: refused before decoding it (a frame this large could exhaust the "
            f"memory); downscale the input, or raise the limit with --max-pixels (max_pixels= in Python)")


# ----------------------------------------------------------------------------- selection


def parse_position(text: str | int | float | None) -> int | float | None:
    """``"12"`` -> frame 12 (int); ``"2.5s"`` -> 2.5 seconds (float); None -> None."""
    if text is None or isinstance(text, (int, float)):
        return text
    s = str(text).strip().lower()
    try:
        if s.endswith("s"):
            value = float(s[:-1])
            if not math.isfinite(value) or value < 0:
                raise ValueError
            return value
        value = int(s)
        if value < 0:
            raise ValueError
        return value
    except ValueError:
        raise SourceError(f"invalid frame position {text!r}: use a frame index (e.g. 12) "
                          f"or seconds with an s (e.g. 2.5s)") from None


@dataclass(frozen=True)
class FrameSelection:
    """Which frames of a source to process (see the module docstring)."""

    start: int | float | None = None
    end: int | float | None = None
    stride: int = 1
    max_frames: int | None = None

    def __post_init__(self):
        for name in ("start", "end"):
            value = parse_position(getattr(self, name))
            if isinstance(value, bool) or (value is not None and (value < 0 or not math.isfinite(value))):
                raise SourceError(f"--{name} must be a non-negative frame index or seconds, got {value!r}")
            object.__setattr__(self, name, value)
        # Both in frames or both in seconds: comparable without knowing the frame rate.
        if (self.start is not None and self.end is not None and type(self.start) is type(self.end)
                and self.end <= self.start):
            raise SourceError(f"--end ({self.end}) must be after --start ({self.start}): the selection would be empty")
        if isinstance(self.stride, bool) or not isinstance(self.stride, int) or self.stride < 1:
            raise SourceError(f"--stride must be a positive integer, got {self.stride!r}")
        if self.max_frames is not None and (not isinstance(self.max_frames, int) or self.max_frames < 1):
            raise SourceError(f"--max-frames must be a positive integer, got {self.max_frames!r}")

    @property
    def is_all(self) -> bool:
        return self.start is None and self.end is None and self.stride == 1 and self.max_frames is None

    def describe(self) -> str:
        parts = []
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"--{name} {value}s" if isinstance(value, float) else f"--{name} {value}")
        if self.stride != 1:
            parts.append(f"--stride {self.stride}")
        if self.max_frames is not None:
            parts.append(f"--max-frames {self.max_frames}")
        return " ".join(parts) or "all frames"

    def _after_start(self, index: int, time: float) -> bool:
        if self.start is None:
            return True
        if isinstance(self.start, float):
            return time >= self.start - _TIME_EPS
        return index >= self.start

    def _before_end(self, index: int, time: float) -> bool:
        if self.end is None:
            return True
        if isinstance(self.end, float):
            return time < self.end - _TIME_EPS
        return index < self.end

    def apply(self, items: Iterable[tuple[int, float, object]]) -> Iterator[tuple[int, float, object]]:
        """Filter (index, time, payload) triples in temporal order; stops reading at the end."""
        first = None
        taken = 0
        for index, time, payload in items:
            if self.max_frames is not None and taken >= self.max_frames:
                return
            if not self._before_end(index, time):
                return
            if not self._after_start(index, time):
                continue
            if first is None:
                first = index
            if (index - first) % self.stride:
                continue
            taken += 1
            yield index, time, payload

    def count(self, total: int, fps: float) -> int:
        """How many of `total` frames at `fps` (constant rate) are selected."""
        return sum(1 for _ in self.apply((i, i / fps, None) for i in range(total)))


# ----------------------------------------------------------------------------- frames


@dataclass
class Frame:
    """One decoded frame. index: position in the source (before selection); name: stem of
    the output files; time: seconds from the start; image: [H, W, 3] uint8 RGB."""

    index: int
    name: str
    time: float
    image: np.ndarray

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]


def natural_key(name: str) -> tuple:
    """Sort key with digit runs compared as numbers: 2.jpg < 10.jpg; ties broken by the name."""
    parts = re.split(r"(\d+)", name.lower())
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)) + (name,)


class FrameSource:
    """Base class. Subclasses implement `_frames()` yielding (index, time, loader) in order."""

    kind = "frames"

    def __init__(self, name: str, fps: float, selection: FrameSelection | None, path: Path | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.name = name
        self.fps = float(fps)
        self.selection = selection or FrameSelection()
        self.path = path
        self.max_pixels = check_max_pixels(max_pixels)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path or self.name)!r}, {self.selection.describe()})"

    # -- to implement
    def _frames(self) -> Iterator[tuple[int, float, object]]:
        raise NotImplementedError

    def _decode(self, index: int, payload: object) -> tuple[str, np.ndarray]:
        raise NotImplementedError

    def total_frames(self) -> int | None:
        """Frames in the whole source (before selection), None if unknown."""
        return None

    # -- common
    def count_hint(self) -> int | None:
        """Number of selected frames (exact for folders, estimated for videos), None if unknown."""
        total = self.total_frames()
        return None if total is None else self.selection.count(total, self.fps)

    @property
    def label(self) -> str:
        return str(self.path) if self.path is not None else self.name

    def __iter__(self) -> Iterator[Frame]:
        first_size = None
        count = 0
        for index, time, payload in self.selection.apply(self._frames()):
            name, image = self._decode(index, payload)
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape[:2]:
                raise SourceError(f"{self.label}: frame {name} is not an RGB uint8 image "
                                  f"(shape {image.shape}, dtype {image.dtype})")
            if first_size is None:
                first_size = image.shape[:2]
            elif image.shape[:2] != first_size:
                raise SourceError(
                    f"{self.label}: frame {name} is {image.shape[1]}x{image.shape[0]} but the first frame is "
                    f"{first_size[1]}x{first_size[0]} (WxH); all frames of a video must have one size")
            count += 1
            yield Frame(index, name, time, image)
        if count == 0:
            raise SourceError(self.empty_message())

    def empty_message(self) -> str:
        total = self.total_frames()
        has = f"it has {total} frames" if total is not None else "it has no decodable frames"
        if self.selection.is_all:
            return f"{self.label}: no frames ({has})"
        return f"{self.label}: the frame selection ({self.selection.describe()}) selects no frames ({has})"


# ----------------------------------------------------------------------------- images


# Pillow refuses images over 2 x Image.MAX_IMAGE_PIXELS in Image.open (DecompressionBombError). Our own
# limit is checked instead; lifting Pillow's for a larger max_pixels changes a global, hence the lock.
_PIL_LIMIT_LOCK = threading.Lock()
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _open_pil(fp) -> Image.Image:
    """Image.open (lazy: reads the header only) without Pillow's decompression-bomb warning or
    error: the caller checks the size against its own limit before decoding."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(fp)
        except Image.DecompressionBombError:
            pass  # reopened below with Pillow's limit lifted, only to read the size in the header
        with _PIL_LIMIT_LOCK:
            before, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                fp.seek(0)
                return Image.open(fp)
            finally:
                Image.MAX_IMAGE_PIXELS = before


def image_to_rgb(im: Image.Image) -> np.ndarray:
    """A PIL image as displayed -> [H, W, 3] uint8 RGB.

    EXIF orientation is applied (ImageOps.exif_transpose), as every viewer does. 16-bit
    grayscale (modes I;16*, and I, which Pillow uses for 16-bit PNGs) is scaled from 0..65535 to
    0..255 (value / 257, rounded) instead of being clipped at 255, which turns it white. Palette,
    grayscale, CMYK and the other modes go through Pillow's conversion; an alpha channel is
    dropped (the colour under it is kept), as the official loader's ``convert("RGB")`` does.
    """
    if _exif_orientation(im) not in (1, None):
        im = ImageOps.exif_transpose(im)
    if im.mode in _SIXTEEN_BIT_MODES:
        gray = np.clip(np.asarray(im, dtype=np.float32) / 257.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # palette transparency: through RGBA, without Pillow's warning
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im)  # (convert("RGB") of an RGB image would only add a copy of the frame)


def _exif_orientation(im: Image.Image) -> int | None:
    try:
        return im.getexif().get(0x0112)  # Orientation
    except Exception:  # noqa: BLE001 - an unreadable EXIF block: shown as stored, as most viewers do
        return None


def _open_regular(path: Path, what: str):
    """Open `path` for reading without blocking, as a regular file only (a file replaced by a
    named pipe after the listing is refused, not waited on)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        raise SourceError(input_problem(path, what) or f"cannot read {what} {path}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SourceError(input_problem(path, what) or f"{what} {path} is not a regular file")
    return os.fdopen(fd, "rb")


def _read_image(path: Path, what: str, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                label: str | None = None) -> np.ndarray:
    with _open_regular(path, what) as fp:
        try:
            im = _open_pil(fp)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise SourceError(f"cannot read {what} {path}: {err or type(err).__name__} "
                              "(corrupt, truncated or not an image)") from None
        with im:
            _check_frame_size(label or str(path), f"{what} {path.name}", im.width, im.height, max_pixels)
            try:
                im.load()  # decode now: a truncated or corrupt file fails here, not later
                return image_to_rgb(im)
            except (OSError, SyntaxError, ValueError) as err:
                raise SourceError(f"cannot read {what} {path}: {err or type(err).__name__} "
                                  "(corrupt, truncated or not an image)") from None


class FrameFolderSource(FrameSource):
    """A folder of frames (jpg, jpeg, png) in natural order."""

    kind = "folder"

    def __init__(self, path: str | os.PathLike, selection: FrameSelection | None = None,
                 fps: float | None = None, files: Sequence[Path] | None = None, name: str | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS):
        path = Path(path)
        if files is None:
            files, others = _list_frames(path)
            if not files:
                raise SourceError(_no_frames_message(path, others))
        self.files = list(files)
        stems: dict[str, Path] = {}
        for f in self.files:
            if f.stem in stems:
                raise SourceError(f"{path}: frames {stems[f.stem].name} and {f.name} have the same name "
                                  f"{f.stem!r}; output files are named by it")
            stems[f.stem] = f
        super().__init__(name or path.resolve().name, fps or DEFAULT_FPS, selection, path, max_pixels)
        self._check_header(self.files[0])  # the first frame's size, read from its header: fail before any work

    def _check_header(self, f: Path) -> None:
        with _open_regular(f, "frame") as fp:
            try:
                with _open_pil(fp) as im:
                    _check_frame_size(self.label, f"frame {f.name}", im.width, im.height, self.max_pixels)
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
                raise SourceError(f"cannot read frame {f}: {err or type(err).__name__} "
                                  "(corrupt, truncated or not an image)") from None

    def total_frames(self) -> int:
        return len(self.files)

    def _frames(self):
        for i, f in enumerate(self.files):
            yield i, i / self.fps, f

    def _decode(self, index: int, payload: object) -> tuple[str, np.ndarray]:
        f = Path(payload)  # type: ignore[arg-type]
        return f.stem, _read_image(f, "frame", self.max_pixels, self.label)


class ImageSource(FrameFolderSource):
    """A single image: a one-frame video."""

    kind = "image"

    def __init__(self, path: str | os.PathLike, selection: FrameSelection | None = None, fps: float | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS):
        path = Path(path)
        super().__init__(path, selection, fps, files=[path], name=path.stem, max_pixels=max_pixels)


def _list_folder(folder: Path) -> list[Path]:
    """The visible entries of a folder (hidden files, ``.name``, are ignored)."""
    try:
        return [p for p in folder.iterdir() if not p.name.startswith(".")]
    except OSError as err:
        raise SourceError(input_problem(folder, "folder") or f"cannot list folder {folder}: "
                          f"{err.strerror or err}") from None


def _list_frames(folder: Path) -> tuple[list[Path], list[Path]]:
    """(frames in natural order, the other visible entries). An entry with an image extension
    that is not a regular file (a named pipe, a broken link, ...) is an error, not a skipped
    frame: skipping it would silently renumber the frames after it. Folders are not frames."""
    frames, others = [], []
    for p in _list_folder(folder):
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.is_dir():
            problem = input_problem(p, "frame")
            if problem:
                raise SourceError(f"{folder}: {problem}")
            frames.append(p)
        else:
            others.append(p)
    return sorted(frames, key=lambda p: natural_key(p.name)), others


def _names(paths: Sequence[Path], limit: int = 5) -> str:
    names = sorted((p.name + ("/" if p.is_dir() else "") for p in paths), key=natural_key)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _no_frames_message(folder: Path, others: Sequence[Path]) -> str:
    supported = " ".join(IMAGE_EXTENSIONS)
    if not others:
        return f"{folder}: empty folder, no frames ({supported})"
    hint = ""
    if any(p.suffix.lower() in VIDEO_EXTENSIONS or p.is_dir() for p in others):
        hint = "; to segment each video or sub-folder in it, use --batch " + str(folder)
    return (f"{folder}: no frames of the supported types ({supported}) in this folder; it holds "
            f"{len(others)} other entr{'y' if len(others) == 1 else 'ies'}: {_names(others)}{hint}")


# ----------------------------------------------------------------------------- videos


def _av():
    try:
        import av  # noqa: PLC0415 - optional dependency
    except ImportError as err:  # pragma: no cover - depends on the installation
        raise SourceError("reading video files needs PyAV: pip install 'entitysam[video]'") from err
    return av


class VideoFileSource(FrameSource):
    """The first video stream of a file, decoded with PyAV."""

    kind = "video"

    def __init__(self, path: str | os.PathLike, selection: FrameSelection | None = None, fps: float | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS):
        path = Path(path)
        av = _av()
        _check_regular_file(path, "video")
        if path.stat().st_size == 0:
            raise SourceError(f"{path}: empty file (0 bytes), not a video")
        try:
            with av.open(str(path)) as container:
                if not container.streams.video:
                    raise SourceError(f"{path}: no video stream in the file")
                stream = container.streams.video[0]
                rate = stream.average_rate or stream.guessed_rate or stream.base_rate
                self._frames_hint = int(stream.frames or 0)
                self._frames_exact = self._frames_hint > 0  # counted in the container's index
                duration = None
                if stream.duration is not None and stream.time_base is not None:
                    duration = float(stream.duration * stream.time_base)
                elif container.duration:
                    duration = container.duration / 1_000_000
                # Stored size; frames come out rotated by the display matrix (width and height
                # swapped for a quarter turn), known from the first decoded frame.
                self.width, self.height = stream.codec_context.width, stream.codec_context.height
                _check_frame_size(str(path), "its video stream", self.width, self.height, check_max_pixels(max_pixels))
        except SourceError:
            raise
        except av.error.FFmpegError as err:
            raise SourceError(f"cannot read video {path}: {_av_message(err)} (not a video file, an unsupported "
                              "container or codec, or a truncated file)") from None
        native_fps = float(rate) if rate else None
        if not self._frames_hint and duration and native_fps:
            self._frames_hint = int(round(duration * native_fps))
        super().__init__(path.stem, fps or native_fps or DEFAULT_FPS, selection, path, max_pixels)
        self.native_fps = native_fps

    def total_frames(self) -> int | None:
        return self._frames_hint or None

    def _frames(self):
        av = _av()
        index = -1
        _check_regular_file(self.path, "video")  # again: the file may have been replaced since it was opened
        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                t0 = None
                for frame in container.decode(stream):
                    index += 1
                    t = frame.time
                    if t is None:
                        t = index / self.fps
                    else:
                        t0 = t if t0 is None else t0
                        t = t - t0
                    yield index, t, frame
        except av.error.FFmpegError as err:
            raise SourceError(f"cannot decode video {self.path}: frame {index + 1:06d} is corrupt or missing "
                              f"({_av_message(err)}); {_frames_before(index)}") from None
        # Reached the end of the stream: a file cut short decodes fewer frames than announced.
        decoded, expected = index + 1, self._frames_hint
        tolerance = 1 if self._frames_exact else max(2, expected // 20)
        if expected and decoded < expected - tolerance:
            raise SourceError(f"{self.path}: truncated or corrupt video: its header announces {expected} frames "
                              f"but only {decoded} could be decoded (frame {decoded:06d} is the first missing one; "
                              f"{_frames_before(index)})")

    def _decode(self, index: int, payload: object) -> tuple[str, np.ndarray]:
        name = f"{index:06d}"
        if getattr(payload, "is_corrupt", False):  # the decoder found damaged data and concealed it
            raise SourceError(f"cannot decode video {self.path}: frame {name} is corrupt (the decoder reports "
                              f"damaged data in it); {_frames_before(index - 1)}")
        return name, _video_frame_to_rgb(payload, self.label, name, self.max_pixels, _stream_display(self, payload))


def _frames_before(last_good: int) -> str:
    if last_good < 0:
        return "no frame before it could be decoded"
    return f"the frames before it decode (--end {last_good + 1} stops before it)"


def _check_regular_file(path: Path, what: str) -> None:
    problem = input_problem(path, what)
    if problem is None and path.is_dir():
        problem = f"{what} {path} is a folder"
    if problem:
        raise SourceError(problem)


def _display_transform(frame) -> tuple[bool, bool, bool]:
    """(transpose, flip rows, flip columns) turning a decoded frame as stored into the frame as
    players show it, from its display matrix (a quarter turn for portrait phone videos).

    The matrix maps a stored pixel (x, y) (y down) to the displayed (a x + c y, b x + d y); with
    ``set_display_rotation(90)`` (ffprobe: rotation=90) that is a quarter turn counterclockwise,
    ``np.rot90(image, 1)``, which is what ffmpeg shows. Angles that are not multiples of 90
    degrees are taken to the nearest quarter turn.
    """
    data = None
    for side in getattr(frame, "side_data", ()) or ():
        if getattr(getattr(side, "type", None), "name", "") == "DISPLAYMATRIX":
            data = bytes(side)
            break
    if data is None or len(data) < 36:
        return False, False, False
    m = np.frombuffer(data[:36], dtype=np.int32).astype(np.float64)
    a, b, c, d = m[0], m[1], m[3], m[4]
    if abs(a) + abs(d) >= abs(b) + abs(c):  # no quarter turn: x' = a x, y' = d y
        return False, d < 0, a < 0
    return True, b < 0, c < 0  # transposed: x' = c y, y' = b x


def _stream_display(source: object, frame) -> tuple[bool, bool, bool]:
    """`_display_transform` of a video source's stream, read from the first frame it decodes and
    kept: PyAV leaks the side data it reads (measured: RSS +30 MiB per 300 frames when read from
    every frame), and a stream's display matrix does not change."""
    transform = source.__dict__.get("_display")
    if transform is None:
        transform = source.__dict__["_display"] = _display_transform(frame)
    return transform


def _video_frame_to_rgb(frame, label: str, name: str, max_pixels: int | None,
                        display: tuple[bool, bool, bool]) -> np.ndarray:
    """A decoded PyAV frame -> [H, W, 3] uint8 RGB as played (`display`: see
    `_display_transform`); its size is checked against max_pixels before the RGB conversion."""
    _check_frame_size(label, f"frame {name}", frame.width, frame.height, max_pixels)
    image = frame.to_ndarray(format="rgb24")
    transpose, flip_rows, flip_cols = display
    if not (transpose or flip_rows or flip_cols):
        return image
    if transpose:
        image = image.transpose(1, 0, 2)
    if flip_rows:
        image = image[::-1]
    if flip_cols:
        image = image[:, ::-1]
    return np.ascontiguousarray(image)


def _av_message(err: Exception) -> str:
    text = getattr(err, "strerror", None) or str(err)
    return text.rstrip(": ")


def _stream_cause(err: Exception, seconds: float) -> str:
    """FFmpeg's error on a network stream or device, in words a user can act on."""
    av = _av()
    if isinstance(err, av.error.ExitError):  # "Immediate exit requested": our timeout interrupted FFmpeg
        return f"no answer within {seconds:g} s (timed out)"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused (nothing listens at that address and port)"
    code = getattr(err, "errno", None)
    if code == errno.EIO:
        return "input/output error (the connection failed or was closed before a stream was received)"
    if code == errno.ETIMEDOUT:
        return f"connection timed out (no answer within {seconds:g} s)"
    if isinstance(err, av.error.InvalidDataError):
        return "what the server sent is not a video stream FFmpeg can read (invalid data)"
    return _av_message(err)


# ----------------------------------------------------------------------------- arrays


class ArraySource(FrameSource):
    """Frames already in memory: a [n, H, W, 3] uint8 array or a sequence of arrays / PIL images."""

    kind = "array"

    def __init__(self, frames: Sequence[np.ndarray | Image.Image] | np.ndarray, name: str = "video",
                 selection: FrameSelection | None = None, fps: float | None = None):
        if len(frames) == 0:
            raise SourceError(f"{name}: no frames (empty sequence)")
        self.frames = frames
        super().__init__(name, fps or DEFAULT_FPS, selection)

    def total_frames(self) -> int:
        return len(self.frames)

    def _frames(self):
        for i in range(len(self.frames)):
            yield i, i / self.fps, i

    def _decode(self, index: int, payload: object) -> tuple[str, np.ndarray]:
        item = self.frames[index]
        if isinstance(item, Image.Image):
            item = image_to_rgb(item)  # as displayed: EXIF orientation, 16-bit range
        return f"{index:06d}", np.ascontiguousarray(item)


# ----------------------------------------------------------------------------- live

# URL schemes FFmpeg reads as network streams; anything with one of these is a live source.
LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "rtp", "srt", "udp", "tcp", "http", "https", "mmsh")
_DEVICE_RE = re.compile(r"^/dev/video\d+$")
# (open, read) timeouts in seconds: a stalled stream ends with an error instead of hanging forever.
LIVE_TIMEOUT = (15.0, 30.0)


def is_live_input(video: object) -> bool:
    """Whether `video` names a live source: a stream URL (``rtsp://``, ``http://``, ...) or a
    v4l2 video device (``/dev/video0``)."""
    if not isinstance(video, (str, os.PathLike)):
        return False
    text = os.fspath(video)
    if isinstance(text, bytes):
        return False
    scheme, sep, _ = text.partition("://")
    if sep and scheme.lower() in LIVE_SCHEMES:
        return True
    return _is_video_device(text)


def _is_video_device(text: str) -> bool:
    """/dev/videoN, or a link to one (/dev/v4l/by-id/...)."""
    if _DEVICE_RE.match(text):
        return True
    return text.startswith("/dev/") and bool(_DEVICE_RE.match(os.path.realpath(text)))


def live_source_name(url: str) -> str:
    """Output folder name of a live source: the last path component without its extension
    (``rtsp://cam/live/main.sdp`` -> ``main``, ``/dev/video0`` -> ``video0``), else the host."""
    rest = url.partition("://")[2] if "://" in url else url
    rest = rest.split("?", 1)[0].split("#", 1)[0]
    host, _, path = rest.partition("/")
    stem = Path(path.rstrip("/")).stem if path.strip("/") else ""
    if not stem and "://" not in url:
        stem = Path(url).name
    name = stem or host.rsplit("@", 1)[-1].replace(":", "_") or "stream"
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "stream"


class LiveSource(FrameSource):
    """A live stream or device, decoded with PyAV as the frames arrive.

    The stream is opened (and so checked) when the source is created; the first iteration
    reads from that connection, a later one reconnects and starts from whatever the stream
    sends then. Nothing is known of its length (``total_frames()`` is None); decoding stops
    at the end of the stream, which for a camera means never (stop it from the consumer).
    """

    kind = "live"

    def __init__(self, url: str, selection: FrameSelection | None = None, fps: float | None = None,
                 name: str | None = None, options: dict[str, str] | None = None,
                 timeout: tuple[float, float] = LIVE_TIMEOUT, max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.url = str(url)
        self._av = _av()
        self._format = "v4l2" if _is_video_device(self.url) else None
        opts = dict(options or {})
        if self.url.lower().startswith(("rtsp://", "rtsps://")):
            opts.setdefault("rtsp_transport", "tcp")  # UDP loses packets, hence frames, on busy networks
        self._options = opts
        self._timeout = timeout
        container = self._open()
        try:
            if not container.streams.video:
                raise SourceError(f"{self.url}: no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            self.width, self.height = stream.codec_context.width, stream.codec_context.height
            _check_frame_size(self.url, "its video stream", self.width, self.height, check_max_pixels(max_pixels))
        except BaseException:
            container.close()
            raise
        self._container = container  # reused by the first iteration: no second connection
        native_fps = float(rate) if rate else None
        super().__init__(name or live_source_name(self.url), fps or native_fps or DEFAULT_FPS, selection,
                         max_pixels=max_pixels)
        self.native_fps = native_fps

    @property
    def label(self) -> str:
        return self.url

    def _open(self):
        av = self._av
        what = "video device" if self._format == "v4l2" else "stream"
        try:
            return av.open(self.url, format=self._format, options=self._options, timeout=self._timeout)
        except av.error.FFmpegError as err:
            hint = ("check that the camera is connected and not in use by another program" if what == "video device"
                    else "check the address, and that the camera or server is running and reachable from this machine")
            raise SourceError(f"cannot open {what} {self.url}: {_stream_cause(err, self._timeout[0])}; the {what} "
                              f"could not be opened ({hint})") from None

    def _frames(self):
        av = self._av
        container, self._container = self._container, None
        if container is None:
            container = self._open()
        index = -1
        try:
            with container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                t0 = wall0 = None
                for frame in container.decode(stream):
                    index += 1
                    t = frame.time
                    if t is None:  # no timestamps (some devices): wall-clock time since the first frame
                        wall0 = _time.monotonic() if wall0 is None else wall0
                        t = _time.monotonic() - wall0
                    else:
                        t0 = t if t0 is None else t0
                        t = t - t0
                    yield index, t, frame
        except av.error.FFmpegError as err:
            after = f"after frame {index}" if index >= 0 else "before its first frame"
            raise SourceError(f"the stream {self.url} could not be read {after}: "
                              f"{_stream_cause(err, self._timeout[1])}") from None

    def _decode(self, index: int, payload: object) -> tuple[str, np.ndarray]:
        name = f"{index:06d}"
        return name, _video_frame_to_rgb(payload, self.url, name, self.max_pixels, _stream_display(self, payload))

    def empty_message(self) -> str:
        return f"{self.url}: the stream ended before sending a frame" + (
            "" if self.selection.is_all else f" selected by {self.selection.describe()}")


# ----------------------------------------------------------------------------- opening


def open_source(video: str | os.PathLike | FrameSource | Sequence | np.ndarray,
                selection: FrameSelection | None = None, fps: float | None = None,
                name: str | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> FrameSource:
    """A FrameSource for a path (video file, folder of frames, image), a live stream URL or
    video device (see :func:`is_live_input`), frames in memory, or a source (returned as is).
    max_pixels: largest frame (width x height) decoded, None for no limit (frames in memory are
    not checked: they are already decoded). Raises SourceError naming the input and the cause."""
    check_max_pixels(max_pixels)
    if isinstance(video, FrameSource):
        if selection is not None and not selection.is_all and selection != video.selection:
            raise SourceError(f"{video!r} already has its frame selection; select frames when creating it")
        return video
    if isinstance(video, np.ndarray) or (isinstance(video, Sequence) and not isinstance(video, (str, bytes))):
        if isinstance(video, np.ndarray) and (video.ndim != 4 or video.shape[-1] != 3):
            raise SourceError(f"frames array must be [n, H, W, 3] uint8, got shape {video.shape}")
        return ArraySource(video, name or "video", selection, fps)
    if is_live_input(video):
        return LiveSource(os.fspath(video), selection, fps, name=name or None, max_pixels=max_pixels)
    path = Path(video)
    problem = input_problem(path)  # before anything opens it: a named pipe would block forever
    if problem:
        raise SourceError(problem)
    if path.is_dir():
        source: FrameSource = FrameFolderSource(path, selection, fps, max_pixels=max_pixels)
    else:
        ext = path.suffix.lower()
        if ext in VIDEO_EXTENSIONS:
            source = VideoFileSource(path, selection, fps, max_pixels=max_pixels)
        elif ext in IMAGE_EXTENSIONS:
            source = ImageSource(path, selection, fps, max_pixels=max_pixels)
        else:
            raise SourceError(f"unsupported input {path}: expected a video "
                              f"({' '.join(VIDEO_EXTENSIONS)}), an image ({' '.join(IMAGE_EXTENSIONS)}) "
                              "or a folder of frames")
        if not os.access(path, os.R_OK):
            raise SourceError(f"cannot read {path}: permission denied")
    if name:
        source.name = name
    return source


def list_batch_inputs(folder: str | os.PathLike) -> list[Path]:
    """The videos of a batch folder: its video files and sub-folders (folders of frames),
    in natural order. Raises SourceError if there are none."""
    folder = Path(folder)
    problem = input_problem(folder, "--batch folder")
    if problem:
        raise SourceError(problem)
    if not folder.is_dir():
        raise SourceError(f"--batch expects a folder of videos: {folder} is not a folder")
    entries = _list_folder(folder)
    # Every entry named like a video is listed, whatever it is: opening it then refuses a named
    # pipe, a broken link or a link loop with its own message instead of skipping it silently.
    videos = [p for p in entries if p.suffix.lower() in VIDEO_EXTENSIONS or p.is_dir()]
    if not videos:
        if any(p.suffix.lower() in IMAGE_EXTENSIONS for p in entries):
            raise SourceError(f"{folder} holds frames, not videos: drop --batch to segment it as one video")
        found = f"; it holds {_names(entries)}" if entries else "; it is empty"
        raise SourceError(f"{folder}: no videos ({' '.join(VIDEO_EXTENSIONS)}) or folders of frames in it{found}")
    return sorted(videos, key=lambda p: natural_key(p.name))
