"""Live sources (online mode only): stream URLs and video capture devices, read as frames arrive."""

from __future__ import annotations

import errno
import os
import re
import threading
import time as _time  # "time" is a frame's time in this module
from pathlib import Path

import numpy as np

from ...errors import SourceError
from .clock import FrameClock
from .selection import (DEFAULT_FPS, DEFAULT_MAX_PIXELS, FrameSelection, FrameSource, check_frame_size, check_max_pixels,
                        frame_out_of_memory)
from .video_file import (av_message, import_av, open_container, stream_display, stream_sample_aspect_ratio,
                         video_frame_to_rgb, video_stream)


# URL schemes FFmpeg reads as network streams; anything with one of these is a live source.
LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "rtp", "srt", "udp", "tcp", "http", "https", "mmsh")
_DEVICE_RE = re.compile(r"^/dev/video\d+$")
# (open, read) timeouts in seconds: a stalled stream ends with an error instead of hanging forever.
LIVE_TIMEOUT = (15.0, 30.0)


def _stream_cause(err: Exception, seconds: float, waited: float | None = None, opening: bool = True) -> str:
    """FFmpeg's error on a network stream or device, in words a user can act on. seconds: the
    timeout; waited: how long the failed call took, where measured; opening: whether it failed
    while the stream was being opened (else while its frames were read)."""
    av = import_av()
    if isinstance(err, av.error.ExitError):  # "Immediate exit requested": our timeout interrupted FFmpeg
        if waited is not None and waited > 1.5 * seconds:
            # The open timeout applies to each of FFmpeg's opening phases: a server that sends data
            # but no stream FFmpeg can read (e.g. padding only) is given it twice.
            return (f"no readable video stream within {waited:.0f} s (timed out: data came, but no stream "
                    "FFmpeg can read)")
        return f"no answer within {seconds:g} s (timed out)"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused (nothing listens at that address and port)"
    code = getattr(err, "errno", None)
    if code == errno.EIO:
        when = "before a stream was received" if opening else "while the stream was being received"
        return f"input/output error (the connection failed or was closed {when})"
    if code == errno.ETIMEDOUT:
        return f"connection timed out (no answer within {seconds:g} s)"
    if isinstance(err, av.error.InvalidDataError):
        return "what the server sent is not a video stream FFmpeg can read (invalid data)"
    return av_message(err)


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
    return is_video_device(text)


def is_video_device(text: str) -> bool:
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


# What names a secret in a query parameter (in any case, anywhere in the name): cameras take
# ?user=admin&password=..., RTMP ?streamkey=..., signed addresses ?token=..., ?X-Amz-Signature=...
_SECRET_PART = re.compile(r"pass|pwd|secret|token|key|sig|auth|credential|session|jwt|hmac|hdnts")
# Common stream options that only look like one (shown as they are)
_NOT_SECRET = {"keyframe", "keyframes", "keyint", "keyint_min", "pbkeylen", "passthrough", "signal", "signals"}


def _names_a_secret(name: str) -> bool:
    from urllib.parse import unquote  # noqa: PLC0415

    name = unquote(name).lower()
    return name not in _NOT_SECRET and _SECRET_PART.search(name) is not None


def _shown_parameters(query: str) -> str:
    """`query` (from its ``?`` or ``#`` on) with the values of secret parameters as ``***``. A
    secret's value runs to the next ``&`` or ``#`` (``;`` may be part of it); ``;`` also separates
    the parameters after another's value."""
    def shown(m: re.Match) -> str:
        name, value = m.group(1), m.group(2)
        if value and _names_a_secret(name):
            return f"{name}=***"
        head, semicolon, rest = value.partition(";")
        return f"{name}={head}{semicolon}{_shown_parameters(rest) if semicolon else ''}"
    return re.sub(r"([^?#&;=]*)=([^#&]*)", shown, query)


