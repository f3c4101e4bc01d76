"""VIPSeg evaluation runner: inference on every video of a split, official output layout, metrics.

    entitysam eval vipseg --data-root datasets/VIPSeg_720P --split val --model vit-s --output DIR

Like the official ``eval/eval_vipseg_entity_seg.py``, the videos are those of the GT JSON
(``panoptic_gt_VIPSeg_<split>.json``, in its order), the frames of a video are the JPEGs of
``images/<video>/`` in ``sorted()`` order, and the predictions are written as
``DIR/pan_pred/<video>/<stem>.png`` + ``DIR/pred.json``; then VEQ and STQ are computed
(:func:`entitysam.eval.metrics.evaluate`) into ``DIR/metrics.json``.

Output folder::

    DIR/run.json                 what the folder holds (split, video list); checked on every re-run
    DIR/pan_pred/<video>/*.png   predicted ids (R + 256 G + 65536 B), one PNG per frame
    DIR/parts/<video>.json       the video's pred.json entry + its statistics; written last
    DIR/logs/<run>.jsonl         one line per video and process: done / skipped / failed
    DIR/pred.json                assembled from the parts once every video is complete
    DIR/log.json                 per-video time, frames/s, peak memory, and totals
    DIR/metrics.json             VEQ / STQ (as ``entitysam metrics --json``) + a "run" summary

Resuming: a video is complete when its part file exists (its PNG folder is renamed into
place before the part is written, from a hidden ``pan_pred/.<video>.partial-*`` folder), so
an interrupted video is redone and a complete one is skipped. Sharding: ``--shard I/N`` (and
each rank under ``torchrun``) takes a deterministic slice of the video list, balanced by
frame count; the run that completes the last video (or ``--merge-only``) merges and scores.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import resource
import secrets
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .. import jsonio
from ..argtypes import check_int, positive_float, positive_int
from ..errors import EntitySAMError, OutputError
from ..io.output_lock import pid_alive

__all__ = [
    "EvalInputError",
    "IncompleteError",
    "VideoEntry",
    "VIPSegPlan",
    "EvalSummary",
    "load_plan",
    "parse_shard",
    "shard_videos",
    "list_video_frames",
    "evaluate_vipseg",
    "merge_outputs",
    "main",
]

PathLike = str | os.PathLike
JPEG_EXTENSIONS = (".jpg", ".jpeg", ".JPG", ".JPEG")  # the official list (eval:230-233)
RUN_FILE = "run.json"
RUN_FORMAT = "entitysam-eval-vipseg"
PART_FORMAT = "entitysam-eval-vipseg-part"


class EvalInputError(EntitySAMError):
    """The data root, split, GT JSON, frames or output folder do not allow the evaluation to run."""


class IncompleteError(EntitySAMError):
    """Some videos have no complete predictions yet (merge requested too early)."""

    def __init__(self, message: str, missing: Sequence[str]):
        super().__init__(message)
        self.missing = list(missing)


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class VideoEntry:
    video_id: str
    gt_names: tuple[str, ...]  # GT image file names, in GT order (may be empty without GT)

    @property
    def num_frames(self) -> int:
        return len(self.gt_names)


@dataclass
class VIPSegPlan:
    """What to evaluate: the videos (GT JSON order, filtered by the split file) and where things are."""

    data_root: Path
    split: str
    gt_json: Path
    gt_doc: dict[str, Any] = field(repr=False)
    gt_dir: Path
    images_dir: Path
    split_file: Path | None
    videos: list[VideoEntry]
    gt_videos: int  # videos in the GT JSON

    @property
    def subset(self) -> bool:
        return len(self.videos) != self.gt_videos

    @property
    def video_ids(self) -> list[str]:
        return [v.video_id for v in self.videos]

    def gt_for_metrics(self) -> dict[str, Any]:
        """The GT JSON document restricted to the plan's videos (the document itself if all)."""
        if not self.subset:
            return self.gt_doc
        keep = set(self.video_ids)
        doc = dict(self.gt_doc)
        doc["videos"] = [v for v in self.gt_doc["videos"] if v.get("video_id") in keep]
        doc["annotations"] = [a for a in self.gt_doc.get("annotations", []) if a.get("video_id") in keep]
        return doc

    def fingerprint(self) -> dict[str, Any]:
        digest = hashlib.sha1("\n".join(self.video_ids).encode("utf-8")).hexdigest()
        return {"split": self.split, "num_videos": len(self.videos), "videos_sha1": digest}


def _few(names: Sequence[str], k: int = 5) -> str:
    shown = ", ".join(str(n) for n in list(names)[:k])
    return shown + (f", ... ({len(names)} in all)" if len(names) > k else "")


def official_stem(file_name: str) -> str:
    """The official output name of a frame: its file name up to the first dot (eval:173)."""
    return file_name.split("/")[-1].split(".")[0]


def _check_video_id(vid: Any, where: str) -> str:
    if not isinstance(vid, str) or not vid or vid in (".", "..") or "/" in vid or "\\" in vid or "\0" in vid:
        raise EvalInputError(f"{where}: video_id {vid!r} is not usable as a folder name")
    return vid


