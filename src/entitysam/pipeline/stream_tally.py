"""The running counts of an online stream: per-entity tracks and latency of the frames delivered,
and the progress bar (what `OnlineStream.entities` and the final manifest report)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .progress import progress_bar
from .result import Entity, OnlineFrame

__all__ = ["StreamTally"]


@dataclass
class _Track:
    """One entity over the frames delivered so far (score: its latest running score)."""

    query_index: int
    score: float
    first_frame: int
    last_frame: int
    num_frames: int = 0
    area: int = 0


class StreamTally:
    """Counts of the delivered frames: `emitted`, the tracks (one per entity id), latency mean
    and max, and an optional progress bar (`total`: the source's frame count estimate)."""

    def __init__(self, progress: bool, total: int | None, desc: str):
        self.emitted = 0
        self._tracks: dict[int, _Track] = {}
        self._latency_sum = 0.0
        self._latency_max = 0.0
        self._bar = progress_bar(progress, total, desc)

    def add(self, r: OnlineFrame, dropped_so_far: int) -> None:
        """Count one delivered frame (dropped_so_far: shown on the progress bar)."""
        for seg in r.segments:
            tr = self._tracks.get(seg.id)
            if tr is None:
                tr = self._tracks[seg.id] = _Track(seg.query_index, seg.score, r.t, r.t)
            tr.score, tr.last_frame = seg.score, r.t
            tr.num_frames += 1
            tr.area += seg.area
        self.emitted += 1
        self._latency_sum += r.latency_seconds
        self._latency_max = max(self._latency_max, r.latency_seconds)
        if self._bar is not None:
            self._bar.update(1)
            if dropped_so_far:
                self._bar.set_postfix_str(f"dropped {dropped_so_far}", refresh=False)

    @property
    def num_entities(self) -> int:
        return len(self._tracks)

    def entities(self) -> list[Entity]:
        """Entities seen so far, in increasing id, with their latest running score."""
        return [Entity(sid, float(tr.score), int(tr.query_index), tr.first_frame, tr.last_frame, tr.num_frames,
                       tr.area) for sid, tr in sorted(self._tracks.items())]

    def latency(self) -> dict[str, Any]:
        """{"mean", "max"} seconds from reading a frame to delivering its result (mean None before any)."""
        return {"mean": round(self._latency_sum / self.emitted, 4) if self.emitted else None,
                "max": round(self._latency_max, 4)}

    def close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
