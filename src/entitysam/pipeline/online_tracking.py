"""The model side of online mode: one frame at a time through preprocessing and the tracker (in
the run's precision), then into the online merger's look-ahead window."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..inference.precision import memory_dtype_for, precision_plan
from ..modeling.entitysam import EntitySAM
from ..inference.online_merge import Emitted, OnlineMerger
from ..inference.preprocess import preprocess_frame
from ..inference.tracker import EntityTracker

__all__ = ["OnlineTracking"]


class OnlineTracking:
    """Tracker + online merger of one stream. The merger is created with the first frame (its
    size, (H, W), is the output size)."""

    def __init__(self, model: EntitySAM, compute_dtype: torch.dtype, delay: int, exact: bool = False):
        self.model = model
        self.compute_dtype = compute_dtype
        self.delay = delay
        self.exact = exact
        self.tracker = EntityTracker(model, attention_dtype=precision_plan(model, compute_dtype, exact=exact)[1],
                                     exact=exact, memory_dtype=memory_dtype_for(compute_dtype))
        self.merger: OnlineMerger | None = None

    def track(self, t: int, image: np.ndarray, size: tuple[int, int]) -> list[Any]:
        """Frame t ([H, W, 3] uint8 of size (H, W)) through the model: its tracker steps (frame 0:
        the warm-up copies, then the frame itself)."""
        if self.merger is None:
            cfg = self.model.cfg
            self.merger = OnlineMerger(cfg.num_queries, size, self.delay, warmup_steps=cfg.num_warmup_copies)
        x = preprocess_frame(image, self.model.cfg.image_size)
        with precision_plan(self.model, self.compute_dtype, self.tracker.batched, self.exact)[0]:  # fresh per frame
            return list(self.tracker.track([(t, x)]))

    def push(self, step: Any, payload: Any = None) -> list[Emitted]:
        """A step into the merger: the frames it lets out of the look-ahead window, in order."""
        return self.merger.push_step(step, payload)

    @property
    def window_pending(self) -> bool:
        """Frames are still in the look-ahead window (emitted by :meth:`finish`)."""
        return self.merger is not None and not self.merger.finished

    def finish(self) -> list[Emitted]:
        """End of the stream: the look-ahead window is emitted with what is known."""
        return self.merger.finish()
