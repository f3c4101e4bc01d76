"""Exports of a result (a :class:`~entitysam.review.result.ResultFolder` or an
:class:`~entitysam.review.edits.EditSession`) to the formats other tools read, one module each:

* ``mots`` (:mod:`.mots`): MOTS PNG, a folder: ``<video>/instances/<frame>.png`` (16-bit, value
  ``class_id * 1000 + instance``) + ``<video>/instances/labels.txt``, what CVAT imports as mask tracks;
* ``cvat-video`` (:mod:`.cvat`): CVAT for video 1.1 XML, ``<track>`` s of ``<mask>`` (one per entity
  per frame, the layout CVAT imports completely, or one per entity: ``tracks="entity"``);
* ``ytvis`` (:mod:`.ytvis`): YouTube-VIS results JSON, one record per entity, an RLE (or null) per frame;
* ``coco-video`` (:mod:`.coco_video`): COCO-style video JSON (videos, images, annotations with
  RLE, bbox, area and track id).

An anamorphic result's pixel shape (manifest ``sample_aspect_ratio``) is in none of them: no
format has a field for it (CVAT's ``original_size``, COCO's width / height: the stored frame's).
A result folder that changed on disk since it was opened is not exported (ResultChangedError).
Hidden entities are not exported (their pixels count as background), deleted ones do not exist.
Every export is written atomically (a hidden temporary file or folder renamed into place) and
refuses to replace an existing output unless ``overwrite``, and even then replaces only an
earlier export (a folder with ``entitysam-export.json``, a file with its format's mark), never
a path inside a result folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from ...errors import InvalidArgumentError, OutputError

__all__ = ["FORMATS", "SUFFIXES", "export", "export_bytes"]

# format name -> "module:function"; each function is write(view, out: Path, overwrite: bool, **options) -> Path
FORMATS: dict[str, str] = {
    "mots": "mots:write_mots",
    "cvat-video": "cvat:write_cvat_video",
    "ytvis": "ytvis:write_ytvis",
    "coco-video": "coco_video:write_coco_video",
}

# file name ending of each format's output ("" for a folder, downloaded as a zip)
SUFFIXES = {"mots": "", "cvat-video": ".xml", "ytvis": ".json", "coco-video": ".json"}


def _writer(fmt: str) -> Callable[..., Path]:
    import importlib

    if not isinstance(fmt, str) or fmt not in FORMATS:
        # quoted in at most 80 characters: the viewer's ?format= may be 60 kB long (as long a message)
        raise InvalidArgumentError(f"unknown export format {fmt!r:.80}: choose from {', '.join(FORMATS)}")
    module, func = FORMATS[fmt].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), func)


def export(view: Any, fmt: str, out: str | os.PathLike, *, overwrite: bool = False, **options: Any) -> Path:
    """Write `view` (ResultFolder or EditSession) in format `fmt` to `out` (a file, or a folder
    for ``mots``); returns the path written. options: per format (``mots``: ``class_id``, ``txt``;
    ``cvat-video``: ``tracks``; ``ytvis``: ``video_id``)."""
    from ...argtypes import check_flags, check_path_arg
    from ..edits import check_view
    from .common import check_outside_results

    write = _writer(fmt)
    check_view(view)
    out = check_path_arg(out, "out")
    if out.name in ("", ".."):
        # "." or "x/.." names a folder by no name of its own: the staging folder made beside it by
        # name failed (a traceback for "-o . --overwrite"), or landed inside it (for "-o ..")
        out = Path(os.path.realpath(out))
    check_flags(overwrite=overwrite)  # "no" is truthy: it would replace an earlier export
    check_outside_results(view, out)
    _check_unchanged(view)
    return write(view, out, overwrite=overwrite, **options)


def _check_unchanged(view: Any) -> None:
    """ResultChangedError when the result folder behind `view` changed on disk since it was opened."""
    result = getattr(view, "result", view)  # an EditSession's result, or the ResultFolder itself
    check = getattr(result, "check_unchanged", None)
    if check is not None:
        check()


def export_bytes(view: Any, fmt: str, **options: Any) -> tuple[bytes, str]:
    """The export as one download: (bytes, file name). A folder format (``mots``) comes as a
    zip whose root holds the folder's content (``<video>/instances/...``: the archive layout CVAT
    imports); the others as the file itself."""
    import io
    import tempfile
    import zipfile

    from ...io.paths import describe_os_error

    _writer(fmt)  # unknown formats fail before anything is written
    name = f"{view.name}-{fmt}{SUFFIXES[fmt]}"
    try:
        with tempfile.TemporaryDirectory(prefix="entitysam-export-") as tmp:
            out = export(view, fmt, Path(tmp) / name, **options)
            _check_unchanged(view)  # changed while the exporter read it: no download of a mix
            if not out.is_dir():
                return out.read_bytes(), name
            files = {path.relative_to(out).as_posix(): path for path in sorted(out.rglob("*")) if path.is_file()}
            _check_zip_names(view, files)
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
                for arcname, path in files.items():
                    zf.write(path, arcname)
            return buf.getvalue(), f"{name}.zip"
    except OSError as err:  # a full temporary folder: a message for the viewer, not a server error
        err.filename = None  # (a file of the temporary folder, removed)
        where = tempfile.tempdir or "the temporary folder"
        raise OutputError(describe_os_error(err, f"the {fmt} export of {view.name} in {where}")) from None


def _check_zip_names(view: Any, names: Any) -> None:
    """OutputError when a file name cannot be put in the zip: Python's zipfile writes names as
    UTF-8, and frames named after input files whose names are not UTF-8 (kept as ``\\udcXX``
    escapes) made the download a 500 (UnicodeEncodeError). The folder itself can be written."""
    for arcname in names:
        try:
            arcname.encode("utf-8")
        except UnicodeEncodeError:
            shown = ascii(arcname.rsplit("/", 1)[-1])
            raise OutputError(f"cannot download the export of {view.name} as a zip: the file name {shown} is not "
                              "valid UTF-8 (nor were the input's file names); save the revision and export it to a "
                              "folder instead") from None
