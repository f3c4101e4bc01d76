"""Images as frames: single images, folders of frames (natural order), frames in memory.

Images are read as people see them (EXIF orientation applied, 16-bit grayscale scaled to 8 bits)
and refused from their header when larger than ``max_pixels``, before they are decoded.
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from ...errors import SourceError
from .selection import (DEFAULT_FPS, DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, FrameSelection,
                        FrameSource, check_frame_size, frame_out_of_memory, input_problem, natural_key, open_input_file)
from .pixels import image_to_rgb, pixel_problem, shown_frames


# Pillow refuses images over 2 x Image.MAX_IMAGE_PIXELS in Image.open (DecompressionBombError). Our own
# limit is checked instead; lifting Pillow's for a larger max_pixels changes a global, hence the lock.
_PIL_LIMIT_LOCK = threading.Lock()


def _open_pil(fp) -> Image.Image:
    """Image.open (lazy: reads the header only) without Pillow's decompression-bomb warning or
    error: the caller checks the size against its own limit before decoding. Nor with its warnings
    about damaged metadata it reads past (a truncated EXIF block, a TIFF tag larger than the file):
    printed with Pillow's source lines for each file opened, even under -q (4 lines a frame, for
    a folder of photos an app wrote such EXIF into), while the picture is read as viewers show it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.simplefilter("ignore", UserWarning)
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


def _unreadable_image(path: Path, what: str, fp, err: Exception) -> SourceError:
    """The error of an image Pillow could not open. Pillow names the open file object in its
    message (``cannot identify image file <_io.BufferedReader name=3>``): the cause is said in
    words instead, an empty file (a copy that failed) as such."""
    if os.fstat(fp.fileno()).st_size == 0:
        cause = "empty file (0 bytes), not an image"
    elif isinstance(err, UnidentifiedImageError):
        cause = "not an image format Pillow can read (corrupt, truncated or not an image)"
    else:
        cause = f"{err or type(err).__name__} (corrupt, truncated or not an image)"
    return SourceError(f"cannot read {what} {path}: {cause}")


def _check_one_frame(path: Path, im: Image.Image, kind: str) -> None:
    """SourceError for a file of a frame folder or frame list (`kind` "folder"), or a single image
    ("image"), that is no one picture people see: pixels without a display range, several frames.
    An animation or a multi-page TIFF among frames was read as its first frame, silently. `im` is
    left at the frame shown (not the first page where that is a TIFF's thumbnail)."""
    what = "image" if kind == "image" else "frame"
    try:
        pages = shown_frames(im)
        n = len(pages)
        if pages[0]:
            im.seek(pages[0])
    except (TypeError, OSError, EOFError, SyntaxError, ValueError) as err:  # (TypeError: Pillow's "Missing
        # dimensions", a page of a TIFF without its size: a traceback)
        raise SourceError(f"cannot read {what} {path}: one of its pages is damaged ({err or type(err).__name__}): "
                          "corrupt or truncated") from None
    problem = pixel_problem(im)
    if problem:
        raise SourceError(f"cannot read {what} {path}: {problem}")
    if n > 1 and kind == "image":
        raise SourceError(f"image {path} holds {n} frames: open_source reads such a file as a video of them")
    if n > 1:
        raise SourceError(f"frame {path} holds {n} frames (an animation or a multi-page TIFF), where each file of "
                          "a video's frames must be one picture: move it out and segment it on its own (a file "
                          "holding several frames is read as a video of them)")


def _read_image(path: Path, what: str, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                label: str | None = None, kind: str = "folder") -> np.ndarray:
    with open_input_file(path, what) as fp:
        try:
            im = _open_pil(fp)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise _unreadable_image(path, what, fp, err) from None
        with im:
            check_frame_size(label or str(path), f"{what} {path.name}", im.width, im.height, max_pixels)
            _check_one_frame(path, im, kind)
            if im.tell():  # (its picture after a thumbnail page)
                check_frame_size(label or str(path), f"{what} {path.name}", im.width, im.height, max_pixels)
            try:
                im.load()  # decode now: a truncated or corrupt file fails here, not later
                return image_to_rgb(im)
            except MemoryError:  # a header declaring a huge size, under max_pixels=None
                raise frame_out_of_memory(label or str(path), f"{what} {path.name}", im.width, im.height) from None
            except (OSError, SyntaxError, ValueError) as err:
                raise SourceError(f"cannot read {what} {path}: {err or type(err).__name__} "
                                  "(corrupt, truncated or not an image)") from None


class FrameFolderSource(FrameSource):
    """A folder of frames (IMAGE_EXTENSIONS, one picture each) in natural order."""

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
        super().__init__(name or Path(os.path.abspath(path)).name, fps or DEFAULT_FPS, selection, path, max_pixels)
        self._check_header(self.files[0])  # the first frame's size, read from its header: fail before any work

    def _check_header(self, f: Path) -> None:
        with open_input_file(f, "frame") as fp:
            try:
                with _open_pil(fp) as im:
                    check_frame_size(self.label, f"frame {f.name}", im.width, im.height, self.max_pixels)
                    _check_one_frame(f, im, self.kind)
            except SourceError:  # (a ValueError too) the frame is readable but unusable: say that, not "corrupt"
                raise
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
                raise _unreadable_image(f, "frame", fp, err) from None

    def total_frames(self) -> int:
        return len(self.files)

    def _frames(self):
        for i, f in enumerate(self.files):
            yield i, i / self.fps, f

    def _decode(self, index: int, payload: object) -> tuple[str, np.ndarray]:
        f = Path(payload)  # type: ignore[arg-type]
        return f.stem, _read_image(f, "frame", self.max_pixels, self.label, self.kind)


