"""The output folder of an online stream: its manifest head and the `OnlineWriter`, created with
the first delivered frame (the frame size, recorded in the manifest, is known then)."""

from __future__ import annotations

from dataclasses import asdict
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import __version__
from ..io.sources import FrameSource
from ..io.stream_files import OnlineWriter
from .result import OnlineFrame, input_field, sample_aspect_ratio_field

__all__ = ["online_manifest_head", "StreamOutput"]


def online_manifest_head(source: FrameSource, *, live: bool, delay: int, queue_size: int,
                         size: tuple[int, int] | None, fps: float, model: dict[str, Any]) -> dict[str, Any]:
    """What the manifest of an online result says about its input and settings (model: `model_info`)."""
    return {
        "format": "entitysam-online",
        "format_version": 1,
        "entitysam_version": __version__,
        "video": source.name,
        "input": input_field(source),
        "live": live,
        "selection": asdict(source.selection),
        "delay": delay,
        "queue_size": queue_size,
        "size": list(size) if size else None,
        "sample_aspect_ratio": sample_aspect_ratio_field(source),
        "fps": fps,
        "model": model,
    }


class StreamOutput:
    """Writes each delivered frame's files into `folder` (see `OnlineWriter`) and finishes them.
    head: builds the manifest head when the first frame arrives."""

    def __init__(self, folder: Path, *, video: str, formats: tuple[str, ...], fps: float, labels: bool,
                 live: bool, overwrite: bool, protect: Sequence[Path], head: Callable[[], dict[str, Any]],
                 measure_fps: bool = False):
        self.folder = folder
        self._writer_args = dict(video=video, formats=formats, fps=fps, labels=labels, timestamps=live,
                                 overwrite=overwrite, protect=protect, measure_fps=measure_fps)
        self._head = head
        self.writer: OnlineWriter | None = None

    def write(self, r: OnlineFrame) -> None:
        """One delivered frame's files (the writer is created with the first one)."""
        if self.writer is None:
            head = self._head()  # (its pixel shape is final: the first frame is decoded)
            self.writer = OnlineWriter(self.folder, manifest=head, **self._writer_args,
                                       sample_aspect_ratio=Fraction(*head["sample_aspect_ratio"]))
        records = [{"id": s.id, "query_index": s.query_index, "score": round(s.score, 6), "area": s.area,
                    "bbox": list(s.bbox)} for s in r.segments]
        self.writer.add(r.t, r.frame, r.id_map, records, r.image,
                        {"dropped": r.dropped, "lookahead": r.lookahead, "latency": round(r.latency_seconds, 4)})

    @property
    def pending(self) -> bool:
        """Files were written and are not finished yet."""
        return self.writer is not None and not self.writer.finished

    def finish(self, status: str, summary: dict[str, Any]) -> dict[str, Any]:
        """The final manifest (its status is ``failed`` if the files could not be finished)."""
        return self.writer.finish(status, summary)
