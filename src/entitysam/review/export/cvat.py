"""CVAT for video 1.1 XML with mask tracks (CVAT's "CVAT for video 1.1" format).

The documented layout (docs.cvat.ai, "XML annotation format", version 1.1, interpolation mode)::

    <annotations>
      <version>1.1</version>
      <meta><task> id, name, size, mode=interpolation, overlap, bugtracker, created, updated,
            subset, start_frame, stop_frame, frame_filter, labels (name, color, type=mask,
            attributes), original_size (width, height) </task><dumped/></meta>
      <track id="0" label="entity" source="auto" group_id="g">
        <mask frame="t" keyframe="1" outside="0" occluded="0" z_order="0"
              rle="c0, c1, ..." left="x" top="y" width="w" height="h">
          <attribute name="entity_id">7</attribute>
        </mask>
        ...
      </track>
    </annotations>

The mask's RLE is CVAT's: run lengths of the mask cropped to its box (``left``, ``top``,
``width``, ``height``: columns and rows covered), read row by row, alternating 0 and 1 runs and
starting with a (possibly empty) run of 0. Every mask carries its entity id (the declared
``entity_id`` attribute) and the tracks of one entity share a ``group_id``; ``label`` is the
entity's review label, else ``entity``. Text reads back as written (a carriage return in a
label is a character reference); a character XML 1.0 cannot hold (U+FFFE, U+FFFF: valid in the
video name that names the task) is written as U+FFFD.

Two layouts of the tracks (``tracks``):

* ``"frame"`` (default): one track per entity per frame, a keyframe mask and an ``outside``
  mask at the next frame: the layout CVAT itself writes for masks in this format. CVAT's importer
  does not keep mask tracks (it turns each one into the mask of its first shape: "mask tracks are
  not supported", cvat/apps/dataset_manager/formats/cvat.py), so this is the layout CVAT imports
  completely; the entity id attribute and the group keep the identity.
* ``"entity"``: one track per entity, a keyframe mask per frame where it is present and an
  ``outside`` mask at the first frame after each stretch of presence. The literal mask track;
  tools reading the XML themselves get one track per entity, but CVAT imports only its first mask.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any
from xml.sax.saxutils import XMLGenerator

import numpy as np

from ...errors import InvalidArgumentError
from ...io.idpng import MAX_ID
from ...io.overlay import entity_color
from .common import box_mask, categories, exported_entities, frame_entities, output_file

__all__ = ["LAYOUTS", "ENTITY_ATTRIBUTE", "write_cvat_video", "cvat_rle"]

ENTITY_ATTRIBUTE = "entity_id"  # the attribute of every mask naming its entity


def cvat_rle(box: np.ndarray) -> list[int]:
    """CVAT's XML RLE of a mask cropped to its box ([h, w] bool): run lengths row by row,
    alternating background / mask, background first (possibly 0)."""
    flat = box.ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    if flat[0]:
        runs.insert(0, 0)  # runs start with the background
    return runs


def _entity_masks(view: Any, entities: list[Any]) -> dict[int, list[dict[str, str]]]:
    """entity id -> the <mask> attributes of each frame where it is present, in frame order."""
    keep = np.array([e.id for e in entities], dtype=np.uint32)
    masks: dict[int, list[dict[str, str]]] = {e.id: [] for e in entities}
    for t in range(len(view.frames)):
        ids, present = frame_entities(view, t, keep)
        for e in entities:
            if e.id in present:
                x, y, w, h = present[e.id]["bbox"]
                runs = cvat_rle(box_mask(ids, present[e.id]))
                masks[e.id].append({"frame": str(t), "keyframe": "1", "outside": "0", "occluded": "0",
                                    "z_order": "0", "rle": ", ".join(map(str, runs)), "left": str(x),
                                    "top": str(y), "width": str(w), "height": str(h)})
    return masks


def _tracks(masks: list[dict[str, str]], num_frames: int, layout: str) -> list[list[dict[str, str]]]:
    """The tracks (lists of <mask> attributes) of one entity's masks in `layout`; an outside
    mask follows each stretch of presence that ends before the last frame."""
    stretches: list[list[dict[str, str]]] = []
    for m in masks:
        if layout == "entity" and stretches and int(stretches[-1][-1]["frame"]) == int(m["frame"]) - 1:
            stretches[-1].append(m)
        else:
            stretches.append([m])
    for stretch in stretches:
        after = int(stretch[-1]["frame"]) + 1
        if after < num_frames:
            stretch.append({**stretch[-1], "frame": str(after), "outside": "1"})
    if layout == "entity":
        return [[m for stretch in stretches for m in stretch]] if stretches else []
    return stretches


# what XML 1.0 cannot hold at all (a file name may: U+FFFE / U+FFFF in a video name): not well-formed
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _characters(x: XMLGenerator, text: str) -> None:
    """`text` as element content that XML readers give back unchanged. XMLGenerator writes a
    carriage return as it is, and readers turn it (and CR LF) into LF: a label "a\rb" came back
    as "a\nb", no longer the label its tracks name (attributes escape it as &#13;)."""
    for k, part in enumerate(_NOT_XML.sub("\ufffd", text).split("\r")):
        if k:
            x.ignorableWhitespace("&#13;")  # written as it is: a character reference
        x.characters(part)


def _element(x: XMLGenerator, name: str, text: Any = None, attrs: dict[str, str] | None = None,
             indent: int = 0) -> None:
    x.ignorableWhitespace("\n" + "  " * indent)
    x.startElement(name, attrs or {})
    if text is not None:
        _characters(x, str(text))
    x.endElement(name)


def _entity_attribute_spec(x: XMLGenerator) -> None:
    """<attributes> of a label: the entity id every mask carries (a number, fixed along a track)."""
    x.ignorableWhitespace("\n          ")
    x.startElement("attributes", {})
    x.ignorableWhitespace("\n            ")
    x.startElement("attribute", {})
    for name, text in (("name", ENTITY_ATTRIBUTE), ("mutable", "False"), ("input_type", "number"),
                       ("default_value", "0"), ("values", f"0;{MAX_ID};1")):
        _element(x, name, text, indent=7)
    x.ignorableWhitespace("\n            ")
    x.endElement("attribute")
    x.ignorableWhitespace("\n          ")
    x.endElement("attributes")


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
        for name, text in (("name", label), ("color", f"#{r:02x}{g:02x}{b:02x}"), ("type", "mask")):
            _element(x, name, text, indent=5)
        _entity_attribute_spec(x)
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


LAYOUTS = ("frame", "entity")


MARK = ("entitysam", "export")  # <?entitysam export?>: marks a file this module wrote


def looks_exported(head: bytes) -> bool:
    """Whether a file starting with `head` is an XML file this module wrote (its mark, right
    after the XML declaration)."""
    return f"<?{MARK[0]} {MARK[1]}?>".encode() in head[:200]


def write_cvat_video(view: Any, out: Path, *, overwrite: bool = False, tracks: str = "frame") -> Path:
    """Write `view` as CVAT for video 1.1 XML to the file `out` (atomically); returns `out`.
    tracks: ``"frame"`` or ``"entity"`` (see the module docstring)."""
    if tracks not in LAYOUTS:
        raise InvalidArgumentError(f"CVAT track layout must be one of {', '.join(LAYOUTS)}, got {tracks!r}")
    entities = exported_entities(view)
    labels = categories(entities)
    masks = _entity_masks(view, entities)
    n = len(view.frames)
    with output_file(out, overwrite, mode="w", exported=looks_exported) as f:
        x = XMLGenerator(f, "utf-8")
        x.startDocument()
        x.processingInstruction(*MARK)  # XML readers (CVAT's) skip it; --overwrite recognises the file by it
        x.startElement("annotations", {})
        _element(x, "version", "1.1", indent=1)
        _meta(x, view, labels)
        track_id = 0
        for group, e in enumerate(entities, start=1):
            for track in _tracks(masks[e.id], n, tracks):
                x.ignorableWhitespace("\n  ")
                x.startElement("track", {"id": str(track_id), "label": e.label or labels[0], "source": "auto",
                                         "group_id": str(group)})
                for shape in track:
                    x.ignorableWhitespace("\n    ")
                    x.startElement("mask", shape)
                    _element(x, "attribute", e.id, {"name": ENTITY_ATTRIBUTE}, indent=3)
                    x.ignorableWhitespace("\n    ")
                    x.endElement("mask")
                x.ignorableWhitespace("\n  ")
                x.endElement("track")
                track_id += 1
        x.ignorableWhitespace("\n")
        x.endElement("annotations")
        x.endDocument()
        f.write("\n")
    return out
