"""The running counts of an online stream: per-entity tracks and latency of the frames delivered,
the progress bar, and the summary (what `OnlineStream.entities` and the final manifest report)."""

from __future__ import annotations

from typing import Any

from ..io.entities import EntityStats
from .progress import progress_bar
from .result import Entity, OnlineFrame

__all__ = ["StreamTally"]


class StreamTally:
    """Counts of the delivered frames: `emitted`, the tracks (one per entity id: first / last
    frame, frames present and area, as offline's `EntityStats`, and its latest running score),
    latency mean and max, and an optional progress bar (`total`: the source's frame count estimate)."""

    def __init__(self, progress: bool, total: int | None, desc: str):
        self.emitted = 0
        self._stats = EntityStats()
        self._latest: dict[int, tuple[int, float]] = {}  # id -> (query index, latest running score)
        self._latency_sum = 0.0
        self._latency_max = 0.0
        self._bar = progress_bar(progress, total, desc)

    def add(self, r: OnlineFrame, dropped_so_far: int) -> None:
        """Count one delivered frame (dropped_so_far: shown on the progress bar)."""
        for seg in r.segments:
            self._latest[seg.id] = (seg.query_index, seg.score)
        self._stats.add(r.t, ((seg.id, seg.area) for seg in r.segments))
        self.emitted += 1
        self._latency_sum += r.latency_seconds
        self._latency_max = max(self._latency_max, r.latency_seconds)
        if self._bar is not None:
            self._bar.update(1)
            if dropped_so_far:
                self._bar.set_postfix_str(f"dropped {dropped_so_far}", refresh=False)

    @property
    def num_entities(self) -> int:
        return len(self._latest)

    def entities(self) -> list[Entity]:
        """Entities seen so far, in increasing id, with their latest running score."""
        return [Entity(sid, float(score), int(q), **self._stats.record(sid))
                for sid, (q, score) in sorted(self._latest.items())]

    def latency(self) -> dict[str, Any]:
        """{"mean", "max"} seconds from reading a frame to delivering its result (mean None before any)."""
        return {"mean": round(self._latency_sum / self.emitted, 4) if self.emitted else None,
                "max": round(self._latency_max, 4)}

    def summary(self, *, frames_read: int, processed: int, dropped: int, unprocessed: int,
                seconds: dict[str, float], total_seconds: float, error: str | None) -> dict[str, Any]:
        """Counts, tracks and timings of the stream (what the final manifest records)."""
        return {
            "frames_read": frames_read,
            "frames_processed": processed,
            "frames_emitted": self.emitted,
            "dropped_frames": dropped,
            "unprocessed_frames": unprocessed,
            "entities": self.num_entities,
            "tracks": [{"id": e.id, "query_index": e.query_index, "score": e.score, "first_frame": e.first_frame,
                        "last_frame": e.last_frame, "num_frames": e.num_frames, "area": e.area}
                       for e in self.entities()],
            "seconds": {**{k: round(v, 3) for k, v in seconds.items()}, "total": round(total_seconds, 3)},
            "latency_seconds": self.latency(),
            **({"error": error} if error else {}),
        }

    def close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
