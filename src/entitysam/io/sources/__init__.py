"""Frame sources: video files, folders of frames, single images, in-memory frames, live streams.

Modules: ``selection`` (frame selection, the base class, input checks), ``images`` (images,
folders of frames, arrays), ``pixels`` (a decoded image as displayed RGB), ``video_file`` (PyAV
files), ``live`` (streams and devices), ``clock`` (frame times that always increase).

Every source is re-iterable and lazy: iterating decodes one frame at a time (a video file is
reopened for each pass), so no more than one decoded frame is held by the source. A source
knows its name (the output folder name), its frame rate and each frame's name (the stem of the
output files) before and while decoding.

* Video files (``.mp4 .m4v .mov .mkv .webm .avi .ts .mts .m2ts .mpg .mpeg``) are decoded with PyAV (the first video stream that is
  not a cover picture).
  Frame ``i`` is named ``f"{i:06d}"``; its time is its presentation timestamp relative to the
  first frame's, made to increase as a live stream's (:class:`clock.FrameClock`: files joined
  into one restart their timestamps).
* Folders of frames (``.jpg .jpeg .jpe .jfif .png .tif .tiff``, any case; hidden files are ignored) are read in
  natural order: ``2.jpg`` before ``10.jpg``. For zero-padded names of one width (VIPSeg's
  ``00000.jpg`` ...) this is the same as the lexicographic order the official evaluation uses
  (``sorted(os.listdir(...))``); for unpadded names the official order would be wrong
  (``1, 10, 2``) and natural order is the temporal one. A frame is named by its file name
  without the extension. Frame ``i`` is at ``i / fps`` seconds (``fps`` defaults to 25).
* A single image is a one-frame video; an image file holding several frames (an animated PNG,
  GIF or WebP, a multi-page TIFF) is a video of them (:class:`AnimatedImageSource`).
* Live sources (:class:`LiveSource`, online mode only): URLs PyAV opens (``rtsp://``,
  ``http://``, ``udp://``, ...) and video devices (``/dev/video0``, read with v4l2). They are read
  once, as they come: frame ``i`` is the ``i``-th frame decoded, named ``f"{i:06d}"``, its time
  is its timestamp relative to the first frame (wall-clock time when the stream has none), made to
  increase: a timestamp that goes back or repeats (a restarted clock) is one frame period after the frame before.

Frame selection (:class:`FrameSelection`): ``start`` (inclusive) and ``end`` (exclusive) are
frame indices (``int``) or seconds (``float``, or strings like ``"2.5s"`` via
:func:`parse_position`), then every ``stride``-th frame from the first selected one, then at most
``max_frames`` frames. Indices always refer to the whole source (before selection).

Inputs are read as people see them: images are turned upright by their EXIF orientation and
converted to 8-bit RGB with their full range (16-bit grayscale scaled, not clipped; samples without
a display range, floating-point or 32-bit, refused: :func:`pixels.pixel_problem`); video frames
are rotated (and mirrored) by the stream's display matrix, as players show them.

Hostile inputs fail early with a :class:`SourceError` instead of hanging or exhausting memory:
only regular files and folders are read (a named pipe, socket or device other than a video
capture device is refused before it is opened), and a frame larger than ``max_pixels``
(:data:`DEFAULT_MAX_PIXELS` unless set; None: no limit) is refused from its header, before
it is decoded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ...errors import SourceError
from ..paths import safe_name
from .images import (AnimatedImageSource, ArraySource, FrameFolderSource, ImageSource, describe_entries, image_to_rgb,
                     list_folder, open_image)
from .live import LiveSource, is_live_input, live_source_name
from .selection import (ANIMATION_EXTENSIONS, DEFAULT_FPS, DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, Frame,
                        FrameSelection, FrameSource, check_max_pixels, input_problem, natural_key, parse_position)
from .video_file import VideoFileSource

__all__ = [
    "result_name",
    "VIDEO_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "ANIMATION_EXTENSIONS",
    "DEFAULT_FPS",
    "DEFAULT_MAX_PIXELS",
    "Frame",
    "FrameSelection",
    "FrameSource",
    "VideoFileSource",
    "FrameFolderSource",
    "ImageSource",
    "AnimatedImageSource",
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


# ----------------------------------------------------------------------------- opening


def open_source(video: str | os.PathLike | FrameSource | Sequence | np.ndarray,
                selection: FrameSelection | None = None, fps: float | None = None,
                name: str | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> FrameSource:
    """A FrameSource for a path (video file, folder of frames, image), a live stream URL or
    video device (see :func:`is_live_input`), frames in memory, or a source (returned as is).
    max_pixels: largest frame (width x height) read, None for no limit (frames in memory too: the
    merge of a frame that large could exhaust the memory). Raises SourceError naming the input and the cause."""
    max_pixels = check_max_pixels(max_pixels)
    if isinstance(video, FrameSource):
        if selection is not None and not selection.is_all and selection != video.selection:
            raise SourceError(f"{video!r} already has its frame selection; select frames when creating it")
        # Each was ignored without a word (a result named "video" at 25 fps, a frame limit not applied).
        # fps and name: None is no value. max_pixels: None is "no limit", a value; the default cannot be
        # told from no value, and leaves the source's own.
        own_limit = getattr(video, "max_pixels", None)
        ignored = [f"{arg}={value!r}" for arg, value, own in (
            ("fps", fps, video.fps), ("name", name or None, video.name)) if value is not None and value != own]
        if max_pixels != DEFAULT_MAX_PIXELS and max_pixels != own_limit:
            ignored.append(f"max_pixels={max_pixels!r}")
        if ignored:
            raise SourceError(f"{video!r} already has its frame rate, name and frame size limit: {', '.join(ignored)} "
                              "would not apply; give fps and max_pixels when creating it, a name as its name attribute")
        return video
    if isinstance(video, np.ndarray) or (isinstance(video, Sequence) and not isinstance(video, (str, bytes))):
        if isinstance(video, np.ndarray) and (video.ndim != 4 or video.shape[-1] != 3):
            raise SourceError(f"frames array must be [n, H, W, 3] uint8, got shape {video.shape}")
        return ArraySource(video, name or "video", selection, fps, max_pixels=max_pixels)
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
        elif ext in IMAGE_EXTENSIONS or ext in ANIMATION_EXTENSIONS:
            source = open_image(path, selection, fps, max_pixels=max_pixels)
        else:
            raise SourceError(f"unsupported input {path}: expected a video "
                              f"({' '.join(VIDEO_EXTENSIONS)}), an image ({' '.join(IMAGE_EXTENSIONS)}), "
                              f"an animation ({' '.join(ANIMATION_EXTENSIONS)}) or a folder of frames")
        if not os.access(path, os.R_OK):
            raise SourceError(f"cannot read {path}: permission denied")
    if name:
        source.name = name
    return source


def list_batch_inputs(folder: str | os.PathLike) -> list[Path]:
    """The videos of a batch folder: its video files and sub-folders (folders of frames),
    in natural order. Raises SourceError if there are none."""
    folder = Path(folder)
    problem = input_problem(folder, "batch folder")
    if problem:
        raise SourceError(problem)
    if not folder.is_dir():
        raise SourceError(f"a batch is a folder of videos: {folder} is not a folder")
    entries = list_folder(folder)
    # Every entry named like a video is listed, whatever it is: opening it then refuses a named
    # pipe, a broken link or a link loop with its own message instead of skipping it silently.
    videos = [p for p in entries if p.suffix.lower() in VIDEO_EXTENSIONS or p.is_dir()]
    if not videos:
        if any(p.suffix.lower() in IMAGE_EXTENSIONS for p in entries):
            raise SourceError(f"{folder} holds frames, not videos: segment it as one video, not as a batch")
        found = f"; it holds {describe_entries(entries)}" if entries else "; it is empty"
        raise SourceError(f"{folder}: no videos ({' '.join(VIDEO_EXTENSIONS)}) or folders of frames in it{found}")
    return sorted(videos, key=lambda p: natural_key(p.name))


def result_name(source: str | os.PathLike) -> str:
    """The result folder name of an input, as one safe path component (a video named `..mp4`
    must not write into the output root, a 250-byte name must fit): a live source's name, a
    folder's name, a file's stem. The one rule of every runner (command line, shards, Ray)."""
    if isinstance(source, str) and is_live_input(source):
        return safe_name(live_source_name(source))
    path = Path(source)
    # A folder by the name it was given: resolved, a link was named after its target, and links
    # cam1, cam2 to .../a/frames, .../b/frames were both "frames". A path ending in "." or ".."
    # gives no name of its own: the folder the system reaches there ("link/.." is the parent of
    # the link's target, not the folder holding the link).
    if not path.is_dir():
        return safe_name(path.stem)
    given = Path(path).absolute()
    return safe_name(given.resolve().name if given.name in ("", ".", "..") else given.name)
