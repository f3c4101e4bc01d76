"""`entitysam demo`: generate a synthetic video, segment it with the bundled demo model, score it.

    entitysam demo                      # -> entitysam-demo/demo/overlay.mp4 and a VEQ/STQ report
    entitysam demo -o out --frames 60 --seed 7 --labels

Writes into OUTPUT (default `entitysam-demo/`)::

    input/images/demo/%08d.jpg           the generated video (a folder of frames)
    input/panomasksRGB/demo/%08d.png     its ground truth (VIPSeg layout)
    input/panoptic_gt_VIPSeg_demo.json
    demo/                                what `entitysam segment` writes: panoptic/, panoptic.json,
                                         entities.json, overlay.mp4, manifest.json
    report.json, report.txt              VEQ / STQ of demo/ against the ground truth

The demo model knows only these synthetic scenes (docs/demo-model.md); real videos need vit-s or
vit-l. The scene is `entitysam.data.synthetic.scenes.render_demo_scene`: textured sky, ground and
sometimes a wall, drifting shapes, one that enters, one that leaves, occlusions.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .. import jsonio
from ..argtypes import InvalidArgumentError, check_int
from ..errors import OutputError
from ..eval.metrics import format_table
from ..data.synthetic.demo import DEMO_DEFAULTS, make_demo_video
from ..io.atomic import write_text_atomic
from ..io.manifest import written_by_entitysam
from ..io.output_lock import OutputLock
from ..io.owned import foreign_entries, list_foreign, result_foreign
from ..io.paths import check_not_input
from ..jsonio import jsonable
from .loading import from_pretrained
from .result import check_formats
from .segment import segment

__all__ = ["DemoReport", "DemoOutputInUseError", "check_demo_request", "run_demo", "score_prediction"]

VIDEO_NAME = "demo"
DEMO_MARKER = ".entitysam-demo"  # marks a folder a demo run wrote (what --overwrite may replace)
# What --overwrite deletes or rewrites in OUTPUT besides VIDEO_NAME/ (a result folder): what a demo
# run wrote there. The marker is listed so that a link in its place is foreign: it was written
# through, into the file it led to.
DEMO_LAYOUT = {DEMO_MARKER: None, "input": {"images": {VIDEO_NAME: {re.compile(r"[0-9]{8}\.jpg"): None}},
                         "panomasksRGB": {VIDEO_NAME: {re.compile(r"[0-9]{8}\.png"): None}},
                         "panoptic_gt_VIPSeg_demo.json": None},
               "report.json": None, "report.txt": None}


class DemoOutputInUseError(OutputError):
    """The demo's output folder holds files: overwrite was not asked for, or they are not an
    earlier demo run's (which overwrite never deletes). path: the folder; foreign: the paths
    (relative to it) that overwrite would delete and a demo run did not write."""

    def __init__(self, path: Path, *, earlier_demo: bool, overwrite: bool, foreign: list[str] | None = None):
        self.path = path
        self.earlier_demo = earlier_demo
        self.overwrite = overwrite
        self.foreign = list(foreign or [])
        super().__init__(self.describe("overwrite=True", "choose another output folder"))

    def describe(self, overwrite_option: str, choose_other: str) -> str:
        """The message, naming the caller's overwrite option and how to choose another folder."""
        if not self.overwrite:
            what = "the earlier demo run" if self.earlier_demo else "its contents"
            return f"{self.path} is not empty: pass {overwrite_option} to replace {what}, or {choose_other}"
        if self.foreign:
            return (f"{self.path} holds files a demo run did not write ({list_foreign(self.path, self.foreign)}): "
                    f"refusing to delete them even with {overwrite_option}: move them away or {choose_other}")
        return (f"{self.path} holds files that are not a demo run; refusing to delete them even with "
                f"{overwrite_option}: {choose_other}")


@dataclass
class DemoReport:
    """Result of :func:`run_demo`. veq / stq are fractions in [0, 1]; veq is the mean over the
    window lengths (official VEQ), veq_windows maps window length (frames) to VEQ."""

    output: Path
    overlay: Path | None
    num_frames: int
    num_entities_gt: int
    num_entities_pred: int
    veq: float
    stq: float
    aq: float
    iou: float
    veq_windows: dict[int, float]
    seconds: dict[str, float]
    model: dict[str, Any]
    table: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "video": VIDEO_NAME, "output": str(self.output), "overlay": str(self.overlay) if self.overlay else None,
            "num_frames": self.num_frames, "num_entities_gt": self.num_entities_gt,
            "num_entities_pred": self.num_entities_pred, "veq": self.veq, "stq": self.stq, "aq": self.aq,
            "iou": self.iou, "veq_windows": {str(k): v for k, v in self.veq_windows.items()},
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()}, "model": self.model,
        }


