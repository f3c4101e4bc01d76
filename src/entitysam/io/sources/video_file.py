"""Video files decoded with PyAV (the first video stream), turned as players show them."""

from __future__ import annotations

import contextlib
import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from ...errors import Remedy, SourceError
from ...regular_file import reopenable_name
from .clock import FrameClock
from .selection import (DEFAULT_FPS, DEFAULT_MAX_PIXELS, FrameSelection, FrameSource, check_frame_size,
                        check_max_pixels, frame_out_of_memory, input_problem, open_input_file)


def import_av():
    """The PyAV module (an optional dependency), or a SourceError saying how to install it."""
    try:
        import av  # noqa: PLC0415 - optional dependency
    except ImportError as err:  # pragma: no cover - depends on the installation
        raise SourceError("reading video files needs PyAV: pip install 'entitysam[video]'") from err
    return av


def open_container(url: str, **kwargs):
    """av.open for reading. Metadata tags that are not UTF-8 (the Latin-1 title of an old AVI, or
    a hostile file) are read with replacement characters: PyAV decodes every tag while it opens
    the input, and would otherwise fail the open itself with a UnicodeDecodeError."""
    return import_av().open(url, metadata_errors="replace", **kwargs)


@contextlib.contextmanager
def open_video(path: Path):
    """The PyAV container of the video file `path`, for one pass (listing, decoding, seeking).

    The file is opened once, without waiting, and checked to be a regular file (`open_input_file`);
    PyAV reads that open file, under /dev/fd/N (FFmpeg's own reads and seeks, as from the path) or,
    where there is no such name, through the file object. Handing PyAV the path let a named pipe
    put there after the check make its open wait for a writer for ever. SourceError for what is no
    regular file now or an empty file (0 bytes); messages name `path`, never /dev/fd/N."""
    with open_input_file(path, "video") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise SourceError(f"{path}: empty file (0 bytes), not a video")
        with open_container(reopenable_name(f) or f) as container:
            yield container


def video_stream(container):
    """The video stream to read: the first one that is not an attached picture, or None.

    An attached picture (cover art, FFmpeg's ``attached_pic`` disposition) is a one-frame
    "video stream" that an MP4 may list before its video (when its ``udta`` atom precedes the
    tracks): taking the first stream would read the cover, and call the file truncated."""
    for stream in container.streams.video:
        if not stream.disposition & import_av().stream.Disposition.attached_pic:
            return stream
    return None


def no_video_why(container) -> str:
    """What a file without a video stream holds instead, in parentheses ("" when nothing to add). A
    file with no stream at all is most often an MP4 cut short: its index, written at the end, is
    missing, and FFmpeg finds nothing to decode (it was "no video stream", as for a music file)."""
    if container.streams.video:
        return " (only a cover picture)"
    if container.streams.audio:
        return " (only audio)"
    if not len(container.streams):
        return (" (it holds no streams at all: a recording stopped before it began, or a file cut short "
                "before its index, which MP4 writers put at the end)")
    return ""


def container_span(container, stream) -> float:
    """Seconds from the video `stream`'s first timestamp to the container's end. FFmpeg's duration of
    a Matroska (and WebM) file is its Duration element, the end's timestamp, from 0 rather than from
    its first frame: a recording whose timestamps start at 10 s (kept from the stream it was cut
    from) read as 10 s longer, and the frame count estimated from it refused the complete file as
    truncated. The video's own start: an audio track from 0 does not make a late video longer."""
    duration = container.duration / 1_000_000
    start = (float(stream.start_time * stream.time_base) if stream.start_time is not None and stream.time_base
             else (container.start_time or 0) / 1_000_000)
    if "matroska" in (container.format.name or "") and 0 < start < duration:
        return duration - start
    return duration


