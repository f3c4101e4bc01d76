"""The inputs of `entitysam segment`: INPUT arguments and --batch folders (without the output
folder and results of earlier runs), and the result folder name of each."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import SourceError

__all__ = ["collect_inputs", "batch_inputs", "video_name", "is_inside", "written_by_entitysam_run"]


def is_inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except (ValueError, OSError, RuntimeError):  # RuntimeError: a symbolic link loop (Python < 3.13)
        return False
    return True


def _our_manifest(folder: Path) -> str | None:
    """The manifest written by this tool (any status) that `folder` holds, if any: a segment or
    online result's manifest.json, or the run.json of an `eval vipseg` output."""
    from ..regular_file import read_regular_text

    for name in ("manifest.json", "run.json"):
        try:  # (opened without waiting: a named pipe there would block the read for ever)
            text = read_regular_text(folder / name)
            data = None if text is None else json.loads(text)
        except (OSError, ValueError, RecursionError):
            continue
        if isinstance(data, dict) and str(data.get("format", "")).startswith("entitysam-"):
            return name
    return None


def _children(folder: Path) -> list[Path]:
    try:
        return [c for c in folder.iterdir() if not c.name.startswith(".")]
    except OSError:
        return []


def _holds_frames(children: list[Path]) -> bool:
    from ..io.sources import IMAGE_EXTENSIONS

    return any(c.suffix.lower() in IMAGE_EXTENSIONS for c in children if c.is_file())


def written_by_entitysam_run(entry: Path) -> bool:
    """A batch folder entry that is a result of this tool, not a video: a result folder (its
    manifest), or a folder of result folders (an earlier --output) without frames of its own."""
    if not entry.is_dir():
        return False
    if _our_manifest(entry):
        return True
    children = _children(entry)
    if _holds_frames(children):
        return False
    return any(c.is_dir() and _our_manifest(c) is not None for c in children)


def _holds_the_output(entry: Path, out_root: Path) -> bool:
    """A batch folder entry that is (or holds) the output folder and no frames of its own: not a
    video. A folder of frames that holds it (``-o DIR/clip/results``) is one, and was left out of
    the batch without a word (the run ended with 0)."""
    return is_inside(out_root, entry) and not (entry.is_dir() and _holds_frames(_children(entry)))


def batch_inputs(folder: str, out_root: Path) -> list[Path]:
    """The videos of a --batch folder, without the output folder (``segment --batch X -o X/out``)
    and without results of earlier runs: a re-run must not segment its own outputs."""
    from ..io.sources import list_batch_inputs

    if manifest := _our_manifest(Path(folder)):  # (its overlay.mp4 and panoptic/ id maps are no videos)
        raise SourceError(f"--batch {folder} is an output folder of entitysam (its {manifest}), not a folder of "
                          "videos: name the folder of the videos it was made from")
    found = list_batch_inputs(folder)
    keep = [p for p in found if not (_holds_the_output(p, out_root) or written_by_entitysam_run(p))]
    if found and not keep:
        raise SourceError(f"{folder}: no videos left once the output folder and earlier results are excluded")
    return keep



def collect_inputs(args) -> list:
    from ..io.sources import is_live_input

    # Stream URLs stay strings: Path() would fold the "//" of "rtsp://".
    inputs: list = [p if is_live_input(p) else Path(p) for p in args.inputs]
    for folder in args.batch:
        inputs.extend(batch_inputs(folder, Path(args.output)))
    if not inputs:
        raise SourceError("no INPUT given (a video, a folder of frames, an image, or --batch DIR)")
    return inputs


def video_name(path) -> str:
    """The result folder name of an input (`entitysam.io.sources.result_name`)."""
    from ..io.sources import result_name

    return result_name(path)