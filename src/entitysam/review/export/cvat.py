"""CVAT for video 1.1 XML with mask tracks (CVAT's "CVAT for video 1.1" import).

The documented layout (docs.cvat.ai, "XML annotation format", version 1.1, interpolation mode)::

    <annotations>
      <version>1.1</version>
      <meta><task> id, name, size, mode=interpolation, overlap, bugtracker, created, updated,
            subset, start_frame, stop_frame, frame_filter, segments, labels (name, color, type=mask,
            attributes), original_size (width, height) </task><dumped/></meta>
      <track id="0" label="entity" source="auto">
        <mask frame="t" keyframe="1" outside="0" occluded="0" z_order="0"
              rle="c0, c1, ..." left="x" top="y" width="w" height="h"/>
        ...
      </track>
    </annotations>

One track per exported entity (track ``id`` 0, 1, ... in entity id order; ``label``: the
entity's review label, else ``entity``), one keyframe ``<mask>`` per frame where it is present
and an ``outside="1"`` mask at the first frame after each stretch of presence (CVAT would
otherwise carry the last mask forward). The mask's RLE is CVAT's: run lengths of the mask cropped
to its box (``left``, ``top``, ``width``, ``height``: columns and rows covered), read row by row,
alternating 0 and 1 runs and starting with a (possibly empty) run of 0.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from xml.sax.saxutils import XMLGenerator

import numpy as np

from ...io.overlay import entity_color
from .common import box_mask, categories, exported_entities, frame_entities, output_file

__all__ = ["write_cvat_video", "cvat_rle"]


def cvat_rle(box: np.ndarray) -> list[int]:
    """CVAT's XML RLE of a mask cropped to its box ([h, w] bool): run lengths row by row,
    alternating background / mask, background first (possibly 0)."""
    flat = box.ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    if flat[0]:
        runs.insert(0, 0)  # runs start with the background
    return runs


def _track_shapes(view: Any, entities: list[Any]) -> dict[int, list[dict[str, str]]]:
    """entity id -> the <mask> attributes of its track, frame by frame."""
    keep = np.array([e.id for e in entities], dtype=np.uint32)
    shapes: dict[int, list[dict[str, str]]] = {e.id: [] for e in entities}
    last: dict[int, dict[str, str]] = {}
    for t in range(len(view.frames)):
        ids, present = frame_entities(view, t, keep)
        for e in entities:
            if e.id in present:
                x, y, w, h = present[e.id]["bbox"]
                runs = cvat_rle(box_mask(ids, present[e.id]))
                shape = {"frame": str(t), "keyframe": "1", "outside": "0", "occluded": "0", "z_order": "0",
                         "rle": ", ".join(map(str, runs)), "left": str(x), "top": str(y),
                         "width": str(w), "height": str(h)}
                shapes[e.id].append(shape)
                last[e.id] = shape
            elif e.id in last:  # the entity just left: close its stretch
                shapes[e.id].append({**last.pop(e.id), "frame": str(t), "outside": "1"})
    return shapes


def _element(x: XMLGenerator, name: str, text: Any = None, attrs: dict[str, str] | None = None,
             indent: int = 0) -> None:
    x.ignorableWhitespace("\n" + "  " * indent)
    x.startElement(name, attrs or {})
    if text is not None:
        x.characters(str(text))
    x.endElement(name)


def _meta(x: XMLGenerator, view: Any, labels: list[str]) -> None:
    h, w = view.size
    n = len(view.frames)
    now = time.strftime("%Y-%m-%d %H:%M:%S+00:00", time.gmtime())
    x.ignorableWhitespace("\n  ")
    x.startElement("meta", {})
    x.ignorableWhitespace("\n    ")
    x.startElement("task", {})
    for name, text in (("id", 0), ("name", view.name), ("size", n), ("mode", "interpolation"), ("overlap", 0),
                       ("bugtracker", ""), ("created", now), ("updated", now), ("subset", "default"),
                       ("start_frame", 0), ("stop_frame", n - 1), ("frame_filter", "")):
        _element(x, name, text, indent=3)
    x.ignorableWhitespace("\n      ")
    x.startElement("labels", {})
    for k, label in enumerate(labels):
        x.ignorableWhitespace("\n        ")
        x.startElement("label", {})
        r, g, b = entity_color(k + 1)
        for name, text in (("name", label), ("color", f"#{r:02x}{g:02x}{b:02x}"), ("type", "mask"),
                           ("attributes", "")):
            _element(x, name, text, indent=5)
        x.ignorableWhitespace("\n        ")
        x.endElement("label")
    x.ignorableWhitespace("\n      ")
    x.endElement("labels")
    x.ignorableWhitespace("\n      ")
    x.startElement("original_size", {})
    _element(x, "width", w, indent=4)
    _element(x, "height", h, indent=4)
    x.ignorableWhitespace("\n      ")
    x.endElement("original_size")
    x.ignorableWhitespace("\n    ")
    x.endElement("task")
    _element(x, "dumped", now, indent=2)
    x.ignorableWhitespace("\n  ")
    x.endElement("meta")


def write_cvat_video(view: Any, out: Path, *, overwrite: bool = False) -> Path:
    """Write `view` as CVAT for video 1.1 XML to the file `out` (atomically); returns `out`."""
    entities = exported_entities(view)
    labels = categories(entities)
    shapes = _track_shapes(view, entities)
    with output_file(out, overwrite, mode="w") as f:
        x = XMLGenerator(f, "utf-8")
        x.startDocument()
        x.startElement("annotations", {})
        _element(x, "version", "1.1", indent=1)
        _meta(x, view, labels)
        for k, e in enumerate(entities):
            x.ignorableWhitespace("\n  ")
            x.startElement("track", {"id": str(k), "label": e.label or labels[0], "source": "auto"})
            for shape in shapes[e.id]:
                x.ignorableWhitespace("\n    ")
                x.startElement("mask", shape)
                x.endElement("mask")
            x.ignorableWhitespace("\n  ")
            x.endElement("track")
        x.ignorableWhitespace("\n")
        x.endElement("annotations")
        x.endDocument()
        f.write("\n")
    return out
