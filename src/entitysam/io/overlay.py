"""The overlay video: each entity tinted in its colour with its contour drawn (optional ids).

One writer for both modes: ``overlay.mp4`` of `segment` (H.264 in MP4, finalised when closed)
and ``overlay.ts`` of online mode (``streaming=True``: H.264 in MPEG-TS, each frame on disk when
:meth:`OverlayWriter.add` returns, see its docstring).
"""

from __future__ import annotations

import contextlib
import math
import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi
from PIL import Image

__all__ = ["entity_color", "palette", "render_overlay", "OverlayWriter", "frames_rate"]


def entity_color(entity_id: int) -> tuple[int, int, int]:
    """A stable, distinct RGB colour per id (golden-ratio hue steps, alternating brightness)."""
    import colorsys  # noqa: PLC0415

    h = (entity_id * 0.6180339887498949 + 0.11) % 1.0
    s = 0.85 if entity_id % 2 else 0.65
    v = 1.0 if (entity_id // 2) % 2 == 0 else 0.8
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return int(r * 255 + 0.5), int(g * 255 + 0.5), int(b * 255 + 0.5)


def palette(max_id: int) -> np.ndarray:
    """[max_id + 1, 3] float32 RGB: row i is the colour of id i (row 0, no entity, is black)."""
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
    fg = ids > 0
    # Contours: entity pixels with a 4-neighbour of another id.
    edge = np.zeros_like(fg)
    edge[:-1] |= ids[:-1] != ids[1:]
    edge[1:] |= ids[1:] != ids[:-1]
    edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    edge &= fg
    result = _shade(image, ids, edge, top, alpha)
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


# The frame rates the encoder's time base represents (= entitysam.argtypes.FPS_RANGE): a rate
# outside (a video's own, or --fps over a large --stride) plays at the nearest of them.
MIN_RATE, MAX_RATE = Fraction(1, 1000), Fraction(1000)


def overlay_rate(fps: float) -> Fraction:
    """The overlay's frame rate for `fps`: a fraction with a denominator <= 1001 (29.97 is
    30000/1001), within [MIN_RATE, MAX_RATE]; 25 for a rate that is no number > 0."""
    try:
        fps = float(fps)
    except (TypeError, ValueError, OverflowError):
        return Fraction(25)
    if not (math.isfinite(fps) and fps > 0):
        return Fraction(25)
    return min(max(Fraction(fps).limit_denominator(1001), MIN_RATE), MAX_RATE)


def frames_rate(first: float, last: float, count: int) -> float | None:
    """The average rate of `count` frames whose times run from `first` to `last` (seconds), as
    :func:`overlay_rate` represents it; None for fewer than 2 frames or no time between them.

    A whole or NTSC rate (30, 30000/1001) within the times' precision is taken: timestamps rounded
    to milliseconds (RTMP/FLV) leave the span up to 1 ms off, and 29.998 should read as 30."""
    try:
        span = float(last) - float(first)
    except (TypeError, ValueError, OverflowError):
        return None
    if count < 2 or not (math.isfinite(span) and span > 0):
        return None
    rate = (count - 1) / span
    tolerance = rate * 0.001 / span
    near = [r for r in (Fraction(round(rate)), Fraction(round(rate * 1.001) * 1000, 1001))
            if r > 0 and abs(r - Fraction(rate)) <= tolerance]
    best = min(near, key=lambda r: abs(r - Fraction(rate))) if near else rate
    return float(overlay_rate(best))


class OverlayWriter:
    """The overlay video at the given frame rate, encoded with PyAV (H.264, yuv420p).

    yuv420p needs even sizes: an odd width or height is padded by repeating the last column or
    row (the video is then 1 pixel wider or taller than the frames).

    ``streaming=False``: ``overlay.mp4`` (MP4, its index written by :meth:`close`).
    ``streaming=True``: MPEG-TS, written so that a killed process loses no finished frame. MPEG-TS
    has no index to finalise and its muxer writes each packet as it comes; with ``flush_packets``
    and x264's zero-latency tuning (no look-ahead, no B-frames) a frame is on disk when :meth:`add`
    returns. (Fragmented MP4 and Matroska were measured to hold the last frame back until the next
    one arrives.) Timestamps follow the frames' source times when ``timestamps`` is set (live
    sources: dropped frames leave gaps, so the video plays in real time), else one frame period apart.
    ``sample_aspect_ratio``: the shape of the input's pixels (width / height), recorded in the video
    (the MP4 and the H.264 stream) so that players stretch an anamorphic input's overlay as they do
    the input.
    """

    def __init__(self, path: str | os.PathLike, fps: float, labels: bool = False, alpha: float = 0.5, *,
                 streaming: bool = False, timestamps: bool = False, sample_aspect_ratio: Fraction = Fraction(1)):
        import av  # noqa: PLC0415 - optional dependency

        self.path = Path(path)
        self.labels = labels
        self.alpha = alpha
        self.streaming = streaming
        self.timestamps = timestamps
        self.rate = overlay_rate(fps)
        self.sample_aspect_ratio = Fraction(sample_aspect_ratio)
        # FFmpeg reads a name that starts with letters and a colon as a protocol and an address:
        # `-o 10:30` (or a video `t10:30.mp4` segmented into `-o .`) failed with a traceback,
        # `-o pipe:x` was an invalid argument. An absolute path is always a file.
        url = os.path.abspath(self.path)
        if streaming:
            self._container = av.open(url, mode="w", format="mpegts", container_options={"flush_packets": "1"})
        else:
            self._container = av.open(url, mode="w", format="mp4")
        self._stream = None
        self._last_pts = -1
        self.num_frames = 0
        self._av = av

    def _open_stream(self, h: int, w: int) -> None:
        codec = "libx264" if "libx264" in self._av.codecs_available else "mpeg4"
        stream = self._container.add_stream(codec, rate=self.rate)
        stream.width, stream.height = w + (w % 2), h + (h % 2)
        stream.pix_fmt = "yuv420p"
        if self.sample_aspect_ratio != 1:  # anamorphic input: played square, the video would look squeezed
            stream.codec_context.sample_aspect_ratio = self.sample_aspect_ratio
        if self.streaming:
            stream.codec_context.time_base = 1 / self.rate
        if codec == "libx264":
            stream.options = {"crf": "20", "preset": "veryfast", **({"tune": "zerolatency"} if self.streaming else {})}
        self._stream = stream

    def add(self, image: np.ndarray, id_map: np.ndarray, time_s: float | None = None) -> None:
        """image: [h, w, 3] uint8 (resized to the id map's size if different); id_map: [H, W] ids;
        time_s: the frame's time in seconds (used when streaming with ``timestamps``)."""
        self.encode(self.render(image, id_map), time_s)

    def render(self, image: np.ndarray, id_map: np.ndarray) -> np.ndarray:
        """The overlay frame of :meth:`add` ([H, W, 3] uint8), not yet encoded: rendering needs no
        state of the writer, so it may run on another thread than :meth:`encode`."""
        h, w = id_map.shape
        if image.shape[:2] != (h, w):
            image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
        return render_overlay(image, id_map, self.alpha, self.labels)

    def encode(self, frame: np.ndarray, time_s: float | None = None) -> None:
        """Append a frame from :meth:`render` to the video (frames in order, one thread at a time)."""
        h, w = frame.shape[:2]
        if self._stream is None:
            self._open_stream(h, w)
        if h % 2 or w % 2:
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        vf = self._av.VideoFrame.from_ndarray(frame, format="rgb24")
        if self.streaming:
            pts = self._last_pts + 1
            if self.timestamps and time_s is not None:
                pts = max(pts, int(round(time_s * self.rate)))
            vf.pts = pts
            vf.time_base = 1 / self.rate
            self._last_pts = pts
        for packet in self._stream.encode(vf):
            self._container.mux(packet)
        self.num_frames += 1

    def close(self) -> None:
        if self._stream is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
        self._container.close()
        if self.streaming and self._stream is not None:
            pad_transport_stream(self.path)

    def abort(self) -> None:
        with contextlib.suppress(Exception):  # best effort on an error path
            self._container.close()


# FFmpeg recognises MPEG-TS by counting its 188-byte packets in the first 2048 bytes. A shorter file
# (one to three tiny frames: 9 packets for three 2x2 ones) scored below its MPEG-PS guess, which
# finds no stream: ffmpeg, ffprobe and PyAV failed to open it ("End of file"). Null packets (PID
# 0x1FFF, stuffing that every demuxer discards) bring it to 11 packets.
TS_PACKET = 188
TS_MIN_BYTES = 11 * TS_PACKET
TS_NULL_PACKET = bytes((0x47, 0x1F, 0xFF, 0x10)) + b"\xff" * (TS_PACKET - 4)


def pad_transport_stream(path: Path) -> None:
    """Append null packets to a closed MPEG-TS file shorter than TS_MIN_BYTES (see above)."""
    size = os.path.getsize(path)
    if 0 < size < TS_MIN_BYTES and size % TS_PACKET == 0:
        with open(path, "ab") as f:
            f.write(TS_NULL_PACKET * ((TS_MIN_BYTES - size) // TS_PACKET))


def _shade(image: np.ndarray, ids: np.ndarray, edge: np.ndarray, top: int, alpha: float) -> np.ndarray:
    """Each pixel's output byte from a table indexed by (entity, contour or not, channel, input
    byte): one gather instead of float arithmetic over the frame (a full-frame entity took 65-85
    ms a 720p frame that way). The table holds, per entry, exactly the float32 arithmetic of
    `v * (1 - alpha) + colour * alpha` (tint), `colour * 0.6` (contour) or `v` (no entity), then
    `+ 0.5`, clipped and truncated to uint8, so the bytes are those of doing it per pixel.
    Only the ids present get rows, so a large id costs no large table."""
    present = np.zeros(top + 1, dtype=bool)
    present[ids.ravel()] = True
    present[0] = True
    listed = np.flatnonzero(present)  # ascending, starts with 0
    row = np.zeros(top + 1, dtype=np.int32)
    row[listed] = np.arange(len(listed), dtype=np.int32)
    colours = np.zeros((len(listed), 3), dtype=np.float32)
    for i, entity_id in enumerate(listed[1:], start=1):
        colours[i] = entity_color(int(entity_id))
    v = np.arange(256, dtype=np.float32)
    tint = v[None, None, :] * (1 - alpha) + (colours * alpha)[:, :, None]  # [n, 3, 256]
    tint[0] = np.broadcast_to(v, (3, 256))  # no entity: the pixel itself
    contour = np.broadcast_to((colours * 0.6)[:, :, None], tint.shape)
    table = np.clip(np.concatenate([tint, contour]) + 0.5, 0, 255).astype(np.uint8)  # [2n, 3, 256]
    code = row[ids]  # [H, W]: table row of each pixel
    code += edge * np.int32(len(listed))
    code <<= 8
    # one channel at a time: [H, W] indices (a third of the memory traffic of [H, W, 3] ones)
    return np.stack([np.ascontiguousarray(table[:, c]).reshape(-1).take(code + image[..., c]) for c in range(3)], -1)
