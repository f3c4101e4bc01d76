"""Many videos, many processes: one video as every runner does it (:mod:`.jobs`), and sharded
local runs (:mod:`.local`: ``--shard I/N``, torchrun ranks, Slurm array tasks).

Layer: above ``pipeline``; ``cli`` uses it.
"""

from .jobs import SegmentOptions, VideoJob, VideoOutcome, segment_job
from .ray_runner import segment_many  # Ray itself is imported only when segment_many runs

__all__ = ["VideoJob", "SegmentOptions", "VideoOutcome", "segment_job", "segment_many"]