def _read_split_file(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise EvalInputError(f"cannot read the split file {path}: {err.strerror or err}") from None
    names = list(dict.fromkeys(line.strip() for line in lines if line.strip()))
    if not names:
        raise EvalInputError(f"the split file {path} lists no videos")
    return names


def load_plan(data_root: PathLike, split: str = "val", *, gt_json: PathLike | None = None,
              gt_dir: PathLike | None = None, split_file: PathLike | None = None,
              images_dir: PathLike | None = None) -> VIPSegPlan:
    """Read the split's video list as the official evaluation does.

    GT JSON: ``gt_json`` or ``<data_root>/panoptic_gt_VIPSeg_<split>.json`` (required; its
    ``videos`` give the list and order). Split file: ``split_file`` (must exist if given) or the
    first of ``<data_root>/<split>.txt`` and ``<data_root>/../<split>.txt`` (the VIPSeg tools put
    it beside ``VIPSeg_720P``); when found, every video it names must be in the GT JSON and only
    those are evaluated (a split file listing fewer videos evaluates that subset). Raises
    :class:`EvalInputError` with the path and the cause.
    """
    root = Path(data_root)
    if not root.exists():
        raise EvalInputError(f"data root not found: {root} (expected the VIPSeg_720P folder holding images/, "
                             f"panomasksRGB/ and panoptic_gt_VIPSeg_{split}.json)")
    if not root.is_dir():
        raise EvalInputError(f"data root {root} is not a folder")
    if not split or "/" in split or split.startswith("."):
        raise EvalInputError(f"invalid split name {split!r} (e.g. val, train, test)")
    if gt_json is None:
        gt_path = root / f"panoptic_gt_VIPSeg_{split}.json"
        if not gt_path.is_file():
            have = sorted(p.name[len("panoptic_gt_VIPSeg_"):-len(".json")]
                          for p in root.glob("panoptic_gt_VIPSeg_*.json"))
            hint = (f"splits with a GT JSON in {root}: {', '.join(have)}" if have else
                    f"{root} holds no panoptic_gt_VIPSeg_<split>.json (made by VIPSeg's "
                    "create_panoptic_video_labels.py + splitjson.py)")
            raise EvalInputError(f"GT JSON of split {split!r} not found: {gt_path} ({hint}; or pass --gt-json)")
    else:
        gt_path = Path(gt_json)
        if not gt_path.is_file():
            raise EvalInputError(f"GT JSON not found: {gt_path}")
    try:
        with open(gt_path, encoding="utf-8") as f:
            doc = json.load(f)
    except json.JSONDecodeError as err:
        raise EvalInputError(f"GT JSON {gt_path} is not valid JSON: {err}") from None
    except OSError as err:
        raise EvalInputError(f"cannot read GT JSON {gt_path}: {err.strerror or err}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("videos"), list):
        raise EvalInputError(f"GT JSON {gt_path} has no 'videos' list (not a VIPSeg panoptic GT file)")

    entries: list[VideoEntry] = []
    seen: set[str] = set()
    for i, video in enumerate(doc["videos"]):
        where = f"GT JSON {gt_path} videos[{i}]"
        if not isinstance(video, Mapping) or "video_id" not in video:
            raise EvalInputError(f"{where}: missing 'video_id'")
        vid = _check_video_id(video["video_id"], where)
        if vid in seen:
            raise EvalInputError(f"{where}: video {vid!r} is listed twice")
        seen.add(vid)
        images = video.get("images") or []
        names = []
        for j, im in enumerate(images):
            if not isinstance(im, Mapping) or not isinstance(im.get("file_name"), str):
                raise EvalInputError(f"{where} (video {vid!r}) images[{j}]: missing 'file_name'")
            names.append(im["file_name"])
        entries.append(VideoEntry(vid, tuple(names)))
    if not entries:
        raise EvalInputError(f"GT JSON {gt_path} lists no videos")

    found_split: Path | None
    if split_file is not None:
        found_split = Path(split_file)
        if not found_split.is_file():
            raise EvalInputError(f"split file not found: {found_split}")
    else:
        candidates = [root / f"{split}.txt", root.resolve().parent / f"{split}.txt"]
        found_split = next((c for c in candidates if c.is_file()), None)
    videos = entries
    if found_split is not None:
        listed = _read_split_file(found_split)
        unknown = [v for v in listed if v not in seen]
        if unknown:
            raise EvalInputError(f"the split file {found_split} lists {len(unknown)} video(s) that the GT JSON "
                                 f"{gt_path} does not: {_few(unknown)}")
        keep = set(listed)
        videos = [e for e in entries if e.video_id in keep]
    return VIPSegPlan(data_root=root, split=split, gt_json=gt_path, gt_doc=doc,
                      gt_dir=Path(gt_dir) if gt_dir is not None else root / "panomasksRGB",
                      images_dir=Path(images_dir) if images_dir is not None else root / "images",
                      split_file=found_split, videos=videos, gt_videos=len(entries))


def list_video_frames(folder: PathLike) -> list[str]:
    """The frame files of a video as the official script lists them: ``sorted(os.listdir)``
    keeping ``.jpg .jpeg .JPG .JPEG`` (hidden files skipped)."""
    return [n for n in sorted(os.listdir(folder))
            if os.path.splitext(n)[1] in JPEG_EXTENSIONS and not n.startswith(".")]


def _check_frames(plan: VIPSegPlan, videos: Sequence[VideoEntry], need_gt: bool) -> dict[str, list[str]]:
    """Frame lists of `videos`; every problem of every video in one EvalInputError."""
    if not plan.images_dir.is_dir():
        raise EvalInputError(f"frames folder not found: {plan.images_dir} (expected images/<video>/*.jpg "
                             f"in the data root)")
    problems: list[str] = []
    frames: dict[str, list[str]] = {}
    for v in videos:
        folder = plan.images_dir / v.video_id
        if not folder.is_dir():
            problems.append(f"video {v.video_id!r}: frame folder not found: {folder}")
            continue
        try:
            names = list_video_frames(folder)
        except OSError as err:
            problems.append(f"video {v.video_id!r}: cannot list {folder}: {err.strerror or err}")
            continue
        if not names:
            problems.append(f"video {v.video_id!r}: no JPEG frames ({' '.join(JPEG_EXTENSIONS)}) in {folder}")
            continue
        stems = [official_stem(n) for n in names]
        if len(set(stems)) != len(stems):
            dup = sorted({s for s in stems if stems.count(s) > 1})
            problems.append(f"video {v.video_id!r}: frames with the same name up to the first dot in {folder}: "
                            f"{_few(dup)}")
            continue
        if need_gt:
            gt = [official_stem(n) for n in v.gt_names]
            if sorted(gt) != sorted(stems):
                missing = sorted(set(gt) - set(stems))
                extra = sorted(set(stems) - set(gt))
                detail = "; ".join(x for x in (
                    f"GT frames without a JPEG: {_few(missing)}" if missing else "",
                    f"JPEGs without a GT frame: {_few(extra)}" if extra else "") if x)
                problems.append(f"video {v.video_id!r}: {len(names)} frames in {folder} but the GT JSON lists "
                                f"{len(gt)} images; they must match one to one ({detail or 'duplicate names'})")
                continue
        frames[v.video_id] = names
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise EvalInputError(f"{len(problems)} video(s) cannot be evaluated{more}:\n  " + "\n  ".join(problems[:10]))
    return frames


def _check_gt_annotations(plan: VIPSegPlan) -> None:
    """The metrics need, for every video, a GT ``annotations`` entry with one record per image."""
    annos = plan.gt_doc.get("annotations")
    if not isinstance(annos, list):
        raise EvalInputError(f"GT JSON {plan.gt_json} has no 'annotations' list: it cannot be scored "
                             "(pass --no-metrics to only write the predictions)")
    by_video = {a.get("video_id"): a.get("annotations") for a in annos if isinstance(a, Mapping)}
    bad = []
    for v in plan.videos:
        frames = by_video.get(v.video_id)
        if not isinstance(frames, list) or len(frames) != v.num_frames or not v.num_frames:
            bad.append(v.video_id)
    if bad:
        raise EvalInputError(f"GT JSON {plan.gt_json}: {len(bad)} video(s) without GT annotations for each of their "
                             f"images: {_few(bad)} (pass --no-metrics to only write the predictions)")


def _check_gt_pngs(plan: VIPSegPlan) -> None:
    """Every GT PNG the metrics will read (``GT_DIR/<video>/<file_name>`` for each image of the
    GT JSON) exists; all missing ones are named in one error."""
    missing: list[str] = []
    for v in plan.videos:
        folder = plan.gt_dir / v.video_id
        if not folder.is_dir():
            missing.extend(str(folder / n) for n in v.gt_names)
            continue
        missing.extend(str(folder / n) for n in v.gt_names if not (folder / n).is_file())
    if missing:
        raise EvalInputError(f"{len(missing)} GT PNG(s) named by the GT JSON {plan.gt_json} are missing: "
                             f"{_few(missing)} (the metrics need every one; or pass --no-metrics)")


# ----------------------------------------------------------------------------- sharding


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 0 <= I < N."""
    try:
        i, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise EvalInputError(f"--shard expects I/N (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise EvalInputError(f"--shard {text}: need N >= 1 and 0 <= I < N (shards count from 0)")
    return i, n


def shard_videos(videos: Sequence[VideoEntry], index: int, count: int) -> list[VideoEntry]:
    """Slice `index` of `count`: a deterministic split balanced by frame count (longest video
    first to the least loaded slice, ties to the lower slice), in list order within a slice."""
    if count == 1:
        return list(videos)
    load = [0] * count
    owner: dict[int, int] = {}
    order = sorted(range(len(videos)), key=lambda k: (-max(videos[k].num_frames, 1), k))
    for k in order:
        s = min(range(count), key=lambda j: (load[j], j))
        owner[k] = s
        load[s] += max(videos[k].num_frames, 1)
    return [v for k, v in enumerate(videos) if owner[k] == index]


# ----------------------------------------------------------------------------- memory


class _PeakMemory:
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


# ----------------------------------------------------------------------------- output folder


def _write_json_atomic(path: Path, obj: Any, indent: int | None = None) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(3)}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(jsonio.dumps(obj, indent=indent, compact=not indent))
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


class EvalOutput:
    """The output folder of one evaluation (see the module doc)."""

    def __init__(self, root: PathLike):
        self.root = Path(root)
        self.pan_pred = self.root / "pan_pred"
        self.parts = self.root / "parts"
        self.logs = self.root / "logs"

    # -- identity
    def prepare(self, plan: VIPSegPlan) -> None:
        """Create the folder or check that it holds this evaluation; write run.json first."""
        fp = {"format": RUN_FORMAT, "format_version": 1, **plan.fingerprint()}
        run = self.root / RUN_FILE
        try:
            if self.root.exists() and not self.root.is_dir():
                raise EvalInputError(f"--output {self.root} exists and is not a folder")
            # list first: run.json is written before anything else, so a folder that shows other
            # entries shows run.json too (concurrent ranks / shards starting together)
            visible = [p.name for p in self.root.iterdir() if not p.name.startswith(".")] \
                if self.root.is_dir() else []
            if RUN_FILE in visible or run.is_file():
                try:
                    old = json.loads(run.read_text(encoding="utf-8"))
                except ValueError:
                    old = {}
                if {k: old.get(k) for k in fp} != fp:
                    raise EvalInputError(
                        f"--output {self.root} holds another evaluation (split {old.get('split')!r}, "
                        f"{old.get('num_videos')} videos; this one: split {plan.split!r}, {len(plan.videos)} videos, "
                        "or a different video list): use another --output")
            else:
                if visible:
                    raise EvalInputError(f"--output {self.root} is not empty and is not an entitysam evaluation "
                                         f"folder (no {RUN_FILE}; it holds {_few(sorted(visible), 3)}): "
                                         "choose a new or empty folder")
                self.root.mkdir(parents=True, exist_ok=True)
                _write_json_atomic(run, {**fp, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=1)
            for d in (self.pan_pred, self.parts, self.logs):
                d.mkdir(exist_ok=True)
        except OSError as err:
            from ..io.paths import describe_os_error  # noqa: PLC0415

            raise OutputError(describe_os_error(err, "the output folder")) from None

    def check_existing(self, plan: VIPSegPlan) -> None:
        """For --merge-only: the folder must exist and hold this evaluation."""
        if not (self.root / RUN_FILE).is_file():
            raise EvalInputError(f"--output {self.root} holds no evaluation ({RUN_FILE} not found)")
        self.prepare(plan)

    # -- per video
    def part_path(self, vid: str) -> Path:
        return self.parts / f"{vid}.json"

    def read_part(self, vid: str) -> dict[str, Any] | None:
        """The part of a complete video, or None (missing, unreadable, or PNGs missing)."""
        try:
            with open(self.part_path(vid), encoding="utf-8") as f:
                part = json.load(f)
        except (OSError, ValueError):
            return None
        if not isinstance(part, dict) or part.get("complete") is not True or part.get("video_id") != vid:
            return None
        folder = self.pan_pred / vid
        try:
            have = set(os.listdir(folder))
        except OSError:
            return None
        for entry in part.get("annotations", []):
            if f"{official_stem(entry.get('file_name', ''))}.png" not in have:
                return None
        return part

    def stage(self, vid: str) -> Path:
        """A fresh hidden folder for the PNGs of `vid`; partial (and replaced) folders of this
        video left by dead processes are removed."""
        for kind in ("partial", "old"):
            prefix = f".{vid}.{kind}-"
            for p in self.pan_pred.glob(f"{prefix}*"):
                try:
                    pid = int(p.name[len(prefix):].split("-")[0])
                except ValueError:
                    continue
                if pid == os.getpid() or not pid_alive(pid):
                    shutil.rmtree(p, ignore_errors=True)
        path = self.pan_pred / f".{vid}.partial-{os.getpid()}-{secrets.token_hex(4)}"
        path.mkdir(parents=True)
        return path

    def commit(self, vid: str, stage: Path, part: dict[str, Any]) -> None:
        """Move the PNGs into place, then write the part (which marks the video complete)."""
        final = self.pan_pred / vid
        with contextlib.suppress(FileNotFoundError):
            self.part_path(vid).unlink()  # an older result stops counting as complete first
        if final.exists():
            old = self.pan_pred / f".{vid}.old-{os.getpid()}-{secrets.token_hex(4)}"
            os.rename(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.rename(stage, final)
        _write_json_atomic(self.part_path(vid), part)

    def log(self, tag: str, record: Mapping[str, Any]) -> None:
        with contextlib.suppress(OSError):
            with open(self.logs / f"{tag}.jsonl", "a", encoding="utf-8") as f:
                f.write(jsonio.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **record}, ensure_ascii=True) + "\n")


# ----------------------------------------------------------------------------- running


@dataclass
class EvalSummary:
    output: Path
    videos: list[str]  # this run's slice
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # videos of the whole list still incomplete
    merged: bool = False
    metrics: dict[str, Any] | None = None
    stats: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass
class _FrameRef:
    name: str
    index: int


def _model_descriptor(model: Any, dtype: Any) -> dict[str, Any]:
    from ..inference.precision import resolve_dtype  # noqa: PLC0415

    device = next(model.parameters()).device
    path = getattr(model, "checkpoint_path", None)
    size = None
    if path:
        with contextlib.suppress(OSError):
            size = os.path.getsize(path)
    return {"config": model.cfg.name, "checkpoint": Path(path).name if path else None, "checkpoint_bytes": size,
            "dtype": str(resolve_dtype(dtype, device)).replace("torch.", "")}


def _same_model(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    keys = ("config", "checkpoint", "checkpoint_bytes", "dtype")
    return a is not None and b is not None and all(a.get(k) == b.get(k) for k in keys)


def _describe_model(d: Mapping[str, Any] | None) -> str:
    if not d:
        return "unknown model"
    ck = f", checkpoint {d.get('checkpoint')}" if d.get("checkpoint") else ""
    return f"config {d.get('config')}{ck}, {d.get('dtype')}"


def _segment_one(model: Any, plan: VIPSegPlan, entry: VideoEntry, frames: list[str], out: EvalOutput, *,
                 dtype: Any, logits_dtype: str, progress: bool, memory: _PeakMemory,
                 descriptor: dict[str, Any], ordering: str) -> dict[str, Any]:
    from ..pipeline.segment import segment  # noqa: PLC0415
    from ..io.sources import FrameFolderSource  # noqa: PLC0415
    from ..io.panoptic import PanopticWriter, frame_segments  # noqa: PLC0415

    vid = entry.video_id
    folder = plan.images_dir / vid
    stage = out.stage(vid)
    try:
        memory.reset()
        t0 = time.perf_counter()
        source = FrameFolderSource(folder, files=[folder / n for n in frames], name=vid)
        result = segment(model, source, dtype=dtype, logits_dtype=logits_dtype, work_dir=stage, progress=progress)
        with result:
            writer = PanopticWriter(stage, None, vid, bbox="official")
            by_stem: dict[str, dict[str, Any]] = {}
            for info, id_map in result.items():
                ref = _FrameRef(official_stem(frames[info.index]), info.index)
                segments = frame_segments(id_map, "official")
                writer.add(info.t, ref, id_map, segments)
                record = PanopticWriter.frame_entry(info.t, ref, segments)
                record["file_name"] = frames[info.index]  # the official pred.json keeps the frame's own name
                by_stem[ref.name] = record
            writer.close()
            height, width = result.size
            num_entities = len(result.entities)
            seconds_segment = result.timings.get("segment")
        if ordering == "gt":  # the metrics pair pred.json frames with GT frames by position
            annotations = [by_stem[official_stem(n)] for n in entry.gt_names]
        else:
            annotations = [by_stem[official_stem(n)] for n in frames]
        seconds = time.perf_counter() - t0
        stats = {"video": vid, "frames": len(frames), "size": [height, width], "entities": num_entities,
                 "seconds": round(seconds, 3),
                 "seconds_model": round(seconds_segment, 3) if seconds_segment is not None else None,
                 "fps": round(len(frames) / seconds, 3) if seconds > 0 else None,
                 **memory.read(), "device": str(next(model.parameters()).device), "host": socket.gethostname(),
                 "pid": os.getpid()}
        part = {"format": PART_FORMAT, "format_version": 1, "video_id": vid, "complete": True, "model": descriptor,
                "stats": stats, "annotations": annotations}
        out.commit(vid, stage, part)
        return stats
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _complete_models(out: EvalOutput, plan: VIPSegPlan) -> tuple[list[str], dict[str, dict[str, Any]]]:
    missing, parts = [], {}
    for vid in plan.video_ids:
        part = out.read_part(vid)
        if part is None:
            missing.append(vid)
        else:
            parts[vid] = part
    return missing, parts


def merge_outputs(plan: VIPSegPlan, output: PathLike) -> dict[str, Any]:
    """Assemble ``pred.json`` and ``log.json`` from the parts of every video of the plan.
    Raises :class:`IncompleteError` naming the videos without complete predictions, and
    :class:`EvalInputError` if the parts come from different models. Returns the log."""
    from ..io.panoptic import CATEGORIES  # noqa: PLC0415

    out = EvalOutput(output)
    missing, parts = _complete_models(out, plan)
    if missing:
        raise IncompleteError(f"{len(missing)} of {len(plan.videos)} videos have no complete predictions in "
                              f"{out.root}: {_few(missing)}", missing)
    models: list[dict[str, Any]] = []
    for part in parts.values():
        if not any(_same_model(part.get("model"), m) for m in models):
            models.append(part.get("model") or {})
    if len(models) > 1:
        raise EvalInputError(f"the predictions in {out.root} come from {len(models)} different models ("
                             + "; ".join(_describe_model(m) for m in models) + "): redo them with one model")
    pred = {"annotations": [{"video_id": vid, "annotations": parts[vid]["annotations"]} for vid in plan.video_ids],
            "categories": CATEGORIES}
    _write_json_atomic(out.root / "pred.json", pred)
    stats = [parts[vid].get("stats", {}) for vid in plan.video_ids]
    frames = sum(int(s.get("frames") or 0) for s in stats)
    seconds = sum(float(s.get("seconds") or 0.0) for s in stats)

    def peak(key: str) -> float | None:
        vals = [s.get(key) for s in stats if s.get(key) is not None]
        return max(vals) if vals else None

    log = {"split": plan.split, "model": models[0] if models else None,
           "total": {"videos": len(stats), "frames": frames, "seconds": round(seconds, 3),
                     "fps": round(frames / seconds, 3) if seconds > 0 else None,
                     "peak_rss_mib": peak("peak_rss_mib"),
                     "cuda_max_allocated_mib": peak("cuda_max_allocated_mib")},
           "videos": stats}
    _write_json_atomic(out.root / "log.json", log, indent=1)
    return log


def score_outputs(plan: VIPSegPlan, output: PathLike, *, workers: int | None = None,
                  log: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """VEQ + STQ of the merged predictions against the plan's GT; writes ``metrics.json``."""
    from ..jsonio import jsonable  # noqa: PLC0415
    from .metrics import evaluate  # noqa: PLC0415

    out = Path(output)
    if not plan.gt_dir.is_dir():
        raise EvalInputError(f"GT PNG folder not found: {plan.gt_dir} (panomasksRGB/ of the data root; "
                             "or pass --gt-dir, or --no-metrics)")
    _check_gt_pngs(plan)
    results = evaluate(out, plan.gt_dir, plan.gt_for_metrics(), workers=workers)
    doc = jsonable(results)
    doc["run"] = {"split": plan.split, "videos": len(plan.videos), "gt_json_videos": plan.gt_videos,
                  "gt_json": str(plan.gt_json), "split_file": str(plan.split_file) if plan.split_file else None,
                  "frames": (log or {}).get("total", {}).get("frames"),
                  "model": (log or {}).get("model")}
    _write_json_atomic(out / "metrics.json", doc, indent=1)
    return doc


def evaluate_vipseg(data_root: PathLike, output: PathLike, *, split: str = "val",
                    model: Any = None, gt_json: PathLike | None = None, gt_dir: PathLike | None = None,
                    split_file: PathLike | None = None, shard: tuple[int, int] | str | None = None,
                    dtype: Any = "auto", logits_dtype: str = "float32", overwrite: bool = False,
                    merge: bool = True, metrics: bool = True, workers: int | None = None,
                    progress: bool = False, say: Callable[[str], None] | None = None,
                    say_error: Callable[[str], None] | None = None, log_tag: str | None = None,
                    plan: VIPSegPlan | None = None) -> EvalSummary:
    """Run (or resume) the evaluation of one slice, then merge and score if every video is done.

    model: an EntitySAM model, or a function returning one (called only if a video needs
    inference). shard: ``(I, N)`` or ``"I/N"`` (default: everything). overwrite: redo the
    slice's complete videos. merge: assemble pred.json (+ metrics unless ``metrics=False``)
    when the whole list is complete. Raises :class:`EvalInputError` before any inference for
    unusable inputs; per-video failures are collected in ``summary.failed`` (and reported with
    ``say_error``, default ``say``). ``say``: progress messages.
    """
    import torch  # noqa: PLC0415

    say = say or (lambda msg: None)
    say_error = say_error or say
    if workers is not None:  # used only when scoring, after all inference: check it now
        check_int(workers, "workers", 1)
    plan = plan or load_plan(data_root, split, gt_json=gt_json, gt_dir=gt_dir, split_file=split_file)
    index, count = parse_shard(shard) if isinstance(shard, str) else (shard or (0, 1))
    if count < 1 or not 0 <= index < count:
        raise EvalInputError(f"shard {index}/{count}: need 0 <= I < N")
    # The ground truth is checked before any inference (also on torchrun ranks, which do not
    # merge: rank 0 scores later), not found missing after hours of it.
    if metrics and not plan.gt_dir.is_dir():
        raise EvalInputError(f"GT PNG folder not found: {plan.gt_dir} (panomasksRGB/ of the data root, needed for "
                             "the metrics; or pass --gt-dir, or --no-metrics)")
    if metrics:
        _check_gt_annotations(plan)
        _check_gt_pngs(plan)
    out = EvalOutput(output)
    out.prepare(plan)
    mine = shard_videos(plan.videos, index, count)
    tag = log_tag or ("run" if count == 1 else f"shard-{index}-of-{count}")
    summary = EvalSummary(output=out.root, videos=[v.video_id for v in mine])
    if plan.subset:
        say(f"split file {plan.split_file} lists {len(plan.videos)} of the {plan.gt_videos} videos of "
            f"{plan.gt_json.name}: evaluating those")

    todo: list[VideoEntry] = []
    for v in mine:
        if not overwrite and out.read_part(v.video_id) is not None:
            summary.skipped.append(v.video_id)
            out.log(tag, {"event": "video", "video": v.video_id, "status": "skipped"})
        else:
            todo.append(v)
    if summary.skipped:
        say(f"{len(summary.skipped)} of {len(mine)} videos already complete in {out.root}: skipped")

    if todo:
        frames = _check_frames(plan, todo, need_gt=metrics)
        if isinstance(model, torch.nn.Module):
            net = model
        elif callable(model):
            net = model()
        else:
            raise EntitySAMError("evaluate_vipseg needs a model (or a function returning one)")
        descriptor = _model_descriptor(net, dtype)
        _, parts = _complete_models(out, plan)
        others = sorted(v for v, p in parts.items() if not _same_model(p.get("model"), descriptor)
                        and not (overwrite and v in {e.video_id for e in todo}))
        if others:
            raise EvalInputError(
                f"--output {out.root} already holds predictions of another model ("
                f"{_describe_model(parts[others[0]].get('model'))}) for {len(others)} video(s) ({_few(others)}); "
                f"this run uses {_describe_model(descriptor)}: use another --output")
        memory = _PeakMemory(next(net.parameters()).device)
        ordering = "gt" if metrics else "frames"
        for k, v in enumerate(todo, 1):
            try:
                stats = _segment_one(net, plan, v, frames[v.video_id], out, dtype=dtype, logits_dtype=logits_dtype,
                                     progress=progress, memory=memory, descriptor=descriptor, ordering=ordering)
            except KeyboardInterrupt:
                out.log(tag, {"event": "video", "video": v.video_id, "status": "interrupted"})
                raise
            except (EntitySAMError, OSError, RuntimeError, ValueError, KeyError) as err:
                if isinstance(err, OSError):
                    from ..io.paths import describe_os_error  # noqa: PLC0415

                    msg = describe_os_error(err, f"predictions of {v.video_id}")
                else:
                    msg = str(err) if isinstance(err, EntitySAMError) else f"{type(err).__name__}: {err}"
                summary.failed.append((v.video_id, msg))
                out.log(tag, {"event": "video", "video": v.video_id, "status": "failed", "error": msg})
                say_error(f"[{k}/{len(todo)}] {v.video_id}: failed: {msg}")
                continue
            summary.done.append(v.video_id)
            summary.stats.append(stats)
            out.log(tag, {"event": "video", "status": "done", **stats})
            say(f"[{k}/{len(todo)}] {v.video_id}: {stats['frames']} frames, {stats['entities']} entities, "
                f"{stats['seconds']:.1f}s ({stats['fps'] or 0:.2f} frames/s), peak RSS {stats['peak_rss_mib']:.0f} MiB"
                + (f", CUDA {stats['cuda_max_allocated_mib']:.0f} MiB" if stats["cuda_max_allocated_mib"] else ""))

    summary.missing, _ = _complete_models(out, plan)
    if merge and not summary.missing:
        finish(plan, out.root, summary, metrics=metrics, workers=workers, say=say)
    return summary


def finish(plan: VIPSegPlan, output: PathLike, summary: EvalSummary | None = None, *, metrics: bool = True,
           workers: int | None = None, say: Callable[[str], None] = lambda m: None) -> dict[str, Any] | None:
    """Merge (pred.json, log.json) and, with `metrics`, score (metrics.json). Returns the metrics."""
    log = merge_outputs(plan, output)
    t = log["total"]
    say(f"pred.json: {t['videos']} videos, {t['frames']} frames; inference {t['seconds']:.1f}s"
        + (f" ({t['fps']:.2f} frames/s)" if t["fps"] else "") + f" -> {Path(output) / 'pred.json'}")
    result = None
    if metrics:
        t0 = time.perf_counter()
        result = score_outputs(plan, output, workers=workers, log=log)
        say(f"metrics in {time.perf_counter() - t0:.1f}s -> {Path(output) / 'metrics.json'}")
    if summary is not None:
        summary.merged = True
        summary.metrics = result
    return result


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="entitysam eval", description="Benchmark evaluations.")
    sub = ap.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    p = sub.add_parser(
        "vipseg", help="VIPSeg: inference on a split, official output layout, VEQ / STQ",
        description="Segment every video of a VIPSeg split (list from the GT JSON and the split file, frames "
                    "images/<video>/*.jpg in sorted order, as the official evaluation), write pan_pred/ + pred.json "
                    "in the official layout, then VEQ / STQ into metrics.json. Re-running resumes: complete videos "
                    "are skipped, interrupted ones redone.")
    data = p.add_argument_group("data")
    data.add_argument("--data-root", required=True, metavar="DIR",
                      help="the VIPSeg_720P folder (images/, panomasksRGB/, panoptic_gt_VIPSeg_<split>.json)")
    data.add_argument("--split", default="val", help="split name (default val)")
    data.add_argument("--gt-json", default=None, metavar="PATH",
                      help="GT JSON (default DATA_ROOT/panoptic_gt_VIPSeg_<split>.json)")
    data.add_argument("--gt-dir", default=None, metavar="DIR", help="GT PNGs (default DATA_ROOT/panomasksRGB)")
    data.add_argument("--split-file", default=None, metavar="PATH",
                      help="video list (default DATA_ROOT/<split>.txt or DATA_ROOT/../<split>.txt if present)")
    mod = p.add_argument_group("model")
    mod.add_argument("--model", default=None, choices=("vit-s", "vit-l", "demo"),
                     help="published model (default vit-s); with --checkpoint: that file's configuration")
    mod.add_argument("--checkpoint", default=None, metavar="PATH", help="local checkpoint file")
    mod.add_argument("--trust-checkpoint-code", action="store_true",
                     help="UNSAFE: unpickle --checkpoint in full, which runs any code in the file (default: refused)")
    mod.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                     help="auto (default): cuda, else mps, else cpu; under torchrun cuda:LOCAL_RANK")
    mod.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                     help="auto (default): bfloat16 autocast on CUDA (as the official evaluation), float32 elsewhere")
    mod.add_argument("--logits-dtype", default="float32", choices=("float32", "float16"),
                     help="temporary on-disk low-res logits (float32 exact, float16 half the disk)")
    mod.add_argument("--threads", type=positive_int, default=None, metavar="N", help="torch CPU threads")
    run = p.add_argument_group("run")
    run.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder (see README)")
    run.add_argument("--shard", default=None, metavar="I/N",
                     help="run slice I of N (0 <= I < N); the run that completes the last video merges and scores")
    run.add_argument("--merge-only", action="store_true",
                     help="no inference: assemble pred.json from the finished videos and score")
    run.add_argument("--overwrite", action="store_true", help="redo the slice's videos even if complete")
    run.add_argument("--no-metrics", action="store_true", help="write pred.json but do not score")
    run.add_argument("--workers", type=positive_int, default=None, metavar="N",
                     help="processes for the metrics (default: number of CPUs)")
    run.add_argument("--dist-timeout", type=positive_float, default=48.0, metavar="HOURS",
                     help="under torchrun: how long ranks wait for each other at the end (default 48)")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bars or per-video lines")
    return ap


