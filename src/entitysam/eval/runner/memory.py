"""Peak memory per video of a VIPSeg evaluation (``log.json``): resident memory and CUDA."""

from __future__ import annotations

import resource
import sys
from typing import Any

__all__ = ["PeakMemory"]


class PeakMemory:
    """Per-video peak RSS (Linux: the high-water mark is reset before each video) and CUDA
    max allocated memory; the process peak is tracked across resets."""

    def __init__(self, device: Any = None):
        self.device = device
        self.process_peak_mib = self._maxrss_mib()
        self.per_video = False

    @staticmethod
    def _maxrss_mib() -> float:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kib / (1024 * 1024) if sys.platform == "darwin" else kib / 1024  # macOS reports bytes

    def _cuda(self) -> bool:
        return self.device is not None and getattr(self.device, "type", None) == "cuda"

    def reset(self) -> None:
        self.process_peak_mib = max(self.process_peak_mib, self._maxrss_mib())
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak RSS ("VmHWM") to the current RSS
            self.per_video = True
        except OSError:
            self.per_video = False
        if self._cuda():
            import torch  # noqa: PLC0415

            torch.cuda.reset_peak_memory_stats(self.device)

    def read(self) -> dict[str, Any]:
        peak = self._maxrss_mib()
        self.process_peak_mib = max(self.process_peak_mib, peak)
        out: dict[str, Any] = {
            "peak_rss_mib": round(peak, 1),
            "peak_rss_scope": "video" if self.per_video else "process",
            "process_peak_rss_mib": round(self.process_peak_mib, 1),
            "cuda_max_allocated_mib": None,
        }
        if self._cuda():
            import torch  # noqa: PLC0415

            out["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        return out
