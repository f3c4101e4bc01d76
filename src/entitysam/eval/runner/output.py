"""The output folder of a VIPSeg evaluation and its per-video transaction.

Output folder::

    DIR/run.json                 what the folder holds (split, video list; checked on every re-run)
                                 and the data root it was started on
    DIR/pan_pred/<video>/*.png   predicted ids (R + 256 G + 65536 B), one PNG per frame
    DIR/parts/<video>.json       the video's pred.json entry + its statistics; written last
    DIR/parts/<video>.json.earlier  the part of a video being redone (--overwrite), set aside
                                 until the redo is committed
    DIR/parts/<video>.json.failed   a redo failed where its part could not be set aside: the
                                 part does not count until the video is committed again
    DIR/logs/<run>.jsonl         one line per video and process: done / skipped / failed
    DIR/pred.json                assembled from the parts once every video is complete
    DIR/log.json                 per-video time, frames/s, peak memory, and totals
    DIR/metrics.json             VEQ / STQ (as ``entitysam metrics --json``) + a "run" summary

A video is complete when its part file exists: its PNG folder is renamed into place from a
hidden ``pan_pred/.<video>.partial-*`` folder before the part is written, so an interrupted
video is redone and a complete one is skipped. A video being redone has its part set aside first:
while the redo is under way, and after it failed or was interrupted (wherever: its lock not taken
included), the video is not complete, and no merge (``--merge-only``, another run finding every
video done) takes its earlier predictions for the redone ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import stat
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from ... import jsonio
from ...errors import EntitySAMError, OutputError
from ...interrupts import deferred_sigint
from ...io.atomic import atomic_file, write_json_atomic
from ...io.owned import foreign_entries, list_foreign
from ...io.staging import dead_siblings, remove_dead_temp_files
from ...regular_file import open_regular, open_regular_for_writing
from .plan import EvalInputError, VIPSegPlan, abbreviate, official_stem

__all__ = ["IncompleteError", "EvalOutput", "complete_parts", "same_model", "describe_model", "merge_outputs",
           "write_output_json", "RUN_FILE", "RUN_FORMAT", "PART_FORMAT"]

PathLike = str | os.PathLike
RUN_FILE = "run.json"
RUN_FORMAT = "entitysam-eval-vipseg"
PART_FORMAT = "entitysam-eval-vipseg-part"


class IncompleteError(EntitySAMError):
    """Some videos have no complete predictions yet (merge requested too early)."""

    def __init__(self, message: str, missing: Sequence[str]):
        super().__init__(message)
        self.missing = list(missing)


class EvalOutput:
    """The output folder of one evaluation (see the module doc)."""

    def __init__(self, root: PathLike):
        self.root = Path(root)
        self.pan_pred = self.root / "pan_pred"
        self.parts = self.root / "parts"
        self.logs = self.root / "logs"

    # -- identity
    def prepare(self, plan: VIPSegPlan) -> str | None:
        """Create the folder or check that it holds this evaluation; write run.json first.
        Returns the data root run.json names when this plan reads another one, else None.

        Another data root with the same split and video list is the same evaluation, as a
        checkpoint copied elsewhere is the same model (compared by content, not by path): data
        moved to another disk, or mounted elsewhere on another node, resumes. Each video's part
        records the data root its frames were read from."""
        fp = {"format": RUN_FORMAT, "format_version": 1, **plan.fingerprint()}
        data_root = os.path.realpath(plan.data_root)
        run = self.root / RUN_FILE
        recorded = None
        try:
            if self.root.exists() and not self.root.is_dir():
                raise EvalInputError(f"output {self.root} exists and is not a folder")
            # list first: run.json is written before anything else, so a folder that shows other
            # entries shows run.json too (concurrent ranks / shards starting together)
            visible = [p.name for p in self.root.iterdir() if not p.name.startswith(".")] \
                if self.root.is_dir() else []
            if RUN_FILE in visible or run.is_file():
                # opened without waiting: a named pipe under its name made the run wait for ever, and
                # JSON that is not an object (`[1]`) was an AttributeError traceback
                f = open_regular(run)
                if f is None:
                    raise EvalInputError(f"output {self.root} is not an entitysam evaluation folder ({RUN_FILE} "
                                         "is not a regular file): choose a new or empty folder")
                with f:
                    try:
                        old = json.loads(f.read().decode("utf-8"))
                    except (ValueError, RecursionError):
                        old = {}
                if not isinstance(old, dict):
                    old = {}
                if {k: old.get(k) for k in fp} != fp:
                    raise EvalInputError(
                        f"output {self.root} holds another evaluation (split {old.get('split')!r}, "
                        f"{old.get('num_videos')} videos; this one: split {plan.split!r}, {len(plan.videos)} videos, "
                        "or a different video list): choose another output folder")
                if isinstance(old.get("data_root"), str) and old["data_root"] != data_root:
                    recorded = old["data_root"]
            else:
                if visible:
                    raise EvalInputError(f"output {self.root} is not empty and is not an entitysam evaluation "
                                         f"folder (no {RUN_FILE}; it holds {abbreviate(sorted(visible), 3)}): "
                                         "choose a new or empty folder")
                self.root.mkdir(parents=True, exist_ok=True)
                write_json_atomic(run, {**fp, "data_root": data_root, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
                                  indent=1)
            for d in (self.pan_pred, self.parts, self.logs):
                d.mkdir(exist_ok=True)
            for d in (self.root, self.parts):  # a part or merged file being written when a run was killed
                remove_dead_temp_files(d)
        except OSError as err:
            from ...io.paths import describe_os_error  # noqa: PLC0415

            raise OutputError(describe_os_error(err, "the output folder")) from None
        return recorded

    def check_existing(self, plan: VIPSegPlan) -> None:
        """For --merge-only: the folder must exist and hold this evaluation."""
        if not (self.root / RUN_FILE).is_file():
            raise EvalInputError(f"output {self.root} holds no evaluation ({RUN_FILE} not found)")
        self.prepare(plan)

    # -- per video
    def part_path(self, vid: str) -> Path:
        return self.parts / f"{vid}.json"

    def earlier_path(self, vid: str) -> Path:
        """Where the part of a video being redone is set aside (never the name of a part: no ``.json`` end)."""
        return self.parts / f"{vid}.json.earlier"

    def failed_path(self, vid: str) -> Path:
        """The mark of a redo that failed where its part could not be set aside (see keep_unfinished)."""
        return self.parts / f"{vid}.json.failed"

    def read_part(self, vid: str) -> dict[str, Any] | None:
        """The part of a complete video, or None (missing, unreadable, PNGs missing, or marked failed)."""
        if os.path.lexists(self.failed_path(vid)):
            return None
        try:
            # opened without waiting: a named pipe there made every run and merge wait for ever
            f = open_regular(self.part_path(vid))
            if f is None:
                return None
            with f:
                part = json.loads(f.read().decode("utf-8"))
        except (OSError, ValueError, RecursionError):  # (nested too deeply: a RecursionError traceback)
            return None
        if not isinstance(part, dict) or part.get("complete") is not True or part.get("video_id") != vid:
            return None
        folder = self.pan_pred / vid
        try:
            have = set(os.listdir(folder))
        except OSError:
            return None
        entries = part.get("annotations")
        if not isinstance(entries, list):  # (a number there was a TypeError traceback, also at --merge-only)
            return None
        for entry in entries:
            name = entry.get("file_name") if isinstance(entry, dict) else None
            if not isinstance(name, str) or f"{official_stem(name)}.png" not in have:
                return None
        return part

    def set_aside(self, vid: str) -> None:
        """Before `vid` is redone (under its lock): its part, if any, stops counting as complete
        until the new one is committed. A redo that failed or was interrupted left the earlier part
        in place, and --merge-only, or a shard finding every video done, merged those predictions
        as if redone. Kept (renamed, which needs no disk space), not deleted. Only a regular file:
        whatever else is at the part's path is not ours to move."""
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISREG(os.lstat(self.part_path(vid)).st_mode):
                os.replace(self.part_path(vid), self.earlier_path(vid))

    def keep_unfinished(self, vid: str, error: str) -> str | None:
        """After a redo of `vid` failed or was interrupted, wherever it stopped (before its lock was
        taken or its part set aside included): its earlier part must not count as complete. Set
        aside (a rename: no disk space needed), else (the part held open on Windows, a folder at
        the .earlier path) marked failed. Done without the lock, which may be what failed. That is
        safe beside another run holding it: a rename or a mark only ever makes the video
        unfinished, so at worst a part that run has just committed is redone, never an earlier one
        merged. Returns None, or why neither could be done (its earlier part still counts)."""
        try:
            self.set_aside(vid)
            return None
        except OSError as err:
            try:
                write_json_atomic(self.failed_path(vid), {"video_id": vid, "error": error})
                return None
            except OSError:
                return f"{err.filename}: {err.strerror or err}" if err.filename else str(err.strerror or err)

    def stage(self, vid: str) -> Path:
        """A fresh hidden folder for the PNGs of `vid`; partial (and replaced) folders of this
        video left by dead processes are removed, by the rule of `segment`'s result folders
        (:func:`entitysam.io.staging.dead_siblings`): with the video's lock held here, every one (a
        run stages only under that lock; the pid in a name may be another machine's, on an output
        folder shared by several), else those whose pid is not alive."""
        for kind in ("partial", "old"):
            for p in dead_siblings(self.pan_pred / vid, kind):
                shutil.rmtree(p, ignore_errors=True)
        path = self.pan_pred / f".{vid}.partial-{os.getpid()}-{secrets.token_hex(4)}"
        path.mkdir(parents=True)
        return path

    def foreign(self, videos: Sequence[str]) -> list[str]:
        """What the prediction folders of `videos` (replaced when they are redone) hold besides
        their PNGs, relative to the output folder: files or folders a user put there."""
        out: list[str] = []
        for vid in videos:
            folder = self.pan_pred / vid
            if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
                out.append(f"pan_pred/{vid}")
            elif folder.is_dir():
                out += [f"pan_pred/{vid}/{p}" for p in foreign_entries(folder, {re.compile(r"[^/]+\.png"): None})]
        return out

    def check_replaceable(self, videos: Sequence[str]) -> None:
        """OutputError if redoing `videos` would delete a file or folder this tool did not write."""
        if foreign := self.foreign(videos):
            raise OutputError(f"{self.root} holds files entitysam did not write where it replaces predictions "
                              f"({list_foreign(self.root, foreign)}): refusing to delete them; move them away")

    def commit(self, vid: str, stage: Path, part: dict[str, Any]) -> None:
        """Move the PNGs into place, then the part (which marks the video complete). The part
        is written under a temporary name before anything is moved, so that a full disk fails
        the commit while an earlier result of the video (``overwrite``) is still whole."""
        final = self.pan_pred / vid
        self.check_replaceable([vid])  # (a file may have appeared since the start)
        # A Ctrl-C or SIGTERM takes effect once the video is committed: in between, it left the
        # earlier PNGs in a hidden .old- folder.
        with deferred_sigint(), atomic_file(self.part_path(vid), "w") as f:  # renamed into place at the end
            f.write(jsonio.dumps(part, compact=True) + "\n")
            f.flush()
            with contextlib.suppress(FileNotFoundError):
                self.part_path(vid).unlink()  # an older result stops counting as complete first
            if final.exists():
                old = self.pan_pred / f".{vid}.old-{os.getpid()}-{secrets.token_hex(4)}"
                os.rename(final, old)
                shutil.rmtree(old, ignore_errors=True)
            os.rename(stage, final)
            # the earlier PNGs are gone: their part, set aside (kept while they were there), too,
            # and the mark of a failed redo (before the new part is in place: killed in between,
            # the video is redone)
            self.earlier_path(vid).unlink(missing_ok=True)
            self.failed_path(vid).unlink(missing_ok=True)

    def remove_merged(self) -> list[str]:
        """Remove pred.json, log.json and metrics.json, merged from the parts before a video was
        redone: they held its earlier predictions beside its new PNGs (a shard redone with
        overwrite, which does not merge). Returns the names removed; a folder of such a name
        is not ours."""
        removed = []
        for name in ("pred.json", "metrics.json", "log.json"):
            with contextlib.suppress(OSError):
                if not stat.S_ISDIR(os.lstat(self.root / name).st_mode):
                    (self.root / name).unlink()
                    removed.append(name)
        return removed

    def log(self, tag: str, record: Mapping[str, Any]) -> None:
        with contextlib.suppress(OSError):
            # (a named pipe there: opening it by name waited for a reader for ever)
            with open_regular_for_writing(self.logs / f"{tag}.jsonl", append=True, encoding="utf-8") as f:
                f.write(jsonio.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **record}, ensure_ascii=True) + "\n")


