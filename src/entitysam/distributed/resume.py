"""When a complete result already on disk answers a run, so that ``--skip-existing`` (and every
resumable shard) may skip its video.

A manifest marked complete is not enough: a batch re-run with ``--save all`` over results saved
with ``--save panoptic`` would skip every video and leave the overlays missing without a word.
A complete result answers a run when it was made in the same mode (offline or online) from the
same frames, and holds every format the run saves (and ``logits.npz`` when it saves that). The
model is not compared: its record names a device and a local path, which change between machines
that share a result folder.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Mapping

__all__ = ["mismatches"]

# The file that shows each format is there, offline and online (the online result keeps its
# entities in a JSON-lines file and its overlay as an MPEG transport stream).
_FORMAT_FILE = {
    False: {"panoptic": "panoptic.json", "entities": "entities.json", "overlay": "overlay.mp4"},
    True: {"panoptic": "panoptic.json", "entities": "entities.jsonl", "overlay": "overlay.ts"},
}
_KIND = {False: "entitysam-segment", True: "entitysam-online"}


def mismatches(manifest: Mapping[str, Any], options: Any) -> list[str]:
    """What keeps the complete result described by `manifest` from answering a run with
    `options` (a ``jobs.SegmentOptions``), worded to follow "it": empty when it answers it."""
    online = bool(options.online)
    if manifest.get("format") != _KIND[online]:
        return [f"is {'an offline' if online else 'an online'} result "
                f"(this run is {'online' if online else 'offline'})"]
    reasons = []
    files = manifest.get("files")
    files = set(files) if isinstance(files, list) and all(isinstance(f, str) for f in files) else set()
    missing = [fmt for fmt in options.formats if _FORMAT_FILE[online][fmt] not in files]
    if missing:
        reasons.append(f"lacks {', '.join(missing)} (this run saves {', '.join(options.formats)})")
    if options.save_logits == "" and "logits.npz" not in files:
        reasons.append("lacks logits.npz")
    asked = asdict(options.selection)
    made = manifest.get("selection")
    if not isinstance(made, dict) or any(made.get(key) != value for key, value in asked.items()):
        reasons.append(f"was made from other frames ({_selection_words(made)}; this run: "
                       f"{_selection_words(asked)})")
    if options.fps is not None:
        # The manifest records the rate of the frames kept (--fps / --stride, the overlay's rate),
        # computed as here: comparing it with --fps failed every re-run with a stride.
        stride = options.selection.stride
        rate = float(options.fps) / stride
        if manifest.get("fps") != rate:
            asked = f"{rate}" if stride == 1 else f"{rate}: {float(options.fps)} frames/s with a stride of {stride}"
            reasons.append(f"was made at {manifest.get('fps')} frames/s (this run: {asked})")
    if online and manifest.get("delay") != (options.delay or 0):
        reasons.append(f"was made with delay {manifest.get('delay')} (this run: {options.delay or 0})")
    return reasons


def _selection_words(selection: Any) -> str:
    if not isinstance(selection, dict):
        return "unrecorded"
    words = [f"{key} {value}" for key, value in selection.items()
             if value is not None and not (key == "stride" and value == 1)]
    return ", ".join(words) or "all frames"
