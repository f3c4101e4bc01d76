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
"""

from __future__ import annotations

import math
import os
import re
import time as _time  # "time" is a frame's time in this module
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import SourceError

__all__ = [
    "VIDEO_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "DEFAULT_FPS",
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
    "natural_key",
    "parse_position",
]

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
DEFAULT_FPS = 25.0
_TIME_EPS = 1e-6


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

    def __init__(self, name: str, fps: float, selection: FrameSelection | None, path: Path | None = None):
        self.name = name
        self.fps = float(fps)
        self.selection = selection or FrameSelection()
        self.path = path

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
            raise SourceError(self._empty_message())

    def _empty_message(self) -> str:
        total = self.total_frames()
        has = f"it has {total} frames" if total is not None else "it has no decodable frames"
        if self.selection.is_all:
            return f"{self.label}: no frames ({has})"
        return f"{self.label}: the frame selection ({self.selection.describe()}) selects no frames ({has})"


# ----------------------------------------------------------------------------- images


def _read_image(path: Path, what: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated or corrupt file fails here, not later
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise SourceError(f"{what} not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise SourceError(f"cannot read {what} {path}: {err or type(err).__name__} "
                          "(corrupt, truncated or not an image)") from None


class FrameFolderSource(FrameSource):
    """A folder of frames (jpg, jpeg, png) in natural order."""

    kind = "folder"

    def __init__(self, path: str | os.PathLike, selection: FrameSelection | None = None,
                 fps: float | None = None, files: Sequence[Path] | None = None, name: str | None = None):
        path = Path(path)
        if files is None:
            files = _list_frames(path)
            if not files:
                raise SourceError(f"{path}: empty folder, no frames ({', '.join(IMAGE_EXTENSIONS)})")
        self.files = list(files)
        stems: dict[str, Path] = {}
        for f in self.files:
            if f.stem in stems:
                raise SourceError(f"{path}: frames {stems[f.stem].name} and {f.name} have the same name "
                                  f"{f.stem!r}; output files are named by it")
            stems[f.stem] = f
        super().__init__(name or path.resolve().name, fps or DEFAULT_FPS, selection, path)

    def total_frames(self) -> int:
        return len(self.files)

    def _frames(self):
        for i, f in enumerate(self.files):
            yield i, i / self.fps, f

    def _decode(self, index: int, payload: object) -> tuple[str, np.ndarray]:
        f = Path(payload)  # type: ignore[arg-type]
        return f.stem, _read_image(f, "frame")


class ImageSource(FrameFolderSource):
    """A single image: a one-frame video."""

    kind = "image"

    def __init__(self, path: str | os.PathLike, selection: FrameSelection | None = None, fps: float | None = None):
        path = Path(path)
        super().__init__(path, selection, fps, files=[path], name=path.stem)


def _list_frames(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir()
             if not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    return sorted(files, key=lambda p: natural_key(p.name))


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

    def __init__(self, path: str | os.PathLike, selection: FrameSelection | None = None, fps: float | None = None):
        path = Path(path)
        av = _av()
        if path.is_file() and path.stat().st_size == 0:
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
                self.width, self.height = stream.codec_context.width, stream.codec_context.height
        except SourceError:
            raise
        except av.error.FFmpegError as err:
            raise SourceError(f"cannot read video {path}: {_av_message(err)} (not a video file, an unsupported "
                              "container or codec, or a truncated file)") from None
        native_fps = float(rate) if rate else None
        if not self._frames_hint and duration and native_fps:
            self._frames_hint = int(round(duration * native_fps))
        super().__init__(path.stem, fps or native_fps or DEFAULT_FPS, selection, path)
        self.native_fps = native_fps

    def total_frames(self) -> int | None:
        return self._frames_hint or None

    def _frames(self):
        av = _av()
        index = -1
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
            raise SourceError(f"cannot decode video {self.path} after frame {index}: {_av_message(err)} "
                              "(truncated or corrupt file?)") from None
        # Reached the end of the stream: a file cut short decodes fewer frames than announced.
        decoded, expected = index + 1, self._frames_hint
        tolerance = 1 if self._frames_exact else max(2, expected // 20)
        if expected and decoded < expected - tolerance:
            raise SourceError(f"{self.path}: truncated or corrupt video: its header announces {expected} frames "
                              f"but only {decoded} could be decoded")

    def _decode(self, index: int, payload: object) -> tuple[str, np.ndarray]:
        return f"{index:06d}", payload.to_ndarray(format="rgb24")  # type: ignore[attr-defined]


def _av_message(err: Exception) -> str:
    text = getattr(err, "strerror", None) or str(err)
    return text.rstrip(": ")


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
            item = np.asarray(item.convert("RGB"))
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
    return bool(_DEVICE_RE.match(text))


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
                 timeout: tuple[float, float] = LIVE_TIMEOUT):
        self.url = str(url)
        self._av = _av()
        self._format = "v4l2" if _DEVICE_RE.match(self.url) else None
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
        except BaseException:
            container.close()
            raise
        self._container = container  # reused by the first iteration: no second connection
        native_fps = float(rate) if rate else None
        super().__init__(name or live_source_name(self.url), fps or native_fps or DEFAULT_FPS, selection)
        self.native_fps = native_fps

    @property
    def label(self) -> str:
        return self.url

    def _open(self):
        av = self._av
        try:
            return av.open(self.url, format=self._format, options=self._options, timeout=self._timeout)
        except av.error.FFmpegError as err:
            raise SourceError(f"cannot open live source {self.url}: {_av_message(err)}") from None

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
            raise SourceError(f"live source {self.url} failed after frame {index}: {_av_message(err)}") from None

    def _decode(self, index: int, payload: object) -> tuple[str, np.ndarray]:
        return f"{index:06d}", payload.to_ndarray(format="rgb24")  # type: ignore[attr-defined]

    def _empty_message(self) -> str:
        return f"{self.url}: the stream ended before sending a frame" + (
            "" if self.selection.is_all else f" selected by {self.selection.describe()}")


# ----------------------------------------------------------------------------- opening


def open_source(video: str | os.PathLike | FrameSource | Sequence | np.ndarray,
                selection: FrameSelection | None = None, fps: float | None = None,
                name: str | None = None) -> FrameSource:
    """A FrameSource for a path (video file, folder of frames, image), a live stream URL or
    video device (see :func:`is_live_input`), frames in memory, or a source (returned as is).
    Raises SourceError naming the input and the cause."""
    if isinstance(video, FrameSource):
        if selection is not None and not selection.is_all and selection != video.selection:
            raise SourceError(f"{video!r} already has its frame selection; select frames when creating it")
        return video
    if isinstance(video, np.ndarray) or (isinstance(video, Sequence) and not isinstance(video, (str, bytes))):
        if isinstance(video, np.ndarray) and (video.ndim != 4 or video.shape[-1] != 3):
            raise SourceError(f"frames array must be [n, H, W, 3] uint8, got shape {video.shape}")
        return ArraySource(video, name or "video", selection, fps)
    if is_live_input(video):
        return LiveSource(os.fspath(video), selection, fps, name=name or None)
    path = Path(video)
    if not path.exists():
        raise SourceError(f"input not found: {path}")
    if path.is_dir():
        source: FrameSource = FrameFolderSource(path, selection, fps)
    else:
        ext = path.suffix.lower()
        if ext in VIDEO_EXTENSIONS:
            source = VideoFileSource(path, selection, fps)
        elif ext in IMAGE_EXTENSIONS:
            source = ImageSource(path, selection, fps)
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
    if not folder.is_dir():
        raise SourceError(f"--batch expects a folder of videos: {folder} is not a folder")
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    videos = [p for p in entries if (p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS) or p.is_dir()]
    if not videos:
        if any(p.suffix.lower() in IMAGE_EXTENSIONS for p in entries):
            raise SourceError(f"{folder} holds frames, not videos: drop --batch to segment it as one video")
        raise SourceError(f"{folder}: no videos ({' '.join(VIDEO_EXTENSIONS)}) or folders of frames in it")
    return sorted(videos, key=lambda p: natural_key(p.name))
