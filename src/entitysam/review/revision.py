"""Saving an edited result as a new revision, and replaying an ``edits.json`` log.

A revision is a complete result folder beside the original (``<name>.rev1``, ``<name>.rev2``,
...: the next free number, skipping one another process takes meanwhile; a revision of a revision
counts on from the same base name) holding

* ``panoptic/<frame>.png`` + ``panoptic.json`` and ``entities.json`` (with ``label`` and
  ``hidden`` per entity), written by the same writers as `entitysam segment`;
* ``edits.json``: ``{"format": "entitysam-edits", "format_version": 1, "original": {"path",
  "video", "manifest_sha256"}, "ops": [...]}``: the log that :func:`replay_edits` applies again;
* ``manifest.json`` (written last): the original's record plus ``"revision": {"number",
  "parent", "parent_manifest_sha256", "edits"}``.

A result folder that changed on disk since it was opened (see
:meth:`~entitysam.review.result.ResultFolder.check_unchanged`) gets no revision: ResultChangedError,
checked before the files are written and again before the revision is renamed into place.

It is written atomically through :class:`~entitysam.io.staging.StagedOutput` (a hidden sibling
folder renamed into place once complete): a failure leaves no revision folder, and what a save
killed at any instant left (a lock file, a staging folder) is recovered by the next save
(:func:`recover_revisions`). The original is
never touched, unless ``replace_original`` (then it is replaced as `--overwrite` replaces a
result: atomically, the old one removed only once the new one is in place).
"""

from __future__ import annotations

import os
import re
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping

from ..argtypes import check_flags, check_path_arg
from ..errors import EditError, InvalidArgumentError, OutputError
from ..io.atomic import write_json_atomic
from ..jsonio import load_file
from ..io.output_lock import OutputLockedError
from ..io.paths import describe_os_error
from ..io.result_files import write_result_files
from ..io.staging import StagedOutput, recover_leftovers
from .edits import EditSession
from .result import ResultFolder

__all__ = ["EDITS", "EDITS_FORMAT", "save_revision", "replay_edits", "next_revision_path", "edits_record",
           "recover_revisions"]

EDITS = "edits.json"
EDITS_FORMAT = "entitysam-edits"
EDITS_VERSION = 1
_REV = re.compile(r"^(?P<base>.+)\.rev(?P<n>[0-9]+)$")
_TRIES = 8  # revision numbers tried when other processes save revisions of the same result at once
# Records of the original's manifest that describe its own run, not the revision.
_RUN_ONLY = ("writer", "complete", "created", "updated", "files", "seconds", "status", "pid", "revision")


def _base_name(original: Path) -> str:
    """The name revisions of `original` count on from: its own without its ``.revK``."""
    m = _REV.match(original.name)
    return m.group("base") if m else original.name


def recover_revisions(original: str | os.PathLike) -> None:
    """Recover what killed saves of revisions of `original` left beside them (io.staging's
    :func:`~entitysam.io.staging.recover_leftovers`, under each one's lock; one a live save holds
    is left to it): a SIGKILL between a revision's rename into place and the release of its lock
    left ``.<base>.revN.lock`` for good, since no later save takes the lock of a saved revision."""
    original = Path(original)
    named = re.compile(rf"^\.?(?P<name>{re.escape(_base_name(original))}\.rev[0-9]+)")
    try:
        entries = os.listdir(original.parent)
    except OSError:
        return
    recover_leftovers(original.parent, sorted({m.group("name") for e in entries if (m := named.match(e))}))


def next_revision_path(original: str | os.PathLike, *, after: int = 0) -> Path:
    """``<base>.revN`` beside `original` with N one above every existing ``<base>.rev*`` and above
    `after` (base: the original's name without its own ``.revK``)."""
    original = Path(original)
    base = _base_name(original)
    mine = re.compile(rf"^{re.escape(base)}\.rev(?P<n>[0-9]+)$")
    taken = [int(mm.group("n")) for p in original.parent.iterdir() if (mm := mine.match(p.name))]
    return original.parent / f"{base}.rev{max(taken + [after]) + 1}"


def edits_record(session: EditSession) -> dict[str, Any]:
    """The ``edits.json`` content of a session."""
    result = session.result
    return {"format": EDITS_FORMAT, "format_version": EDITS_VERSION,
            "original": {"path": str(result.path), "video": result.name,
                         "manifest_sha256": result.manifest_digest()},
            "ops": [dict(op) for op in session.ops]}


def save_revision(session: EditSession, *, dest: str | os.PathLike | None = None,
                  replace_original: bool = False) -> Path:
    """Write the session's current result as a complete result folder (see the module docstring);
    returns its path. dest: the folder (default :func:`next_revision_path`; must not exist);
    replace_original: write it over the original folder instead (atomically)."""
    if not isinstance(session, EditSession):  # anything else failed deep inside with an AttributeError
        raise InvalidArgumentError(f"session must be an EditSession (EditSession(ResultFolder.open(path))), got "
                                   f"{type(session).__name__}")
    check_flags(replace_original=replace_original)  # "no" is truthy: it would replace the original
    if dest is not None:
        dest = check_path_arg(dest, "dest")
    result = session.result
    if replace_original and dest is not None:
        raise InvalidArgumentError("save_revision: give dest or replace_original, not both")
    if replace_original or dest is not None:
        return _save_to(session, Path(result.path if replace_original else dest), replace_original)
    recover_revisions(result.path)
    after = 0
    for _ in range(_TRIES - 1):
        final = next_revision_path(result.path, after=after)
        try:
            return _save_to(session, final, False)
        except OutputError as err:
            # another process (a second `entitysam view` of the result) took this number since it was
            # chosen: the save was refused ("being written by another run", "already holds results")
            if not (isinstance(err, OutputLockedError) or os.path.lexists(final)):
                raise
            after = int(_REV.match(final.name).group("n"))
    return _save_to(session, next_revision_path(result.path, after=after), False)