def score_prediction(panoptic_dir: Path, panoptic_json: Path, gt_dir: Path, gt_json: Path) -> dict[str, Any]:
    """VEQ and STQ (`entitysam.eval.metrics.evaluate`) of one `entitysam segment` output.

    The metrics read the official layout (`PRED/pan_pred/<video>/` + `PRED/pred.json`); the
    segment output is copied into it in a temporary folder (a few small PNGs).
    """
    from ..eval.metrics import evaluate  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix=".entitysam-demo-metrics-") as tmp:
        pred = Path(tmp)
        shutil.copytree(panoptic_dir, pred / "pan_pred" / VIDEO_NAME)
        shutil.copyfile(panoptic_json, pred / "pred.json")
        return evaluate(pred, gt_dir, gt_json, workers=1)


DEMO_MAX_PIXELS = 40 * 4096 * 4096  # frames x width x height: the scene is rendered in memory (~14 bytes a pixel)


def check_demo_size(width: int, height: int) -> None:
    if not (32 <= width <= 4096 and 32 <= height <= 4096):
        raise InvalidArgumentError(f"the demo size must be between 32x32 and 4096x4096, got {width}x{height}")


def check_demo_length(num_frames: int, width: int, height: int) -> None:
    """The whole synthetic video is rendered in memory: at most DEMO_MAX_PIXELS pixels (40 frames
    of 4096x4096, or 655360 of 32x32)."""
    if num_frames * width * height > DEMO_MAX_PIXELS:
        raise InvalidArgumentError(f"the demo video is rendered in memory: frames x width x height must be at most "
                                   f"{DEMO_MAX_PIXELS} (e.g. 40 frames of 4096x4096), got {num_frames} frames of "
                                   f"{width}x{height}")


def check_demo_request(output: str | Path, *, num_frames: int, width: int, height: int, seed: int,
                       formats=("panoptic", "entities", "overlay"), overwrite: bool = False) -> tuple[str, ...]:
    """Every check of a demo run, without side effects (the command line runs it before loading
    a checkpoint): the numbers, the formats, and an output folder that may be (re)written.
    Returns the formats."""
    check_int(num_frames, "num_frames", 1)
    check_int(width, "width", 1)
    check_int(height, "height", 1)
    check_demo_size(width, height)
    check_demo_length(num_frames, width, height)
    check_int(seed, "seed", 0)
    if seed >= 2**32:
        raise InvalidArgumentError(f"seed must be below 2**32, got {seed}")
    formats = check_formats(formats)
    if "panoptic" not in formats:
        raise InvalidArgumentError("the demo report scores the panoptic output: the formats must include 'panoptic'")
    out = Path(output)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise OutputError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        ours = _is_marker(out / DEMO_MARKER) or _is_demo_report(out / "report.json")
        if not overwrite or not ours:
            raise DemoOutputInUseError(out, earlier_demo=ours, overwrite=overwrite)
        _check_only_demo_files(out)
    return formats


def _check_only_demo_files(out: Path) -> None:
    """DemoOutputInUseError if what overwrite replaces in `out` (input/, demo/, the report)
    holds anything a demo run did not write; the other entries of `out` are never touched."""
    foreign = foreign_entries(out, DEMO_LAYOUT, only=tuple(DEMO_LAYOUT))
    video = out / VIDEO_NAME
    if os.path.lexists(video):
        if not written_by_entitysam(video):  # also a link or a file: result folders are real folders
            foreign.append(VIDEO_NAME + ("/" if video.is_dir() and not video.is_symlink() else ""))
        else:
            foreign += [f"{VIDEO_NAME}/{p}" for p in result_foreign(video)]
    if foreign:
        raise DemoOutputInUseError(out, earlier_demo=True, overwrite=True, foreign=sorted(foreign))


def run_demo(output: str | Path = "entitysam-demo", *, model=None, num_frames: int = DEMO_DEFAULTS["num_frames"],
             width: int = DEMO_DEFAULTS["width"], height: int = DEMO_DEFAULTS["height"],
             seed: int = DEMO_DEFAULTS["seed"], formats=("panoptic", "entities", "overlay"), labels: bool = False,
             overwrite: bool = False, device: str = "cpu", progress: bool = False,
             say: Callable[[str], None] = lambda msg: None) -> DemoReport:
    """Generate the demo video, segment it, write all outputs and the report (see module doc).

    model: an EntitySAM model (default: the bundled demo model, `from_pretrained("demo")`).
    formats must include "panoptic" (the report scores it). Refuses an OUTPUT folder that holds
    anything but an earlier demo run unless `overwrite`, which then replaces only the files a demo
    run writes. Raises EntitySAMError for bad input.
    """
    formats = check_demo_request(output, num_frames=num_frames, width=width, height=height, seed=seed,
                                 formats=formats, overwrite=overwrite)
    for fmt, module, what in (("overlay", "av", "overlay.mp4"), ("entities", "pycocotools", "entities.json")):
        if fmt in formats and importlib.util.find_spec(module) is None:
            # a core-only install (no `video` extra) still gets the masks and the report
            say(f"note: {what} needs {module} (pip install 'entitysam[video]'); writing the other outputs")
            formats = tuple(f for f in formats if f != fmt)
    out = Path(output)
    # One demo run per folder at a time (the OS lock of `out`, released however this run ends).
    lock = OutputLock.acquire(out)
    try:
        _prepare_output(out, model)
        return _run_demo(out, model, num_frames, width, height, seed, formats, labels, device, progress, say)
    finally:
        lock.release()