class ImageSource(FrameFolderSource):
    """A single image: a one-frame video."""

    kind = "image"

    def __init__(self, path: str | os.PathLike, selection: FrameSelection | None = None, fps: float | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS):
        path = Path(path)
        super().__init__(path, selection, fps, files=[path], name=path.stem, max_pixels=max_pixels)


class AnimatedImageSource(FrameSource):
    """An image file holding several frames (an animated PNG, GIF or WebP, a multi-page TIFF): a
    video of them, as a browser plays an animation. Frame ``i`` is named ``f"{i:06d}"``; its
    time is the sum of the display durations of the frames before it (``i / fps`` when the file
    has none, as a TIFF's pages); the frame rate is the first frame's (``fps`` overrides it). Read
    with Pillow, which composes each frame over the previous ones as players do."""

    kind = "video"

    def __init__(self, path: str | os.PathLike, pages: int | Sequence[int], selection: FrameSelection | None = None,
                 fps: float | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS, first_ms: float = 0.0):
        path = Path(path)
        # Pillow's indexes of the frames shown (pixels.shown_frames); a count: the first ones
        self.pages = tuple(range(pages) if isinstance(pages, int) else pages)
        self.frames_in_file = len(self.pages)
        native_fps = 1000.0 / first_ms if first_ms and first_ms > 0 else None
        super().__init__(path.stem, fps or native_fps or DEFAULT_FPS, selection, path, max_pixels)
        self.native_fps = native_fps

    def total_frames(self) -> int:
        return self.frames_in_file

    def _frames(self):
        with open_input_file(self.path, "image") as fp:
            im = _open_pil(fp)
            with im:
                t_ms, untimed = 0.0, 0  # a frame's time: the timed durations before it, 1 / fps for the others
                for i in range(self.frames_in_file):
                    try:
                        im.seek(self.pages[i])  # (in order: each frame is composed over the previous ones)
                    except (OSError, EOFError, SyntaxError, TypeError, ValueError) as err:  # (SyntaxError: an
                        # APNG's frames out of sequence; TypeError: a TIFF page without its size)
                        raise SourceError(f"cannot read image {self.path}: frame {i:06d} of its {self.frames_in_file} "
                                          f"is corrupt or missing ({err or type(err).__name__})") from None
                    # A GIF frame may be larger than the canvas, which Pillow widens to it; the next
                    # seek decodes it to compose the next frame over it, selected or not.
                    check_frame_size(self.label, f"frame {i:06d}", im.width, im.height, self.max_pixels)
                    problem = pixel_problem(im)  # (a TIFF's pages each have their own sample format)
                    if problem:
                        raise SourceError(f"cannot read image {self.path}: frame {i:06d} of its {self.frames_in_file}: "
                                          f"{problem}")
                    duration = _display_duration(im, self.path, f"frame {i:06d} of its {self.frames_in_file}")
                    yield i, t_ms / 1000.0 + untimed / self.fps, im  # (decoded by _decode before the next seek)
                    if duration:
                        t_ms += duration
                    else:
                        untimed += 1

    def _decode(self, index: int, payload: object) -> tuple[str, np.ndarray]:
        im = payload  # type: ignore[assignment]
        name = f"{index:06d}"
        check_frame_size(self.label, f"frame {name}", im.width, im.height, self.max_pixels)
        try:
            return name, image_to_rgb(im)
        except (OSError, SyntaxError, ValueError) as err:
            raise SourceError(f"cannot read image {self.path}: frame {name} is corrupt "
                              f"({err or type(err).__name__})") from None


def _display_duration(im: Image.Image, path: Path, what: str) -> float | None:
    """The current frame's display duration in ms, or None when it has none."""
    if im.info.get("duration") is None and im.format == "WEBP":
        # Pillow learns a WebP frame's duration only when it decodes the frame (GIF and APNG
        # declare it in the frame's header); reaching the next frame decodes this one anyway.
        try:
            im.load()
        except (OSError, EOFError, SyntaxError, ValueError) as err:
            raise SourceError(f"cannot read image {path}: {what} is corrupt "
                              f"({err or type(err).__name__})") from None
    duration = im.info.get("duration")
    return float(duration) if isinstance(duration, (int, float)) and duration > 0 else None