def _save_to(session: EditSession, final: Path, replace_original: bool) -> Path:
    result = session.result
    if not replace_original and os.path.lexists(final):
        raise OutputError(f"{final} already exists: a revision is written to a new folder (choose another dest)")
    # absolute(), not abspath(): abspath drops "link/.." as text, where the system goes to the
    # parent of the link's target (dest="link/../rev", link -> ORIGINAL/panoptic, wrote ORIGINAL/rev)
    inside = final.absolute().parent.resolve() / final.name
    if not replace_original and Path(result.path).resolve() in inside.parents:
        # replacing the original later (replace_original, --overwrite) would delete the revision with it
        raise OutputError(f"{final} is inside the result folder {result.path}: a revision is written beside "
                          "its original, not into it (choose another dest)")
    result.check_unchanged()  # the frames, entities and areas were read when it was opened: still those files?
    log = edits_record(session)
    manifest = revision_manifest(session, final, log)
    try:
        with StagedOutput(final, overwrite=replace_original) as staged:
            files = _write_files(session, staged.path)
            write_json_atomic(staged.path / EDITS, log, indent=1)
            result.check_unchanged()  # changed while the PNGs were read: the staged folder is dropped
            return staged.commit({**manifest, "files": files + [EDITS]})
    except OSError as err:  # (named after the staging folder is gone: its files by their final names)
        raise OutputError(describe_os_error(err, str(final))) from None


def revision_manifest(session: EditSession, final: Path, log: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest of a revision: the original's records, its counts updated, the revision's."""
    result = session.result
    parent_rev = result.manifest.get("revision") or {}
    m = _REV.match(final.name)
    number = int(m.group("n")) if m else int(parent_rev.get("number", 0)) + 1
    base = {k: v for k, v in result.manifest.items() if k not in _RUN_ONLY}
    if result.kind == "online":  # the revision has the offline layout (entities.json, no entities.jsonl)
        base = {k: v for k, v in base.items() if k not in ("tracks", "frames_emitted", "latency_seconds")}
        base["online_origin"] = True
    return {**base, "format": "entitysam-segment", "num_frames": result.num_frames,
            "entities": len(session.entities),
            "revision": {"number": number, "parent": str(result.path),
                         "parent_manifest_sha256": log["original"]["manifest_sha256"], "edits": len(log["ops"])}}


def _write_files(session: EditSession, directory: Path) -> list[str]:
    frames = [SimpleNamespace(t=f["frame"], index=f["source_frame"], name=f["name"], time=f["time"])
              for f in session.frames]
    entities = [{"id": e.id, "score": e.score, "query_index": e.query_index, "label": e.label, "hidden": e.hidden}
                for e in session.entities]
    id_maps = (session.id_map(t) for t in range(session.num_frames))
    return write_result_files(directory, ("panoptic", "entities"), name=session.name, fps=session.fps,
                              frames=frames, id_maps=id_maps, entities=entities,  # files identical whatever the workers
                              sample_aspect_ratio=Fraction(*session.result.sample_aspect_ratio))


def read_edits(edits_json: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """An ``edits.json`` (path or its content), checked for its format; EditError if it is not one."""
    if isinstance(edits_json, Mapping):
        data = dict(edits_json)
    else:
        # (not a plain read: a named pipe in its place waited for a writer for good)
        data = load_file(edits_json, "the edit log", EditError)
    if not isinstance(data, dict) or data.get("format") != EDITS_FORMAT or not isinstance(data.get("ops"), list):
        raise EditError(f"{edits_json if not isinstance(edits_json, Mapping) else 'edits'}: not an entitysam "
                        f"edit log (expected format {EDITS_FORMAT!r} with a list of ops)")
    if not isinstance(data.get("original", {}), (dict, type(None))):
        raise EditError(f"{edits_json if not isinstance(edits_json, Mapping) else 'edits'}: its \"original\" "
                        f"is not an object (got {data['original']!r:.40})")
    if data.get("format_version") != EDITS_VERSION:
        raise EditError(f"edit log format_version {data.get('format_version')!r} is not supported "
                        f"(this version reads {EDITS_VERSION})")
    return data


def replay_edits(original_dir: str | os.PathLike, edits_json: str | os.PathLike | Mapping[str, Any], *,
                 check_digest: bool = True) -> EditSession:
    """A session with the operations of `edits_json` applied to the result in `original_dir`.
    check_digest: refuse (EditError) a log recorded on a result whose manifest differs."""
    check_flags(check_digest=check_digest)
    if not isinstance(edits_json, Mapping):
        check_path_arg(edits_json, "edits_json")
    data = read_edits(edits_json)
    result = ResultFolder.open(original_dir)
    want = (data.get("original") or {}).get("manifest_sha256")
    if check_digest and want is not None and want != result.manifest_digest():
        raise EditError(f"{original_dir}: the edit log was recorded on another result (manifest digest "
                        f"{str(want)[:12]}... differs from {result.manifest_digest()[:12]}...)")
    try:
        return EditSession(result, data["ops"])
    except EditError as err:
        raise EditError(f"replaying the edit log on {original_dir}: {err}") from None
