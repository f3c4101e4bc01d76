"""The VIPSeg evaluation runner (`entitysam eval vipseg`): inference on every video of a split,
the official output layout, then VEQ / STQ.

    plan.py     what to evaluate: the videos of the split, their frames, the ground-truth checks
    output.py   the output folder: run.json, the per-video transaction (stage, commit), merge
    run.py      the run: shard slice, inference per video, merge and score
    memory.py   the peak memory of each video (log.json)
The command line (`entitysam eval vipseg`, alone or under torchrun) is `entitysam.cli.eval`.
"""

from .output import EvalOutput, IncompleteError, merge_outputs
from .plan import EvalInputError, VideoEntry, VIPSegPlan, list_video_frames, load_plan
from .run import EvalSummary, evaluate_vipseg, finish, parse_shard, score_outputs, shard_videos

__all__ = ["EvalInputError", "IncompleteError", "VideoEntry", "VIPSegPlan", "EvalSummary", "EvalOutput", "load_plan",
           "parse_shard", "shard_videos", "list_video_frames", "evaluate_vipseg", "merge_outputs", "score_outputs",
           "finish"]
