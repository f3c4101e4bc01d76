"""Frame selection and the frame-source base class, with the input checks every source shares.

See the package docstring (:mod:`entitysam.io.sources`) for what each source reads and how frames
are selected.
"""

from __future__ import annotations

import errno
import math
import os
import re
import stat
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import numpy as np

from ...argtypes import as_int, frame_problem
from ...errors import Remedy, SourceError
from ...regular_file import open_regular

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mts", ".m2ts", ".mpg", ".mpeg")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".tif", ".tiff")
# Files that are often animations, read as one input (a still one is one frame), never as the
# frames of a folder.
ANIMATION_EXTENSIONS = (".gif", ".webp")
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
            if any(c in path.name for c in "*?["):  # a shell leaves a pattern that matches nothing as it is
                return (f"{what} not found: {path} (a pattern that matches no file: the shell passes it on "
                        "unexpanded when nothing matches; give a folder of frames as the input instead)")
            if str(path) == "-" and what == "input":  # the usual name of standard input, which is not read
                return (f"{what} not found: - (standard input is not read: a video is decoded with seeks, "
                        "so save it to a file first, or give a live stream's URL)")
            return f"{what} not found: {path}"
        if err.errno in (errno.EACCES, errno.EPERM):
            return f"cannot read {path}: permission denied"
        return f"cannot read {what} {path}: {err.strerror or err}"
    if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
        return None
    kind = next((name for test, name in _SPECIAL_FILES if test(st.st_mode)), "not a regular file")
    return (f"{what} {path} is {kind}, not a regular file or folder: entitysam reads video files, images and "
            "folders of frames (save a pipe's or stream's content to a file first; cameras are read as "
            "/dev/videoN or stream URLs in online mode)")


def open_input_file(path: Path, what: str = "input") -> BinaryIO:
    """The input file `path` open for reading, once, without waiting (entitysam.regular_file): a file
    replaced by a named pipe after it was checked or listed is refused, not waited on. Every read
    of the input goes through what this opened (PyAV's too), never through the path again."""
    try:
        f = open_regular(path)
    except OSError:
        raise SourceError(input_problem(path, what) or f"cannot read {what} {path}") from None
    if f is None:
        raise SourceError(input_problem(path, what) or f"{what} {path} is not a regular file")
    return f


def check_max_pixels(max_pixels: int | None) -> int | None:
    """Validate a frame size limit: a positive integer, or None (no limit)."""
    if max_pixels is None:
        return None
    if as_int(max_pixels) is None or max_pixels < 1:
        raise SourceError(f"max_pixels must be a positive number of pixels (or None: no limit), got {max_pixels!r}")
    return as_int(max_pixels)


def _pixels(n: int, spec: str = ".1f") -> str:
    """A pixel count in words: megapixels from 0.1 (formatted by `spec`), else pixels (a limit of 1
    was '1e-06 megapixels', a 64x48 frame '0.0 megapixels')."""
    return f"{n / 1e6:{spec}} megapixels" if n >= 100_000 else f"{n} pixels"


def check_frame_size(label: str, frame: str, width: int, height: int, max_pixels: int | None,
                     when: str = "before decoding it") -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise SourceError(
            f"{label}: {frame} is {width}x{height} = {_pixels(width * height)}, over the limit of "
            f"{_pixels(max_pixels, 'g')}: refused {when} (a frame this large could exhaust the "
            f"memory); downscale the input, or raise the limit",
            Remedy("max_pixels", metavar="N"))


def frame_out_of_memory(label: str, frame: str, width: int, height: int) -> SourceError:
    """The error of a frame that could not be decoded for want of memory (a header declaring a
    huge size under --max-pixels none): one line naming the file, with --max-pixels as the remedy."""
    return SourceError(
        f"{label}: {frame} is {width}x{height} = {width * height / 1e6:.1f} megapixels: out of memory while "
        "decoding it; downscale the input, or refuse frames this large before decoding them",
        Remedy("max_pixels", metavar="N"))


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
                raise SourceError(f"{name} must be a non-negative frame index or seconds, got {value!r}")
            object.__setattr__(self, name, value)
        # Both in frames or both in seconds: comparable without knowing the frame rate.
        if (self.start is not None and self.end is not None and type(self.start) is type(self.end)
                and self.end <= self.start):
            raise SourceError(f"end ({self.end}) must be after start ({self.start}): the selection would be empty")
        # An end of 0 (frame or seconds) stops before frame 0 whatever the start: the same mistake
        # as end <= start, caught here rather than as a failed video after the model is loaded.
        if self.end is not None and self.end <= 0:
            raise SourceError(f"end ({self.end}) must be after the first frame (frame 0, 0s): "
                              "the selection would be empty")
        for name in ("stride", "max_frames"):
            value = getattr(self, name)
            if value is None and name == "max_frames":
                continue
            if as_int(value) is None or value < 1:  # max_frames=True is no count
                raise SourceError(f"{name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, as_int(value))  # a numpy integer as a plain int (JSON, describe)

    @property
    def is_all(self) -> bool:
        return self.start is None and self.end is None and self.stride == 1 and self.max_frames is None

    def describe(self) -> str:
        parts = []
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={value}s" if isinstance(value, float) else f"{name}={value}")
        if self.stride != 1:
            parts.append(f"stride={self.stride}")
        if self.max_frames is not None:
            parts.append(f"max_frames={self.max_frames}")
        return ", ".join(parts) or "all frames"

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
        """How many of `total` frames at `fps` (constant rate) are selected. Computed from the
        first selected frame and the first one past the end, each found by bisection, not by
        running `apply` over every frame: a video header may declare billions of frames."""
        first = _first_index(total, lambda i: self._after_start(i, i / fps))
        stop = _first_index(total, lambda i: not self._before_end(i, i / fps))
        selected = len(range(first, stop, self.stride))
        return selected if self.max_frames is None else min(selected, self.max_frames)


def _first_index(total: int, test) -> int:
    """The smallest index in [0, total) for which `test` holds, else `total` (at least 0); `test`
    is False, then True from some index on (times grow with the index at a constant rate)."""
    lo, hi = 0, max(total, 0)
    while lo < hi:
        mid = (lo + hi) // 2
        if test(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


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
    """Sort key with digit runs compared as numbers: 2.jpg < 10.jpg; ties broken by the name
    (kept apart from the parts: "c" and "c2" compare their parts, never a name with a number)."""
    parts = re.split(r"(\d+)", name.lower())
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name


class FrameSource:
    """Base class. Subclasses implement `_frames()` yielding (index, time, loader) in order."""

    kind = "frames"
    # Width / height of a pixel of the frames as decoded: 1 but for anamorphic video (PAL DV is
    # 720x576 with 16:15 or 64:45 pixels), which players stretch to show; the overlay video carries it.
    sample_aspect_ratio = Fraction(1)
    # True where `fps` is only FFmpeg's guess at opening (a live stream without --fps): its frames'
    # own times then give the rate, which a stream without a declared rate gets wrong (see live.py).
    fps_guessed = False

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
            problem = frame_problem(image.shape, image.dtype)
            if problem:
                raise SourceError(f"{self.label}: frame {name} is {problem}")
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
        has = f"it has {total} frame{'s' if total != 1 else ''}" if total is not None else "it has no decodable frames"
        if self.selection.is_all:
            return f"{self.label}: no frames ({has})"
        return f"{self.label}: the frame selection ({self.selection.describe()}) selects no frames ({has})"