class VideoFileSource(FrameSource):
    """The first video stream of a file, decoded with PyAV."""

    kind = "video"

    def __init__(self, path: str | os.PathLike, selection: FrameSelection | None = None, fps: float | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS):
        path = Path(path)
        av = import_av()
        _check_regular_file(path, "video")  # by name first: a pipe or a device is refused unopened
        try:
            with open_video(path) as container:
                stream = video_stream(container)
                if stream is None:
                    raise SourceError(f"{path}: no video stream in the file{no_video_why(container)}")
                rate = stream.average_rate or stream.guessed_rate or stream.base_rate
                self._frames_hint = int(stream.frames or 0)
                self._frames_exact = self._frames_hint > 0  # counted in the container's index
                duration, self._whole_file = None, False
                is_mov = "mov" in (container.format.name or "").split(",")
                self._start = (float(stream.start_time * stream.time_base)  # (where its duration counts from)
                               if stream.start_time is not None and stream.time_base else None)
                if stream.duration is not None and stream.time_base is not None:
                    duration = float(stream.duration * stream.time_base)
                elif container.duration:
                    duration = container_span(container, stream)
                    self._whole_file = len(container.streams) > 1  # (other streams' too: _others_reach_it)
                # Stored size; frames come out rotated by the display matrix (width and height
                # swapped for a quarter turn), known from the first decoded frame.
                if stream.codec_context is None:  # a damaged header: the stream has no decoder
                    raise SourceError(f"cannot read video {path}: its video stream has no usable codec "
                                      "(a damaged file, or a codec this PyAV cannot decode)")
                self.width, self.height = stream.codec_context.width, stream.codec_context.height
                check_frame_size(str(path), "its video stream", self.width, self.height, check_max_pixels(max_pixels))
                self.sample_aspect_ratio = stream_sample_aspect_ratio(stream)
        except SourceError:
            raise
        except av.error.FFmpegError as err:
            raise SourceError(f"cannot read video {path}: {av_message(err)} (not a video file, an unsupported "
                              "container or codec, or a truncated file)") from None
        native_fps = float(rate) if rate else None
        self._duration = duration if duration and duration > 0 else None  # (a header may say -10^9 s)
        if not self._frames_hint and self._duration and native_fps:
            self._frames_hint = int(round(self._duration * native_fps))
        elif self._frames_exact and self._duration and native_fps and is_mov:
            # An MP4 cut without re-encoding (ffmpeg -ss ... -c copy, an editor's trim) keeps the frames
            # from the keyframe before the cut, which its edit list leaves out: the index counts them,
            # the stream's duration (the edit list's) does not, and the complete file was refused as
            # truncated. The count the duration holds is then the one to expect, as an estimate.
            shown = int(round(self._duration * native_fps))
            if shown < self._frames_hint - 1:
                self._frames_hint, self._frames_exact = shown, False
        super().__init__(path.stem, fps or native_fps or DEFAULT_FPS, selection, path, max_pixels)
        self.native_fps = native_fps

    def total_frames(self) -> int | None:
        return self._frames_hint or None

    def _frames(self):
        av = import_av()
        index = -1
        _check_regular_file(self.path, "video")  # again: the file may have been replaced since it was opened
        try:
            with open_video(self.path) as container:
                stream = video_stream(container)
                if stream is None:  # the file was replaced since it was opened
                    raise SourceError(f"{self.path}: no video stream in the file (did it change since it was opened?)")
                stream.thread_type = "AUTO"
                # Times from the first frame's, re-based where the stamps restart: recordings joined
                # into one file restart them, and a --end in seconds then took the joined ones too.
                clock, last = FrameClock(1 / self.fps, wall_clock=False, reordered_ok=True), None
                first = None  # the first frame's timestamp (s)
                for frame in container.decode(stream):
                    index += 1
                    if index == 0:
                        first = frame.time
                    t = last = clock.time(frame.time)
                    yield index, t, frame
        except MemoryError:  # the decoder's (av.error.MemoryError): a huge frame under max_pixels=None
            raise frame_out_of_memory(str(self.path), f"frame {index + 1:06d}", self.width, self.height) from None
        except av.error.FFmpegError as err:
            raise SourceError(f"cannot decode video {self.path}: frame {index + 1:06d} is corrupt or missing "
                              f"({av_message(err)}); {_frames_before(index)}", *_stop_before(index)) from None
        # Reached the end of the stream: a file cut short decodes fewer frames than announced.
        decoded, expected = index + 1, self._frames_hint
        tolerance = 1 if self._frames_exact else max(2, expected // 20)
        # A recording that starts inside a group of pictures (a broadcast or a camera's MPEG-TS, captured from
        # any moment) has frames before its first keyframe, which no decoder gives: they are not missing at
        # its end, and the last frame's time is taken from the stream's start, as its duration is.
        lead = max(0.0, first - self._start) if first is not None and self._start is not None else 0.0
        if (expected and decoded < expected - tolerance
                and not self._lasts_its_duration(None if last is None else last + lead, tolerance)
                and not self._others_reach_it(None if first is None else first - lead, tolerance)):
            raise SourceError(f"{self.path}: truncated or corrupt video: its header announces {expected} frames "
                              f"but only {decoded} could be decoded (frame {decoded:06d} is the first missing one; "
                              f"{_frames_before(index)})", *_stop_before(index))

    def _lasts_its_duration(self, last: float | None, tolerance: int) -> bool:
        """Whether the last decoded frame (`last` s after the stream's start) reaches the duration the header
        declares: a video of variable frame rate decodes fewer frames than the count estimated from it
        (duration x average rate), and an AVI of variable rate fewer than its header counts (the frames
        it skips are empty chunks there, which FFmpeg passes over: such a complete file was refused),
        while a file cut short also stops early in time."""
        if last is None or not self._duration or not self.native_fps:
            return False
        # an exact count (AVI's header) spans frames / rate: the duration of a file cut short is FFmpeg's estimate
        end = max(self._duration, self._frames_hint / self.native_fps) if self._frames_exact else self._duration
        return last + (tolerance + 1) / self.native_fps >= end

    def _others_reach_it(self, first: float | None, tolerance: int) -> bool:
        """Whether the file's other streams (audio, subtitles) go on to the duration the header declares,
        when that duration is the whole file's (Matroska and WebM state none per stream), for a video that
        stops short of it (`first`: its start's timestamp). A file cut short ends every stream
        early; a video shorter than its audio track ends before the file does, and was refused as a
        truncated video. Read by a pass over the other streams' packets, made only then."""
        if not self._whole_file or first is None or not self._duration or not self.native_fps:
            return False
        end = _other_streams_end(self.path)
        return end is not None and end - first + 1 / self.native_fps >= self._duration

    def _decode(self, index: int, payload: object) -> tuple[str, np.ndarray]:
        name = f"{index:06d}"
        if getattr(payload, "is_corrupt", False):  # the decoder found damaged data and concealed it
            raise SourceError(f"cannot decode video {self.path}: frame {name} is corrupt (the decoder reports "
                              f"damaged data in it); {_frames_before(index - 1)}", *_stop_before(index - 1))
        return name, video_frame_to_rgb(payload, self.label, name, self.max_pixels, stream_display(self, payload))


def _other_streams_end(path: Path) -> float | None:
    """The latest end (s) of a packet of the streams of the video file `path` other than its video
    stream, as far as they can be read; None when there is none."""
    av = import_av()
    end = None
    try:
        with open_video(path) as container:
            video = video_stream(container)
            others = [s for s in container.streams if video is None or s.index != video.index]
            for packet in container.demux(others) if others else ():
                if packet.pts is not None and packet.time_base is not None:
                    t = float((packet.pts + (packet.duration or 0)) * packet.time_base)
                    end = t if end is None else max(end, t)
    except (av.error.FFmpegError, SourceError):
        pass  # a file cut short: what was read up to the cut
    return end


def _frames_before(last_good: int) -> str:
    if last_good < 0:
        return "no frame before it could be decoded"
    return f"the frames before it decode (000000 to {last_good:06d})"


def _stop_before(last_good: int) -> tuple[Remedy, ...]:
    return (Remedy("end", last_good + 1, "to stop before it"),) if last_good >= 0 else ()


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


def stream_display(source: object, frame) -> tuple[bool, bool, bool]:
    """`_display_transform` of a video source's stream, read from the first frame it decodes and
    kept: PyAV leaks the side data it reads (measured: RSS +30 MiB per 300 frames when read from
    every frame), and a stream's display matrix does not change. A quarter turn makes the source's
    `sample_aspect_ratio` (the stored pixels') its inverse: frames come out transposed."""
    transform = source.__dict__.get("_display")
    if transform is None:
        transform = source.__dict__["_display"] = _display_transform(frame)
        if transform[0]:
            source.sample_aspect_ratio = 1 / source.sample_aspect_ratio
    return transform


# Sample aspect ratios taken from a header; outside, a damaged or hostile one is read as square.
_SAR_RANGE = (Fraction(1, 10), Fraction(10))


def stream_sample_aspect_ratio(stream) -> Fraction:
    """Width / height of a stored pixel of a video stream, as FFmpeg guesses it (the container's
    value, else the codec's); 1 when neither says or the value is implausible."""
    for owner in (stream, stream.codec_context):
        try:
            sar = Fraction(getattr(owner, "sample_aspect_ratio", None) or 0)
        except (TypeError, ValueError, ZeroDivisionError):
            continue
        if sar > 0:
            sar = sar.limit_denominator(65535)
            return sar if _SAR_RANGE[0] <= sar <= _SAR_RANGE[1] else Fraction(1)
    return Fraction(1)


def video_frame_to_rgb(frame, label: str, name: str, max_pixels: int | None,
                        display: tuple[bool, bool, bool]) -> np.ndarray:
    """A decoded PyAV frame -> [H, W, 3] uint8 RGB as played (`display`: see
    `_display_transform`); its size is checked against max_pixels before the RGB conversion."""
    check_frame_size(label, f"frame {name}", frame.width, frame.height, max_pixels)
    try:
        image = frame.to_ndarray(format="rgb24")
    except MemoryError:  # (av.error.MemoryError too) a huge frame under max_pixels=None
        raise frame_out_of_memory(label, f"frame {name}", frame.width, frame.height) from None
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


def av_message(err: Exception) -> str:
    text = getattr(err, "strerror", None) or str(err)
    return text.rstrip(": ")

