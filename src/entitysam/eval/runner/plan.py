"""What a VIPSeg evaluation covers: the videos of a split, their frames and their ground truth.

Like the official ``eval/eval_vipseg_entity_seg.py``, the videos are those of the GT JSON
(``panoptic_gt_VIPSeg_<split>.json``, in its order, filtered by the split file), and the
frames of a video are the JPEGs of ``images/<video>/`` in ``sorted()`` order. Every check
here runs before any inference, so unusable inputs are found in seconds, not after hours.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ...errors import EntitySAMError, Remedy
from ...jsonio import load_file
from ...regular_file import open_regular, path_problem

__all__ = ["EvalInputError", "VideoEntry", "VIPSegPlan", "load_plan", "list_video_frames", "official_stem",
           "abbreviate", "check_frames", "check_gt_annotations", "check_gt_pngs", "folder_problem", "folder_message"]

PathLike = str | os.PathLike
JPEG_EXTENSIONS = (".jpg", ".jpeg", ".JPG", ".JPEG")  # the official list (eval:230-233)


class EvalInputError(EntitySAMError):
    """The data root, split, GT JSON, frames or output folder do not allow the evaluation to run."""



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


def abbreviate(names: Sequence[str], k: int = 5) -> str:
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
        # opened without waiting: a FIFO under the split's name was skipped (all videos scored)
        f = open_regular(path)
        if f is None:
            raise EvalInputError(f"the split file {path} is not a regular file; it lists one video id per line")
        with f:
            lines = f.read().decode("utf-8").splitlines()
    except OSError as err:
        raise EvalInputError(f"cannot read the split file {path}: {err.strerror or err}") from None
    except UnicodeDecodeError as err:  # a ValueError: it was a traceback
        raise EvalInputError(f"the split file {path} is not UTF-8 text (byte {err.start}: "
                             f"{err.object[err.start:err.start + 1]!r}); it lists one video id per line") from None
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
            raise EvalInputError(f"GT JSON of split {split!r} not found: {gt_path} ({hint})", Remedy("gt_json", metavar="FILE"))
    else:
        gt_path = Path(gt_json)
    doc = load_file(gt_path, "GT JSON", EvalInputError)
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
        if not isinstance(images, list):  # iterating a number was a TypeError traceback, a string its letters
            raise EvalInputError(f"{where} (video {vid!r}): 'images' is {type(images).__name__}, not a list")
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
        if not os.path.lexists(found_split):
            raise EvalInputError(f"split file not found: {found_split}")
    else:
        # whatever is there but a folder is the split (is_file() skipped a FIFO or a link loop,
        # and every video of the GT JSON was evaluated); reading it refuses what is not a file
        candidates = [root / f"{split}.txt", root.resolve().parent / f"{split}.txt"]
        found_split = next((c for c in candidates if os.path.lexists(c) and not c.is_dir()), None)
    videos = entries
    if found_split is not None:
        listed = _read_split_file(found_split)
        unknown = [v for v in listed if v not in seen]
        if unknown:
            raise EvalInputError(f"the split file {found_split} lists {len(unknown)} video(s) that the GT JSON "
                                 f"{gt_path} does not: {abbreviate(unknown)}")
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


def folder_problem(path: Path) -> str | None:
    """None when `path` is a folder; else "missing", "not a folder" or the cause (a link loop, no
    permission): is_dir() says False of all of them, and a folder that is there was "not found"."""
    return path_problem(path, folder=True)


def folder_message(path: Path, what: str, hint: str) -> str | None:
    """None when `path` is a folder; else the error, worded as for the frame folders of the videos."""
    problem = folder_problem(path)
    if problem is None:
        return None
    if problem == "missing":
        return f"{what} not found: {path} ({hint})"
    if problem == "not a folder":
        return f"{what} {path} is not a folder ({hint})"
    return f"cannot list {path}: {problem} ({what}: {hint})"


def _frame_size(path: Path) -> tuple[int, int] | None:
    """(width, height) of a frame as it is segmented, from its header: turned by its EXIF orientation
    as the frame reader turns it; None when it cannot be read (the inference says why)."""
    from ...io.image_file import open_image_file  # noqa: PLC0415

    try:
        with open_image_file(path, 1 << 62) as im:
            width, height = im.size
            try:
                turned = im.getexif().get(0x0112) in (5, 6, 7, 8)  # (the orientations that swap the sides)
            except Exception:  # noqa: BLE001 - an unreadable EXIF block: read as stored, as by the frame reader
                turned = False
    except Exception:  # noqa: BLE001 - (an unusable frame fails its video, with its own message)
        return None
    return (height, width) if turned else (width, height)


def check_frames(plan: VIPSegPlan, videos: Sequence[VideoEntry], need_gt: bool,
                 gt_sizes: Mapping[str, Sequence[tuple[int, int]]] | None = None) -> dict[str, list[str]]:
    """Frame lists of `videos`; every problem of every video in one EvalInputError. gt_sizes: the
    (width, height) of each GT PNG of a video (:func:`check_gt_pngs`), which its frames must have."""
    problem = folder_message(plan.images_dir, "frames folder", "expected images/<video>/*.jpg in the data root")
    if problem:
        raise EvalInputError(problem)
    problems: list[str] = []
    frames: dict[str, list[str]] = {}
    for v in videos:
        folder = plan.images_dir / v.video_id
        try:  # listed, not tested with is_dir(), which says "not found" of a link loop or an unreadable path
            names = list_video_frames(folder)
        except FileNotFoundError:
            problems.append(f"video {v.video_id!r}: frame folder not found: {folder}")
            continue
        except NotADirectoryError:
            problems.append(f"video {v.video_id!r}: {folder} is not a folder")
            continue
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
                            f"{abbreviate(dup)}")
            continue
        if need_gt:
            gt = [official_stem(n) for n in v.gt_names]
            if sorted(gt) != sorted(stems):
                missing = sorted(set(gt) - set(stems))
                extra = sorted(set(stems) - set(gt))
                detail = "; ".join(x for x in (
                    f"GT frames without a JPEG: {abbreviate(missing)}" if missing else "",
                    f"JPEGs without a GT frame: {abbreviate(extra)}" if extra else "") if x)
                problems.append(f"video {v.video_id!r}: {len(names)} frames in {folder} but the GT JSON lists "
                                f"{len(gt)} images; they must match one to one ({detail or 'duplicate names'})")
                continue
            if gt != stems:  # frames are segmented in sorted order, but VEQ's windows follow the GT list:
                # windows of non-consecutive frames, a different score without a word
                first = next(i for i, (a, b) in enumerate(zip(gt, stems)) if a != b)
                problems.append(f"video {v.video_id!r}: the GT JSON lists its images in another order than the "
                                f"frames' sorted file names (position {first}: {gt[first]!r}, frame "
                                f"{stems[first]!r}); VEQ windows need them in time order")
                continue
            # the predictions have the first frame's size: frames of another size than the GT PNGs
            # (VIPSeg's original frames beside the 720P PNGs) were refused by the metrics only
            # after every video was segmented
            size = _frame_size(folder / names[0]) if gt_sizes and v.video_id in gt_sizes else None
            wrong = [(n, s) for n, s in zip(v.gt_names, gt_sizes[v.video_id]) if s != size] if size else []
            if wrong:
                problems.append(f"video {v.video_id!r}: its frames are {size[0]}x{size[1]} (WxH, frame {names[0]}), "
                                f"the size of its predictions, but {len(wrong)} of its {len(v.gt_names)} GT PNGs "
                                f"are not ({wrong[0][0]}: {wrong[0][1][0]}x{wrong[0][1][1]}); the metrics need "
                                "them of one size")
                continue
        frames[v.video_id] = names
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise EvalInputError(f"{len(problems)} video(s) cannot be evaluated{more}:\n  " + "\n  ".join(problems[:10]))
    return frames


def check_gt_annotations(plan: VIPSegPlan) -> None:
    """The metrics need, for every video, a GT ``annotations`` entry with one record per image."""
    from ..panoptic_io import MetricsInputError, annotations_by_video  # noqa: PLC0415

    if not isinstance(plan.gt_doc.get("annotations"), list):
        raise EvalInputError(f"GT JSON {plan.gt_json} has no 'annotations' list: it cannot be scored", Remedy("metrics", False, "to only write the predictions"))
    try:  # the check `entitysam metrics` makes (types, a video listed twice)
        by_video = annotations_by_video(plan.gt_doc, f"GT JSON {plan.gt_json}")
    except MetricsInputError as err:
        raise EvalInputError(str(err), Remedy("metrics", False, "to only write the predictions")) from None
    bad = []
    for v in plan.videos:
        frames = by_video.get(v.video_id)
        if not isinstance(frames, list) or len(frames) != v.num_frames or not v.num_frames:
            bad.append(v.video_id)
    if bad:
        raise EvalInputError(f"GT JSON {plan.gt_json}: {len(bad)} video(s) without GT annotations for each of their "
                             f"images: {abbreviate(bad)}", Remedy("metrics", False, "to only write the predictions"))
    from ..veq import check_gt_segment  # noqa: PLC0415

    try:  # the values the metrics read (ids, areas, iscrowd): refused now, not after the inference
        for v in plan.videos:
            for t, frame in enumerate(by_video[v.video_id]):
                where = f"GT JSON {plan.gt_json} video {v.video_id!r} frame {t}"
                segs = frame.get("segments_info") if isinstance(frame, Mapping) else None
                if not isinstance(segs, list):
                    raise MetricsInputError(f"{where}: no 'segments_info' list")
                for j, seg in enumerate(segs):
                    missing = [k for k in ("id", "area", "iscrowd") if not isinstance(seg, Mapping) or k not in seg]
                    if missing:
                        raise MetricsInputError(f"{where} segments_info[{j}]: missing key {missing[0]!r}")
                    check_gt_segment(seg, f"{where} segments_info[{j}]")
    except MetricsInputError as err:
        raise EvalInputError(str(err), Remedy("metrics", False, "to only write the predictions")) from None


def check_gt_pngs(plan: VIPSegPlan, *, areas: bool = False) -> dict[str, list[tuple[int, int]]]:
    """Every GT PNG the metrics will read (``GT_DIR/<video>/<file_name>`` for each image of the
    GT JSON) exists; all missing ones are named in one error. `areas` (after
    :func:`check_gt_annotations`): each GT segment's area is at most its frame's pixel count.
    Returns the (width, height) of each video's GT PNGs, in its images' order."""
    # The metrics read the prediction of a frame as pan_pred/<video>/<GT file_name>, the run
    # writes it as <name up to the first dot>.png (the official rule): a GT name such as
    # "00001.x.png" or "sub/00001.png" was found missing only after every video was segmented.
    odd = [f"{v.video_id}/{n}" for v in plan.videos for n in v.gt_names if n != f"{official_stem(n)}.png"]
    if odd:
        raise EvalInputError(f"{len(odd)} GT image file name(s) of the GT JSON {plan.gt_json} are not "
                             f"'<name>.png' without another dot or a folder: {abbreviate(odd)} (the predictions "
                             "are written as <name up to the first dot>.png, as the official evaluation, and "
                             "could not be scored)", Remedy("metrics", False, "to only write the predictions"))
    missing: list[str] = []
    unusable: list[str] = []
    for v in plan.videos:
        folder = plan.gt_dir / v.video_id
        problem = folder_problem(folder)
        if problem == "missing":
            missing.extend(str(folder / n) for n in v.gt_names)
        elif problem:
            unusable.append(f"video {v.video_id!r}: {folder} is not a folder" if problem == "not a folder" else
                            f"video {v.video_id!r}: cannot list {folder}: {problem}")
        if problem:
            continue
        # is_file() is False for a FIFO or a link loop too: those are named with their cause below
        missing.extend(str(folder / n) for n in v.gt_names if not os.path.lexists(folder / n))
    if missing:
        raise EvalInputError(f"{len(missing)} GT PNG(s) named by the GT JSON {plan.gt_json} are missing: "
                             f"{abbreviate(missing)} (the metrics need every one)", Remedy("metrics", False, "to only write the predictions"))
    if unusable:
        raise EvalInputError(f"{len(unusable)} GT PNG folder(s) cannot be read:\n  " + "\n  ".join(unusable[:10])
                             + (f"\n  (and {len(unusable) - 10} more)" if len(unusable) > 10 else ""),
                             Remedy("metrics", False, "to only write the predictions"))
    from ..panoptic_io import MetricsInputError, annotations_by_video, check_png  # noqa: PLC0415
    from ..veq import check_gt_segment  # noqa: PLC0415

    by_video = annotations_by_video(plan.gt_doc, f"GT JSON {plan.gt_json}") if areas else {}
    sizes: dict[str, list[tuple[int, int]]] = {}
    try:  # the header of each: a JPEG under a .png name is refused before any inference
        for v in plan.videos:
            for t, n in enumerate(v.gt_names):
                width, height = check_png(plan.gt_dir / v.video_id / n, what="GT PNG")
                sizes.setdefault(v.video_id, []).append((width, height))
                # an area over the frame (a GT JSON of another resolution, as VIPSeg's original-size
                # one beside the 720P PNGs) was refused by the metrics after every video was segmented
                for j, seg in enumerate(by_video[v.video_id][t]["segments_info"] if areas else ()):
                    check_gt_segment(seg, f"GT JSON {plan.gt_json} video {v.video_id!r} frame {t} segments_info[{j}]",
                                     width * height)
    except MetricsInputError as err:
        raise EvalInputError(str(err), Remedy("metrics", False, "to only write the predictions")) from None
    return sizes