def _prepare_output(out: Path, model) -> None:
    """Delete only what an earlier demo run wrote (`check_demo_request` refused anything else;
    checked again here, with the lock held), never the checkpoint in use."""
    if out.is_dir() and any(out.iterdir()):
        _check_only_demo_files(out)
        checkpoint = getattr(model, "checkpoint_path", None)
        for entry in ("input", "report.json", "report.txt", VIDEO_NAME):
            if checkpoint and os.path.lexists(out / entry):
                check_not_input(out / entry, [Path(checkpoint)], "the earlier demo output")
        shutil.rmtree(out / "input", ignore_errors=True)  # regenerated; the rest is replaced when written
        for name in ("report.json", "report.txt"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    # replaced, never written into: a hard link in its place keeps the other file's content
    write_text_atomic(out / DEMO_MARKER, "written by `entitysam demo`; overwriting replaces only its own files\n")


def _is_marker(path: Path) -> bool:
    """Whether `path` is a demo run's marker: a regular file itself, not a link to one."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _is_demo_report(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "veq" in data and "stq" in data


def _run_demo(out: Path, model, num_frames, width, height, seed, formats, labels, device, progress,
              say) -> DemoReport:
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    video = make_demo_video(out / "input", num_frames=num_frames, width=width, height=height, seed=seed,
                            name=VIDEO_NAME)
    seconds["generate"] = time.perf_counter() - t0
    say(f"generated a {num_frames}-frame {width}x{height} video (seed {seed}) in {video.frames_dir}")

    t0 = time.perf_counter()
    if model is None:
        model = from_pretrained("demo", device=device)
    seconds["load"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    with segment(model, video.frames_dir, name=VIDEO_NAME, fps=10.0, progress=progress) as result:
        seconds["segment"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        final = result.save(out / VIDEO_NAME, formats=formats, labels=labels, overwrite=True)
        seconds["write"] = time.perf_counter() - t0
        model_info = result.model_info
        num_pred = len([e for e in result.entities if e.num_frames > 0])

    t0 = time.perf_counter()
    metrics = score_prediction(final / "panoptic", final / "panoptic.json", video.gt_dir, video.gt_json)
    seconds["metrics"] = time.perf_counter() - t0
    gt = json.loads(video.gt_json.read_text())
    num_gt = len({s["id"] for fr in gt["annotations"][0]["annotations"] for s in fr["segments_info"]})
    veq, stq = metrics["veq"], metrics["stq"]
    table = format_table(metrics)
    report = DemoReport(
        output=out, overlay=(final / "overlay.mp4") if "overlay" in formats else None, num_frames=num_frames,
        num_entities_gt=num_gt, num_entities_pred=num_pred, veq=veq["final"]["vpq"] / 100.0, stq=float(stq["STQ"]),
        aq=float(stq["AQ"]), iou=float(stq["IoU"]),
        veq_windows={int(w["nframes"]): w["vpq"] / 100.0 for w in veq["windows"].values()},
        seconds=seconds, model=model_info, table=table)
    (out / "report.json").write_text(jsonio.dumps(jsonable({**report.to_dict(), "metrics": metrics}), indent=1))
    (out / "report.txt").write_text(summary(report) + "\n\n" + table + "\n")
    return report


def summary(report: DemoReport) -> str:
    lines = [
        f"demo video: {report.num_frames} frames, {report.num_entities_gt} entities in the ground truth, "
        f"{report.num_entities_pred} found",
        f"VEQ {report.veq:.3f}   STQ {report.stq:.3f} (AQ {report.aq:.3f}, IoU {report.iou:.3f})   "
        f"model {report.model.get('config')}",
    ]
    if report.overlay is not None:
        lines.append(f"watch: {report.overlay}")
    lines.append("(the demo model knows only synthetic scenes like this one; real videos need the vit-s or vit-l model)")
    return "\n".join(lines)