def _dist_env() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    rank = int(os.environ.get("RANK", "0") or 0)
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    return rank, world, local


def _print_err(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)


def _print_metrics(result: Mapping[str, Any] | None) -> None:
    from .metrics import format_table  # noqa: PLC0415

    if result is not None:
        print(format_table({k: result[k] for k in ("veq", "stq") if k in result}))


def main(argv: Sequence[str] | None = None) -> int:
    """`entitysam eval vipseg ...`. Exit codes: 0 done (or this shard done), 1 a video failed,
    the model could not be loaded, videos are missing at --merge-only or the metrics failed,
    2 invalid command line or unusable inputs, 130 interrupted."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return int(exc.code or 0) if isinstance(exc.code, int) or exc.code is None else 2
    if args.benchmark is None:
        parser.print_help(sys.stderr)
        return 2
    rank, world, local_rank = _dist_env()
    distributed = world > 1 and not args.merge_only
    prefix = f"[rank {rank}/{world}] " if world > 1 else ""
    say: Callable[[str], None] = ((lambda m: None) if args.quiet
                                  else (lambda m: print(prefix + m, file=sys.stderr, flush=True)))
    try:
        if args.shard is not None and world > 1:
            raise EvalInputError("--shard and torchrun exclude each other (under torchrun each rank takes its slice)")
        shard = parse_shard(args.shard) if args.shard is not None else (rank, world) if distributed else (0, 1)
        if args.threads is not None and args.threads < 1:
            raise EvalInputError("--threads must be >= 1")
        if args.workers is not None and args.workers < 1:
            raise EvalInputError("--workers must be >= 1")
        plan = load_plan(args.data_root, args.split, gt_json=args.gt_json, gt_dir=args.gt_dir,
                         split_file=args.split_file)
        if not args.merge_only:  # an unavailable --device is a command-line error, found before loading
            from ..inference.precision import resolve_device  # noqa: PLC0415

            resolve_device(args.device)
    except EntitySAMError as err:
        _print_err(str(err))
        return 2

    metrics = not args.no_metrics
    if args.merge_only:
        if rank != 0:
            return 0
        try:
            EvalOutput(args.output).check_existing(plan)
            result = finish(plan, args.output, metrics=metrics, workers=args.workers, say=say)
        except IncompleteError as err:
            _print_err(f"{err}; run the missing shards (or this command without --merge-only) first")
            return 1
        except EvalInputError as err:
            _print_err(str(err))
            return 2
        except EntitySAMError as err:
            _print_err(str(err))
            return 1
        except ValueError as err:  # MetricsInputError
            _print_err(f"metrics: {err}")
            return 1
        _print_metrics(result)
        return 0

    import torch  # noqa: PLC0415

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if distributed and device in ("auto", "cuda") and torch.cuda.is_available():
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)

    def load_model():
        from ..cli.options import checkpoint_wording  # noqa: PLC0415
        from ..pipeline.loading import load_model as load  # noqa: PLC0415

        t0 = time.perf_counter()
        with checkpoint_wording():
            net = load(args.checkpoint, config=args.model, device=device, allow_pickle=args.trust_checkpoint_code)
        say(f"model {net.cfg.name} loaded on {next(net.parameters()).device} in {time.perf_counter() - t0:.1f}s")
        return net

    group = False
    if distributed:
        import datetime  # noqa: PLC0415

        import torch.distributed as dist  # noqa: PLC0415

        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=args.dist_timeout))
        group = True

    status = 0
    summary: EvalSummary | None = None
    try:
        summary = evaluate_vipseg(
            args.data_root, args.output, split=args.split, model=load_model, shard=shard, dtype=args.dtype,
            logits_dtype=args.logits_dtype, overwrite=args.overwrite, merge=not distributed, metrics=metrics,
            workers=args.workers, progress=not args.quiet and world == 1, say=say, plan=plan,
            say_error=lambda m: _print_err(prefix + m),
            log_tag=f"rank-{rank}-of-{world}" if distributed else None)
    except KeyboardInterrupt:
        _print_err("interrupted; finished videos are kept, re-run the same command to resume")
        return 130
    except EvalInputError as err:
        _print_err(str(err))
        status = 2
    except EntitySAMError as err:  # model not available, checkpoint mismatch, output not writable
        _print_err(str(err))
        status = 1
    except (RuntimeError, OSError) as err:
        _print_err(f"{type(err).__name__}: {err}")
        status = 1
    except ValueError as err:  # MetricsInputError from the automatic merge
        _print_err(f"metrics: {err}")
        status = 1
    if summary is not None and summary.failed:
        _print_err(f"{len(summary.failed)} of {len(summary.videos)} videos failed: "
                   f"{_few([v for v, _ in summary.failed])}; re-run to retry them")
        status = 1

    if group:
        import torch.distributed as dist  # noqa: PLC0415

        try:
            if str(device).startswith("cuda"):
                dist.barrier(device_ids=[local_rank])
            else:
                dist.barrier()
            if rank == 0:
                try:
                    result = finish(plan, args.output, metrics=metrics, workers=args.workers, say=say)
                    _print_metrics(result)
                except IncompleteError as err:
                    _print_err(f"{err}; re-run the same command to finish them")
                    status = 1
                except EntitySAMError as err:
                    _print_err(str(err))
                    status = 1
                except ValueError as err:
                    _print_err(f"metrics: {err}")
                    status = 1
        finally:
            dist.destroy_process_group()
        return status

    if summary is not None and status == 0:
        if summary.merged:
            _print_metrics(summary.metrics)
        elif summary.missing:
            say(f"{len(summary.videos)} videos of this slice complete; {len(summary.missing)} of "
                f"{len(plan.videos)} videos still missing (other shards): the shard that finishes last merges and "
                "scores, or run the same command with --merge-only once all are done")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
