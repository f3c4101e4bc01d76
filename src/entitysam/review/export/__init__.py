"""Exports of a result (a :class:`~entitysam.review.result.ResultFolder` or an
:class:`~entitysam.review.edits.EditSession`) to the formats other tools read, one module each:

* ``mots`` (:mod:`.mots`): MOTS PNG, a folder: ``<video>/instances/<frame>.png`` (16-bit, value
  ``class_id * 1000 + instance``) + ``<video>/instances/labels.txt``, what CVAT imports as mask tracks;
* ``cvat-video`` (:mod:`.cvat`): CVAT for video 1.1 XML, one ``<track>`` of ``<mask>`` per entity;
* ``ytvis`` (:mod:`.ytvis`): YouTube-VIS results JSON, one record per entity, an RLE (or null) per frame;
* ``coco-video`` (:mod:`.coco_video`): COCO-style video JSON (videos, images, annotations with
  RLE, bbox, area and track id).

Hidden entities are not exported (their pixels count as background), deleted ones do not exist.
Every export is written atomically (a hidden temporary file or folder renamed into place) and
refuses to replace an existing output unless ``overwrite``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from ...errors import InvalidArgumentError

__all__ = ["FORMATS", "export"]

# format name -> "module:function"; each function is write(view, out: Path, overwrite: bool, **options) -> Path
FORMATS: dict[str, str] = {
    "mots": "mots:write_mots",
    "cvat-video": "cvat:write_cvat_video",
    "ytvis": "ytvis:write_ytvis",
    "coco-video": "coco_video:write_coco_video",
}


def _writer(fmt: str) -> Callable[..., Path]:
    import importlib

    if fmt not in FORMATS:
        raise InvalidArgumentError(f"unknown export format {fmt!r}: choose from {', '.join(FORMATS)}")
    module, func = FORMATS[fmt].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), func)


def export(view: Any, fmt: str, out: str | os.PathLike, *, overwrite: bool = False, **options: Any) -> Path:
    """Write `view` (ResultFolder or EditSession) in format `fmt` to `out` (a file, or a folder
    for ``mots``); returns the path written. options: per format (``mots``: ``class_id``)."""
    return _writer(fmt)(view, Path(out), overwrite=overwrite, **options)