def open_image(path: Path, selection: FrameSelection | None = None, fps: float | None = None,
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> FrameSource:
    """A single image file as a source: a one-frame `ImageSource`, or an `AnimatedImageSource` when
    the file holds several frames (only the first was read, silently, as Pillow's open shows it),
    or an animation of one (an APNG's, after its default image: timed, its frame rate the frame's;
    a TIFF's one picture after a thumbnail page is a still image)."""
    pages, still = [0], True
    try:
        with open_input_file(path, "image") as fp, _open_pil(fp) as im:
            pages, still = shown_frames(im), im.format == "TIFF"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError, SourceError):
        pass  # ImageSource reads it again and says what is wrong with it
    if len(pages) > 1 or (pages != [0] and not still):
        frames = len(pages)
        unchecked = AnimatedImageSource(path, pages, selection, fps, max_pixels)
        with open_input_file(path, "image") as fp, _open_pil(fp) as im:  # the size, before any work
            check_frame_size(unchecked.label, f"image {path.name}", im.width, im.height, unchecked.max_pixels)
            try:
                if pages[0]:
                    im.seek(pages[0])  # (the first frame shown: its duration is the frame rate's)
            except (OSError, EOFError, SyntaxError, TypeError, ValueError) as err:
                raise SourceError(f"cannot read image {path}: frame 000000 of its {frames} is corrupt or missing "
                                  f"({err or type(err).__name__})") from None
            if pixel_problem(im):
                raise SourceError(f"cannot read image {path}: frame 000000 of its {frames}: {pixel_problem(im)}")
            first_ms = _display_duration(im, path, f"frame 000000 of its {frames}") or 0.0
        return AnimatedImageSource(path, pages, selection, fps, max_pixels, first_ms=first_ms)
    return ImageSource(path, selection, fps, max_pixels=max_pixels)


def list_folder(folder: Path) -> list[Path]:
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
    for p in list_folder(folder):
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.is_dir():
            problem = input_problem(p, "frame")
            if problem:
                raise SourceError(f"{folder}: {problem}")
            frames.append(p)
        else:
            others.append(p)
    return sorted(frames, key=lambda p: natural_key(p.name)), others


def describe_entries(paths: Sequence[Path], limit: int = 5) -> str:
    names = sorted((p.name + ("/" if p.is_dir() else "") for p in paths), key=natural_key)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _no_frames_message(folder: Path, others: Sequence[Path]) -> str:
    supported = " ".join(IMAGE_EXTENSIONS)
    if not others:
        return f"{folder}: empty folder, no frames ({supported})"
    hint = ""
    if any(p.suffix.lower() in VIDEO_EXTENSIONS or p.is_dir() for p in others):
        hint = "; each video or sub-folder in it can be segmented as a batch"
    return (f"{folder}: no frames of the supported types ({supported}) in this folder; it holds "
            f"{len(others)} other entr{'y' if len(others) == 1 else 'ies'}: {describe_entries(others)}{hint}")


# ----------------------------------------------------------------------------- arrays


class ArraySource(FrameSource):
    """Frames already in memory: a [n, H, W, 3] uint8 array or a sequence of arrays / PIL images.
    Frames larger than ``max_pixels`` are refused as a file's are: decoded or not (a PIL image
    from Image.open is decoded only when read), the video merge of a frame that large holds every
    entity's probabilities at full resolution."""

    kind = "array"

    def __init__(self, frames: Sequence[np.ndarray | Image.Image] | np.ndarray, name: str = "video",
                 selection: FrameSelection | None = None, fps: float | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS):
        if len(frames) == 0:
            raise SourceError(f"{name}: no frames (empty sequence)")
        self.frames = frames
        super().__init__(name, fps or DEFAULT_FPS, selection, max_pixels=max_pixels)
        if isinstance(frames, np.ndarray) and frames.ndim == 4:  # one size for all: refused before any work
            self._check_size("frames", frames.shape[2], frames.shape[1])

    def _check_size(self, frame: str, width: int, height: int) -> None:
        check_frame_size(self.label, frame, width, height, self.max_pixels, when="before processing it")

    def total_frames(self) -> int:
        return len(self.frames)

    def _frames(self):
        for i in range(len(self.frames)):
            yield i, i / self.fps, i

    def _decode(self, index: int, payload: object) -> tuple[str, np.ndarray]:
        item = self.frames[index]
        if not isinstance(item, Image.Image):
            try:
                item = np.asarray(item)  # (a torch tensor on the CPU without grad: no copy)
            except Exception as err:  # noqa: BLE001 - whatever __array__ raises: a CUDA tensor's TypeError, ...
                raise SourceError(f"{self.label}: frame {index:06d} (a {type(item).__name__}) is no array of pixels: "
                                  f"{err or type(err).__name__}") from None
        if isinstance(item, Image.Image) or item.ndim >= 2:  # (a PIL image's header only: not decoded)
            width, height = item.size if isinstance(item, Image.Image) else item.shape[1::-1]
            self._check_size(f"frame {index:06d}", width, height)
        if isinstance(item, Image.Image):
            if pixel_problem(item):
                raise SourceError(f"{self.name}: frame {index:06d} (a PIL image): {pixel_problem(item)}")
            item = image_to_rgb(item)  # as displayed: EXIF orientation, 16-bit range
        return f"{index:06d}", np.ascontiguousarray(item)

