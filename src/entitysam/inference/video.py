"""Whole-video inference: track every step, keep the logits compactly, merge into id maps.

Low-res logits of every output frame are needed by the video-level merge. They are appended to
a memory-mapped file (frame-major [n, Q, h, w]) in a temporary directory, so RAM use does not
grow with the number of frames.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from ..modeling.entitysam import EntitySAM
from .offline_merge import PanopticResult, merge_video_panoptic
from .merge_rules import mean_step_scores
from .tracker import EntityTracker, StepResult


class LogitStore:
    """Append-only frame-major store of low-res logits, read back as [Q, n, h, w] chunks.

    Backed by a growing raw file; `dtype` float32 keeps the merge exact, float16 halves the disk.
    """

    def __init__(self, directory: str | Path, num_queries: int, size: int, dtype: np.dtype = np.float32):
        self.path = Path(directory) / "lowres_logits.bin"
        self.dtype = np.dtype(dtype)
        self.frame_shape = (num_queries, size, size)
        self.num_frames = 0
        self._file = open(self.path, "wb")
        self._pending: tuple[torch.Tensor, torch.cuda.Event] | None = None

    def append(self, logits: torch.Tensor) -> None:
        """logits [Q, 1, h, w] or [Q, h, w].

        From a CUDA device the copy to the host is queued behind the step that made the logits
        and written to disk at the next append (or read): the host never waits for the GPU in
        the middle of a video.
        """
        logits = logits.reshape(self.frame_shape)
        if logits.device.type != "cuda":
            self._write(logits)
            return
        host = torch.empty(logits.shape, dtype=logits.dtype, pin_memory=True)
        host.copy_(logits, non_blocking=True)
        done = torch.cuda.Event()
        # The copy runs on the logits' GPU, which need not be the current device (`--device
        # cuda:1`): an event on the current device's stream would not wait for it.
        done.record(torch.cuda.current_stream(logits.device))
        self._write_pending()
        self._pending = (host, done)

    def _write_pending(self) -> None:
        if self._pending is not None:
            host, done = self._pending
            done.synchronize()
            self._pending = None
            self._write(host)

    def _write(self, logits: torch.Tensor) -> None:
        self._file.write(logits.cpu().numpy().astype(self.dtype, copy=False).tobytes())
        self.num_frames += 1

    def close(self) -> None:
        if not self._file.closed:
            self._write_pending()
            self._file.close()

    @property
    def shape(self) -> tuple[int, int, int, int]:
        q, h, w = self.frame_shape
        return (q, self.num_frames, h, w)

    def frames(self) -> np.memmap:
        """[n, Q, h, w] read-only view of everything appended."""
        if not self._file.closed:
            self._write_pending()
            self._file.flush()
        return np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.num_frames, *self.frame_shape))

    def __getitem__(self, index) -> np.ndarray:
        """Supports `store[:, t0:t1]` -> [Q, t1-t0, h, w] (the merge's access pattern)."""
        queries, frames = index
        if queries != slice(None):
            raise IndexError("LogitStore supports [:, t0:t1] indexing only")
        return np.ascontiguousarray(self.frames()[frames].transpose(1, 0, 2, 3))


@dataclass
class VideoSegmentation:
    """Result of `segment_video`.

    scores [Q] video-level entity scores (mean eIoU over all steps, warm-up included),
    panoptic: id maps [n, H, W] (0 = no entity) and the kept segments (id_maps is None when the
    maps were streamed to `frames_out`),
    steps: per-step results when `keep_steps=True` (else empty).
    """

    scores: torch.Tensor
    panoptic: PanopticResult
    out_size: tuple[int, int]
    num_frames: int
    steps: list[StepResult] = field(default_factory=list)


def segment_video(model: EntitySAM, frames: Iterable[tuple[int, torch.Tensor]], out_size: tuple[int, int], *,
                  keep_steps: bool = False, logits_dtype: np.dtype = np.float32,
                  on_step: Callable[[StepResult], None] | None = None,
                  work_dir: str | Path | None = None,
                  frames_out: Callable[[int, np.ndarray], None] | None = None,
                  on_logits: Callable[[LogitStore, torch.Tensor], None] | None = None,
                  memory_dtype: torch.dtype | None = None,
                  attention_dtype: torch.dtype | None = None,
                  exact: bool = False,
                  frame_chunk: int | None = None,
                  batched: bool | None = None) -> VideoSegmentation:
    """Segment and track every entity of a video.

    frames: (frame_index, preprocessed image [1, 3, S, S]) pairs in temporal order; they are
    consumed lazily. out_size: (H, W) of the id maps (the official code uses frame 0's size).
    work_dir: where the temporary logit store is created (default: the system temp folder).
    frames_out: optional `frames_out(t, id_map [H, W] int32)` called for t = 0 .. n-1 in order;
    the maps are then streamed (never held as [n, H, W]) and `panoptic.id_maps` is None.
    on_logits: optional `on_logits(store, scores)` called once tracking is done, before the
    merge, with the low-res logit store (`store.frames()` is [n, Q, h, w]) and the [Q] scores.
    memory_dtype: dtype of the stored memories (default: the tracker's, bfloat16 as official);
    float16 autocast needs float16 here (it cannot mix bfloat16 inputs).
    attention_dtype: run only the memory attention in this dtype (see
    `EntitySAM.condition_on_memory`; the CPU bfloat16 mode).
    exact: the official order of floating-point operations (see `EntitySAM.step`; about the
    official speed, per-step outputs bit-identical to it on the same CPU and thread count).
    frame_chunk: frames merged together (None: memory-budgeted default; any value gives the
    same maps, 1 keeps peak memory lowest and flat).
    batched: all queries at once (see `EntityTracker`; None: on every device but the CPU). On
    such a device the merge's per-pixel assignment runs there too.
    """
    tracker = EntityTracker(model, attention_dtype=attention_dtype, exact=exact, batched=batched,
                            memory_dtype=memory_dtype)
    merge_device = tracker.device if tracker.device.type != "cpu" else None
    step_scores: list[torch.Tensor] = []  # [Q] per step: 200 bytes a frame
    steps: list[StepResult] = []
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="entitysam-") as tmp:
        store = LogitStore(tmp, model.cfg.num_queries, model.cfg.lowres_mask_size, logits_dtype)
        try:
            for result in tracker.track(frames):
                step_scores.append(result.scores)
                if not result.is_warmup:
                    store.append(result.mask_logits)
                if keep_steps:
                    steps.append(result)
                if on_step is not None:
                    on_step(result)
        finally:
            store.close()
        if not step_scores:
            raise ValueError("the video has no frames")
        scores = mean_step_scores(step_scores, tracker.score_dtype).cpu()
        if on_logits is not None:
            on_logits(store, scores)
        panoptic = merge_video_panoptic(scores, store, out_size, frames_out=frames_out, frame_chunk=frame_chunk,
                                        device=merge_device, work_dir=tmp)
    return VideoSegmentation(scores, panoptic, tuple(out_size), store.num_frames, steps)