def same_model(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Whether two parts' model records name one model: configuration, checkpoint name, size and
    content (SHA-256: two trainings' checkpoints often share name and size; a part of an older
    version has no digest and is compared without it), dtype."""
    keys = ("config", "checkpoint", "checkpoint_bytes", "dtype")
    if a is None or b is None or any(a.get(k) != b.get(k) for k in keys):
        return False
    digests = (a.get("checkpoint_sha256"), b.get("checkpoint_sha256"))
    return None in digests or digests[0] == digests[1]


def describe_model(d: Mapping[str, Any] | None) -> str:
    if not d:
        return "unknown model"
    digest = d.get("checkpoint_sha256")
    ck = f", checkpoint {d.get('checkpoint')}" if d.get("checkpoint") else ""
    ck += f" (sha256 {digest[:12]})" if ck and isinstance(digest, str) else ""
    return f"config {d.get('config')}{ck}, {d.get('dtype')}"



def complete_parts(out: EvalOutput, plan: VIPSegPlan) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """(the plan's videos without a complete part, {video: its part} for the others)."""
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
    from ...io.panoptic import CATEGORIES  # noqa: PLC0415

    out = EvalOutput(output)
    missing, parts = complete_parts(out, plan)
    if missing:
        redone = [v for v in missing if os.path.lexists(out.earlier_path(v)) or os.path.lexists(out.failed_path(v))]
        raise IncompleteError(f"{len(missing)} of {len(plan.videos)} videos have no complete predictions in "
                              f"{out.root}: {abbreviate(missing)}" + (
                                  f" (the redo of {abbreviate(redone)} did not finish: it failed, was interrupted "
                                  "or is still running; earlier predictions are not merged)" if redone else ""),
                              missing)
    models: list[dict[str, Any]] = []
    for part in parts.values():
        if not any(same_model(part.get("model"), m) for m in models):
            models.append(part.get("model") or {})
    if len(models) > 1:
        raise EvalInputError(f"the predictions in {out.root} come from {len(models)} different models ("
                             + "; ".join(describe_model(m) for m in models) + "): redo them with one model")
    pred = {"annotations": [{"video_id": vid, "annotations": parts[vid]["annotations"]} for vid in plan.video_ids],
            "categories": CATEGORIES}
    write_output_json(out.root / "pred.json", pred, "the merged predictions")
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
    write_output_json(out.root / "log.json", log, "the run log", indent=1)
    return log


def write_output_json(path: Path, obj: Any, what: str, *, indent: int | None = None) -> None:
    """A file of the merged evaluation, atomically; a failed write (a full disk) is an
    OutputError naming it (these are written after every video is done: no traceback then)."""
    from ...io.paths import describe_os_error  # noqa: PLC0415

    try:
        write_json_atomic(path, obj, indent=indent)
    except OSError as err:
        raise OutputError(describe_os_error(err, what)) from None