def shown_url(url: str) -> str:
    """`url` as messages and manifests show it: without the password of its user part
    (``rtsp://admin:***@camera/live``) nor the values of query (or fragment) parameters named
    like a secret (``?user=admin&password=***``, ``?token=***``). A camera's address carries them,
    and the manifest of every online result and each error line wrote them out in full; the
    stream is opened with them."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = min([i for i in (rest.find(c) for c in "/?#") if i >= 0] + [len(rest)])
    authority, tail = rest[:end], rest[end:]
    user, at, host = authority.rpartition("@")
    if at and ":" in user:
        authority = f"{user.split(':', 1)[0]}:***@{host}"
    start = min([i for i in (tail.find(c) for c in "?#") if i >= 0] + [len(tail)])
    return f"{scheme}{sep}{authority}{tail[:start]}{_shown_parameters(tail[start:])}"


def _interruptible(call):
    """call() (an open of a stream) on a helper thread, waited for from this one.

    PyAV loses a Ctrl-C that lands while FFmpeg waits in the main thread: Python raises it inside
    PyAV's error check once the open gives up, where the timeout's ExitError replaces it, so a run
    waited the whole open timeout (15 s) and then reported a timeout (exit 1) instead of stopping.
    Waiting here, in Python, takes the Ctrl-C at once; the helper's open still ends within its
    timeout, and what it opened after that is closed."""
    if threading.current_thread() is not threading.main_thread():
        return call()
    box: dict = {}
    lock = threading.Lock()

    def run():
        try:
            value = call()
        except BaseException as err:  # noqa: BLE001 - re-raised by the waiting thread
            box["error"] = err
            return
        with lock:
            if box.get("abandoned"):
                value.close()
            else:
                box["value"] = value

    helper = threading.Thread(target=run, name="entitysam-open", daemon=True)
    helper.start()
    try:
        while helper.is_alive():
            helper.join(0.1)
    except BaseException:
        with lock:
            box["abandoned"] = True
            if "value" in box:  # opened between the interrupt and now
                box.pop("value").close()
        raise
    if "error" in box:
        raise box["error"]
    return box["value"]


class _Stalled(SourceError):
    """No video frame for the read timeout while other data kept coming (raised by
    `_demuxed_frames`, turned into the SourceError that names the stream by `_video_frames`)."""


def _video_frames(container, stream, seconds: float, url: str, last_index):
    """The decoded frames of `stream`; when reading fails (a timeout, a closed connection, no
    video while other data keeps coming), the frames FFmpeg still holds are handed on first: they
    were received whole. last_index(): the index of the last frame handed on, for the message."""
    av = import_av()
    try:
        yield from _demuxed_frames(container, stream, seconds)
    except (_Stalled, av.error.FFmpegError) as err:
        try:
            if isinstance(err, _Stalled):
                yield from _drained_frames(av, container, stream, seconds)
            yield from _flush_decoder(av, stream)
        except av.error.FFmpegError:
            pass  # they are lost with the stream; the read error is the one to report
        if not isinstance(err, _Stalled):
            raise
        index = last_index()
        after = f"after frame {index}" if index >= 0 else "before its first frame"
        raise SourceError(f"the stream {url} could not be read {after}: no video frame within {seconds:g} s "
                          "(timed out: data came, but no video frame it can decode)") from None


class _ReadTimeout:
    """The read timeout handed to PyAV, which takes it as a number (float()) each time a demux
    starts: `seconds` until :meth:`expire`, then 0, so that every read of a new demux is interrupted.

    A stream whose video stopped while other data flows never makes a read fail, and only a failed
    read (or the end of the input) makes FFmpeg hand on what it holds: the MPEG-TS demuxer ends a
    video packet only when the next one starts (video PES packets carry no length) and the parser
    needs the start of the next frame. The last two frames received were lost that way."""

    def __init__(self, seconds: float):
        self.seconds = float(seconds)

    def expire(self) -> None:
        self.seconds = 0.0

    def __float__(self) -> float:
        return self.seconds


def _drained_frames(av, container, stream, seconds: float):
    """The frames of `stream` FFmpeg's demuxer and parser hold back, read by failing every read
    (`_ReadTimeout`); ends at the first error. Bounded by `seconds` where the reads are not
    interrupted (a PyAV that reads the timeout once)."""
    timeout = container.read_timeout
    if not isinstance(timeout, _ReadTimeout):
        return
    timeout.expire()
    started = _time.monotonic()
    try:
        for packet in container.demux(stream):
            yield from packet.decode()
            if _time.monotonic() - started > seconds:
                return
    except av.error.FFmpegError:
        return


def _flush_decoder(av, stream):
    """The frames the decoder of `stream` holds back. An empty packet of the stream flushes it, as
    the end of the input does; decode(None) would give them no time base (their time NaN)."""
    packet = av.Packet()
    packet.stream = stream
    packet.time_base = stream.time_base
    return packet.decode()


def _demuxed_frames(container, stream, seconds: float):
    """The decoded frames of `stream`; _Stalled when none comes for `seconds` while the source
    keeps sending other data.

    FFmpeg's read timeout only fires when no packet at all arrives: a stream whose video stops
    while its audio (or data, or video packets that decode to nothing) keeps flowing would never
    end. Every stream is demuxed so that each packet returns here to check the time; the clock
    restarts whenever a frame is handed on, so a consumer that is slow to take it (the model,
    reading without dropping) does not count as a stalled source."""
    last = _time.monotonic()
    for packet in container.demux():
        if packet.stream.index == stream.index:
            for frame in packet.decode():
                yield frame
                last = _time.monotonic()
        if _time.monotonic() - last > seconds:
            raise _Stalled


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
        self._av = import_av()
        self._format = "v4l2" if is_video_device(self.url) else None
        opts = dict(options or {})
        if self.url.lower().startswith(("rtsp://", "rtsps://")):
            opts.setdefault("rtsp_transport", "tcp")  # UDP loses packets, hence frames, on busy networks
        # FFmpeg's open reads 20 frames to estimate the frame rate (3 give a constant rate's
        # exactly): the first frame came out only once the 20th had arrived, and a stream that
        # stalled before then kept the frames it had sent until the open timeout.
        opts.setdefault("fpsprobesize", "3")
        self._options = opts
        self._timeout = timeout
        container = self._open()
        try:
            stream = video_stream(container)
            if stream is None:
                raise SourceError(f"{self.label}: no video stream")
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            if stream.codec_context is None:  # PyAV found no decoder for it (as for a file: video_file.py)
                raise SourceError(f"cannot read stream {self.label}: its video stream has no usable codec (a codec "
                                  "this PyAV cannot decode, or a damaged stream)")
            self.width, self.height = stream.codec_context.width, stream.codec_context.height
            check_frame_size(self.label, "its video stream", self.width, self.height, check_max_pixels(max_pixels))
            self.sample_aspect_ratio = stream_sample_aspect_ratio(stream)
        except BaseException:
            container.close()
            raise
        self._container = container  # reused by the first iteration: no second connection
        native_fps = float(rate) if rate else None
        super().__init__(name or live_source_name(self.url), fps or native_fps or DEFAULT_FPS, selection,
                         max_pixels=max_pixels)
        self.native_fps = native_fps
        self.fps_guessed = fps is None

    @property
    def label(self) -> str:
        return shown_url(self.url)

    def _open(self):
        av = self._av
        what = "video device" if self._format == "v4l2" else "stream"
        started = _time.monotonic()
        try:
            return _interruptible(lambda: open_container(
                self.url, format=self._format, options=self._options,
                timeout=(self._timeout[0], _ReadTimeout(self._timeout[1]))))
        except av.error.FFmpegError as err:
            hint = ("check that the camera is connected and not in use by another program" if what == "video device"
                    else "check the address, and that the camera or server is running and reachable from this machine")
            cause = _stream_cause(err, self._timeout[0], _time.monotonic() - started)
            raise SourceError(f"cannot open {what} {self.label}: {cause}; the {what} "
                              f"could not be opened ({hint})") from None

    def _frames(self):
        av = self._av
        container, self._container = self._container, None
        if container is None:
            container = self._open()
        index = -1
        try:
            with container:
                stream = video_stream(container)
                if stream is None:  # a later connection, to a stream that changed
                    raise SourceError(f"{self.label}: no video stream")
                # Frame threads each hold a frame back (one per core, plus one): on a live stream
                # that is latency, added to the two frames MPEG-TS demuxing and parsing hold, for
                # throughput a camera's rate does not need. Slice threads hold none (files keep
                # "AUTO": docs/reliability.md has the frames of lag measured per codec).
                stream.thread_type = "SLICE"
                clock = FrameClock(1 / self.fps)
                for frame in _video_frames(container, stream, self._timeout[1], self.label, lambda: index):
                    index += 1
                    yield index, clock.time(frame.time), frame
        except MemoryError:  # the decoder's (av.error.MemoryError): a huge frame under max_pixels=None
            raise frame_out_of_memory(self.label, f"frame {index + 1:06d}", self.width, self.height) from None
        except av.error.FFmpegError as err:
            after = f"after frame {index}" if index >= 0 else "before its first frame"
            raise SourceError(f"the stream {self.label} could not be read {after}: "
                              f"{_stream_cause(err, self._timeout[1], opening=False)}") from None

    def _decode(self, index: int, payload: object) -> tuple[str, np.ndarray]:
        name = f"{index:06d}"
        return name, video_frame_to_rgb(payload, self.label, name, self.max_pixels, stream_display(self, payload))

    def empty_message(self) -> str:
        return f"{self.label}: the stream ended before sending a frame" + (
            "" if self.selection.is_all else f" selected by {self.selection.describe()}")

