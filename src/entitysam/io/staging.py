"""The staged (atomic) result folder: written aside, moved into place when complete.

A result folder DIR/<name> is written through these siblings (all hidden, all in DIR):

  .<name>.lock                  the OS lock (fcntl.flock) of the run writing <name>; holds its pid
  .<name>.partial-<pid>-<hex>   the new result while it is written (the staging folder)
  .<name>.old-<pid>-<hex>       the previous result, moved aside while the new one moves in
  .<name>.commit.json           the journal of a replacement in progress: {"old", "new"}

Replacing an existing result takes two renames (a non-empty folder cannot be renamed over
another). The journal is written before the first and removed after the second, so whatever
instant a run is killed at, the next run that takes the lock (:func:`recover_output`) finds
either the result in place, or the journal and enough to finish the move (the new result is
complete before the journal is written) or to put the old result back.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import OutputError, Remedy
from ..interrupts import deferred_sigint
from ..regular_file import read_regular_text
from .atomic import TEMP_PREFIX, fsync_dir, publish_no_replace, remove_dead_temp_file, write_json_atomic
from .manifest import MANIFEST, WRITER, read_manifest, written_by_entitysam
from .output_lock import LOCK_SUFFIX, OutputLock, pid_alive
from .owned import list_foreign, result_foreign
from .paths import UnsafeOverwriteError, check_not_input, describe_os_error

__all__ = ["JOURNAL_SUFFIX", "StagedOutput", "recover_output", "recover_leftovers", "remove_dead_temp_files",
           "dead_siblings"]

JOURNAL_SUFFIX = ".commit.json"

# Staging folders this process is writing now (never "stale", whatever their pid says).
_ACTIVE_STAGING: set[str] = set()


def _sibling_pid(path: Path, prefix: str) -> int | None:
    rest = path.name[len(prefix):]
    head, _, tail = rest.partition("-")
    if not (head.isascii() and head.isdigit()) or not tail or not all(c in "0123456789abcdef" for c in tail):
        return None
    return int(head)


def dead_siblings(final: str | os.PathLike, kind: str) -> list[Path]:
    """``.<name>.<kind>-<pid>-<hex>`` siblings of dead runs (or of this process, not active).
    With the lock of `final` held here, every one not active here is a dead run's: a run stages
    only under that lock, and the pid may be another machine's (an output folder shared by
    several machines: a pid alive here says nothing of a run there). The newest first. The one rule
    for the staging folders of a result, ``segment``'s and ``eval vipseg``'s."""
    final = Path(os.path.abspath(final))
    prefix = f".{final.name}.{kind}-"
    locked = OutputLock.held(final)
    out = []
    with contextlib.suppress(OSError):
        for p in final.parent.iterdir():
            if not p.name.startswith(prefix) or str(p) in _ACTIVE_STAGING:
                continue
            pid = _sibling_pid(p, prefix)
            if pid is not None and (locked or pid == os.getpid() or not pid_alive(pid)):
                out.append(p)
    return sorted(out, key=lambda p: p.stat().st_mtime if p.exists() else 0, reverse=True)


def _journal_path(final: Path) -> Path:
    return final.parent / f".{final.name}{JOURNAL_SUFFIX}"


def recover_output(final: str | os.PathLike) -> str | None:
    """Finish or undo a replacement of `final` that a killed run left half done, and remove the
    leftovers of dead runs. Call with the lock of `final` held. Returns what was done (or None).

    With a journal: the new result is moved in if it is complete and `final` is missing or
    still the old one; else the old one is put back. Without one (runs of older versions): a
    missing `final` gets the newest complete staging folder of a dead run, else its newest
    moved-aside old result.
    """
    final = Path(os.path.abspath(final))
    parent = final.parent
    journal = _journal_path(final)
    done = None
    try:  # (opened without waiting: a named pipe there made every run on `final` wait for ever)
        text = read_regular_text(journal)
        data = {} if text is None else json.loads(text)
    except FileNotFoundError:
        data = None
    except (OSError, ValueError, RecursionError):
        data = {}  # unreadable (written atomically, so not expected): use what the folders say
    if data is not None and not isinstance(data, dict):
        data = {}  # (JSON, but no journal: a list there raised AttributeError)
    if data is not None:
        names = {k: data.get(k) for k in ("old", "new")}
        old = new = None
        if isinstance(names["old"], str) and names["old"].startswith(f".{final.name}.old-") and "/" not in names["old"]:
            old = parent / names["old"]
        if isinstance(names["new"], str) and names["new"].startswith(f".{final.name}.partial-") \
                and "/" not in names["new"]:
            new = parent / names["new"]
        new_ready = new is not None and read_manifest(new) is not None
        if os.path.lexists(final):
            if new_ready and (old is None or not old.exists()):  # killed before the old result moved aside
                os.rename(final, old or parent / f".{final.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
                os.rename(new, final)
                done = "finished replacing the result"
        elif new_ready:
            os.rename(new, final)  # killed between the two renames
            done = "finished replacing the result"
        elif old is not None and old.is_dir():
            os.rename(old, final)
            done = "restored the previous result"
        fsync_dir(parent)
        journal.unlink(missing_ok=True)
    if not os.path.lexists(final):
        for kind, what in (("partial", "moved in the complete result"), ("old", "restored the previous result")):
            for p in dead_siblings(final, kind):
                if p.is_dir() and (kind == "old" or read_manifest(p) is not None):
                    os.rename(p, final)
                    done = f"{what} a killed run left in {p.name}"
                    break
            if os.path.lexists(final):
                break
    for kind in ("partial", "old"):
        for p in dead_siblings(final, kind):
            shutil.rmtree(p, ignore_errors=True)
    with contextlib.suppress(OSError):
        # a journal write killed midway by older versions: "..<name>.commit.json.tmp-*", ".<name>...tmp-*"
        for pattern in (f".{final.name}{JOURNAL_SUFFIX}.tmp-*", f"..{final.name}{JOURNAL_SUFFIX}.tmp-*"):
            for p in parent.glob(pattern):
                p.unlink()
    remove_dead_temp_files(parent)  # (and by this one: io.atomic's ".entitysam-tmp-<pid>-*")
    return done


def recover_leftovers(parent: str | os.PathLike, names: Sequence[str]) -> set[str]:
    """:func:`recover_output` for each result ``parent/<name>`` of `names` that has a sibling of
    a run beside it (lock file, journal, staging or moved-aside folder), under its lock (one
    another run holds is left to it). For runs that skip complete results without taking their
    lock: a kill in the last instant of a commit left those beside a complete result, where no
    later run would look. `parent` is listed once, whatever the number of names. Returns the
    names that had a killed run's staging folder and are still not complete: runs that were
    killed while segmenting them (out of memory, a crash, a pre-emption)."""
    try:
        entries = os.listdir(parent)
    except OSError:
        return set()
    marked, staged = set(), set()
    for entry in entries:
        name = entry[1:]
        for suffix in (LOCK_SUFFIX, JOURNAL_SUFFIX):
            if entry.startswith(".") and name.endswith(suffix):
                marked.add(name[:-len(suffix)])
        for kind in (".partial-", ".old-"):
            head, sep, _ = name.rpartition(kind)
            if entry.startswith(".") and sep:
                marked.add(head)
                if kind == ".partial-":
                    staged.add(head)
    killed = set()
    for name in sorted(marked.intersection(names)):
        try:
            lock = OutputLock.acquire(Path(parent) / name)
        except OutputError:  # busy (another run is on it) or not lockable: its own run sees to it
            continue
        try:
            recover_output(Path(parent) / name)
            if name in staged and read_manifest(Path(parent) / name) is None:
                killed.add(name)
        except OSError:
            pass  # (left as it is: the next run that takes the lock tries again)
        finally:
            lock.release()
    return killed


def remove_dead_temp_files(folder: str | os.PathLike, kind: str = "tmp") -> None:
    """Remove the temporary files ``.entitysam-<kind>-<pid>-<hex>`` (:mod:`io.atomic`'s ``tmp``, a
    logits file's ``partial``) that runs killed while writing them left in `folder`: those whose
    lock nobody holds (:func:`io.atomic.remove_dead_temp_file`: on a folder shared by several
    machines, a pid alive here may be another machine's dead run, or a pid dead here its live one)."""
    prefix = f"{TEMP_PREFIX}{kind}-"
    with contextlib.suppress(OSError):
        for p in Path(folder).glob(f"{prefix}*"):
            pid = _sibling_pid(p, prefix)
            if pid is not None:
                remove_dead_temp_file(p, pid)


class StagedOutput:
    """An output folder that appears only when complete, written by one run at a time.

    The lock of the folder is taken (see :class:`OutputLock`; ``wait_lock`` waits for another
    run instead of failing) and leftovers of killed runs are recovered (:func:`recover_output`).
    Files are written into a hidden sibling ``.<name>.partial-<pid>-<rand>``; :meth:`commit`
    writes ``manifest.json`` last and renames the folder into place, replacing an older result
    (``overwrite``) crash-safely: a kill at any instant leaves the old or the new result, or a
    journal from which the next run restores one. ``overwrite`` only replaces a folder this
    tool wrote that holds nothing else (no file or folder a user put in it), never one that is,
    contains or lies inside one of ``inputs``. On error (or
    :meth:`abort`) the partial folder is removed.
    """

    def __init__(self, final: str | os.PathLike, overwrite: bool = False, *, inputs: Sequence[Any] = (),
                 wait_lock: bool = False):
        self.final = Path(final)
        self.overwrite = overwrite
        self._done = True
        self._lock = OutputLock.acquire(self.final, wait=wait_lock)
        try:
            recover_output(self.final)
            self.check_free(self.final, overwrite, inputs=inputs)
            self.path = self.final.parent / f".{self.final.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
            self._done = False  # from here on abort() removes the folder (made or not) and releases the lock
            _ACTIVE_STAGING.add(str(self.path))
            self.path.mkdir()
        except BaseException as err:  # (a Ctrl-C right after mkdir included)
            if self._done:
                self._lock.release()
            else:
                self.abort()
            if isinstance(err, OSError):
                raise OutputError(describe_os_error(err, "the output folder")) from None
            raise

    def __del__(self) -> None:
        # Dropped unfinished: a Ctrl-C between the constructor's return and the start of the
        # `with` block left the staging folder and the lock file behind. (Only in the process that
        # made it: a forked child that exits must not delete its parent's folder.)
        if not getattr(self, "_done", True) and f".partial-{os.getpid()}-" in self.path.name:
            with contextlib.suppress(Exception):
                self.abort()

    @staticmethod
    def check_free(final: str | os.PathLike, overwrite: bool = False, inputs: Sequence[Any] = ()) -> None:
        """Raise OutputError if `final` exists and may not be replaced: without ``overwrite``,
        or (UnsafeOverwriteError) when it is not a folder this tool wrote, holds anything its runs
        did not write (:mod:`entitysam.io.owned`), or is, contains or lies inside one of `inputs`."""
        final = Path(final)
        if not os.path.lexists(final):
            return
        error = UnsafeOverwriteError if overwrite else OutputError  # (overwrite=True asked for a deletion)
        if final.is_symlink():
            raise error(f"{final} is a symbolic link: refusing to replace it, even when overwriting; "
                        "choose another output folder")
        if not final.is_dir():
            raise error(f"{final} exists and is not a folder: refusing to replace it, even when overwriting; "
                        "choose another output folder")
        if not overwrite:
            if read_manifest(final) is not None:
                raise OutputError(f"{final} already holds results", Remedy("overwrite", True, "to replace them"),
                                  Remedy("skip_existing", True, "to skip finished videos"))
            if written_by_entitysam(final):
                raise OutputError(f"{final} holds an unfinished entitysam result (or choose another output folder)",
                                  Remedy("overwrite", True, "to replace it"))
            raise OutputError(f"{final} already exists (not a complete entitysam result): "
                              "choose another output folder (overwriting replaces only entitysam results)")
        check_not_input(final, inputs, "the result folder")
        if not written_by_entitysam(final):
            raise UnsafeOverwriteError(
                f"{final} was not written by entitysam (no entitysam manifest.json in it): refusing to delete "
                "it, even when overwriting; move it away or choose another output folder")
        foreign = result_foreign(final)
        if foreign:
            raise UnsafeOverwriteError(
                f"{final} holds files entitysam did not write ({list_foreign(final, foreign)}): refusing to "
                "delete them, even when overwriting; move them away or choose another output folder")

    def commit(self, manifest: Mapping[str, Any]) -> Path:
        """Write ``manifest.json`` (marked complete) into the staging folder, then :meth:`publish`."""
        data = {**manifest, "writer": WRITER, "complete": True, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        try:
            write_json_atomic(self.path / MANIFEST, data, indent=1, durable=True)
        except OSError as err:
            self.abort()
            raise OutputError(describe_os_error(self.final_name(err), str(self.final))) from None
        except BaseException:
            self.abort()
            raise
        return self.publish()

    def publish(self) -> Path:
        """Move the staging folder to the final name, replacing an older result (``overwrite``)
        crash-safely, and release the lock. Returns the final path."""
        parent = self.final.parent
        journal = _journal_path(self.final)
        old = None
        # A Ctrl-C or SIGTERM takes effect once the result is moved in and the old one deleted (or
        # the move undone): raised in between, it left the old result in a hidden .old- folder.
        with deferred_sigint():
            try:
                if os.path.lexists(self.final):
                    self.check_free(self.final, self.overwrite)  # (it may have appeared since the start)
                    old = parent / f".{self.final.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
                    _write_journal(journal, {"old": old.name, "new": self.path.name, "pid": os.getpid()})
                    os.rename(self.final, old)  # step 1: the old result aside
                publish_no_replace(self.path, self.final)  # step 2: the new result in (never over another)
                fsync_dir(parent)
                journal.unlink(missing_ok=True)  # step 3: the replacement is done
            except OSError as err:
                self._roll_back(old)
                raise OutputError(describe_os_error(self.final_name(err), str(self.final))) from None
            except BaseException:
                self._roll_back(old)
                raise
            self._finish()
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)  # step 4 (a leftover is removed by the next run)
        return self.final

    def _roll_back(self, old: Path | None) -> None:
        """After a failed commit in this process: the old result back in place, no journal."""
        with contextlib.suppress(OSError):
            if old is not None and old.is_dir() and not os.path.lexists(self.final):
                os.rename(old, self.final)
            _journal_path(self.final).unlink(missing_ok=True)
        self.abort()

    def _finish(self) -> None:
        self._done = True
        _ACTIVE_STAGING.discard(str(self.path))
        self._lock.release()

    def abort(self) -> None:
        if not self._done:
            shutil.rmtree(self.path, ignore_errors=True)
            self._finish()

    def __enter__(self) -> "StagedOutput":
        return self

    def final_name(self, err: OSError) -> OSError:
        """`err` naming the result's file, not the one in the hidden staging folder: a failure
        removes that folder, and a message must name what the user asked for."""
        if isinstance(err.filename, str) and err.filename.startswith(str(self.path)):
            err.filename = str(self.final) + err.filename[len(str(self.path)):]
        return err

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            if isinstance(exc, OSError):
                self.final_name(exc)
            self.abort()


def _write_journal(path: Path, data: Mapping[str, Any]) -> None:
    """The journal, durably (flushed with its folder): it must survive a power loss."""
    write_json_atomic(path, data, durable=True)
