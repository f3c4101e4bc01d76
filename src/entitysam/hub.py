"""The published checkpoints: where they are found, how they are downloaded.

``resolve_checkpoint("vit-s")`` looks, in order, at

1. ``$ENTITYSAM_HOME/checkpoints/vit-s/model_0009999.safetensors``, then ``model_0009999.pth``
   (``ENTITYSAM_HOME`` defaults to ``~/.cache/entitysam``): put a manually downloaded file here;
2. the Hugging Face cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, read at each call), without network;
3. the Hugging Face hub, repository ``mqye/entitysam``, file ``checkpoints/vit-s/model_0009999.pth``
   (``HF_ENDPOINT`` selects a mirror), through ``huggingface_hub.hf_hub_download`` into its cache.

Whatever the place, the file is loaded weights-only (``torch.load(weights_only=True)``, see
:func:`entitysam.checkpoints.read_state_dict`): a checkpoint in the cache can never run code.

A file of the Hugging Face cache is used only once its SHA-256 is the one the hub published for
it: huggingface_hub keeps a download as ``blobs/<etag>`` (the snapshot path is a link to it), the
etag of a file stored with Git LFS, as every checkpoint is, is the SHA-256 of its content, and
huggingface_hub checks a download's size only, and only when the server sends one. A mirror or
proxy that alters the bytes, or ends a response without a length early, left a damaged file that
every later run loaded. The hash costs 0.2 s per 300 MB; a damaged file is removed, so that the
next download (one for all processes sharing the cache: huggingface_hub's lock) fetches it again.

When none works, :class:`~entitysam.errors.ModelNotAvailableError` says what to download, from
where, and where to put it (or to pass its path as the checkpoint).

``resolve_checkpoint("demo")`` is the small demo model shipped inside the package
(``entitysam/weights/demo.safetensors``, trained here on synthetic scenes only, see
docs/demo-model.md): never downloaded, always available offline.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from .errors import ModelNotAvailableError, Remedy
from .regular_file import open_regular

__all__ = [
    "REPO_ID",
    "CHECKPOINT_FILES",
    "BUNDLED_MODELS",
    "bundled_checkpoint_path",
    "default_endpoint",
    "checkpoint_url",
    "local_checkpoint_path",
    "resolve_checkpoint",
]

REPO_ID = "mqye/entitysam"
CHECKPOINT_FILES = {
    "vit-s": "checkpoints/vit-s/model_0009999.pth",
    "vit-l": "checkpoints/vit-l/model_0009999.pth",
}
# Models shipped inside the package: name -> file relative to the entitysam package folder.
BUNDLED_MODELS = {"demo": "weights/demo.safetensors"}
DEFAULT_REVISION = "main"
_PROBE_TIMEOUT = 10.0
# A check taking longer (a slow network file system: minutes for a vit-l) is announced once.
_SLOW_CHECK_S = 2.0


def default_endpoint() -> str:
    """``HF_ENDPOINT`` (read now, not at import) or https://huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def checkpoint_url(name: str, endpoint: str | None = None, revision: str = DEFAULT_REVISION) -> str:
    return f"{(endpoint or default_endpoint()).rstrip('/')}/{REPO_ID}/resolve/{revision}/{_filename(name)}"


def local_checkpoint_path(name: str) -> Path:
    """Where a manually downloaded checkpoint is looked for first."""
    home = Path(os.environ.get("ENTITYSAM_HOME") or Path.home() / ".cache" / "entitysam").expanduser()
    return home / "checkpoints" / name / Path(_filename(name)).name


def bundled_checkpoint_path(name: str) -> Path:
    """The weights file of a model shipped inside the package (``demo``)."""
    if name not in BUNDLED_MODELS:
        raise ModelNotAvailableError(f"{name!r} is not a bundled model; bundled: {', '.join(BUNDLED_MODELS)}")
    path = Path(__file__).resolve().parent / BUNDLED_MODELS[name]
    if not path.is_file():
        raise ModelNotAvailableError(
            f"the bundled {name} weights are missing from this installation ({path}); reinstall entitysam "
            f"(`pip install -e .` from a full clone), or rebuild them with scripts/export_demo.py")
    return path


def _filename(name: str) -> str:
    try:
        return CHECKPOINT_FILES[name]
    except KeyError:
        raise ModelNotAvailableError(f"unknown model {name!r}: published models are "
                                     f"{', '.join(CHECKPOINT_FILES)}, bundled: {', '.join(BUNDLED_MODELS)} "
                                     "(or pass the path of a checkpoint file)") from None


def _not_available(name: str, cause: str, endpoint: str, revision: str) -> ModelNotAvailableError:
    """What to do when a published checkpoint cannot be had: download it or point at a file."""
    return ModelNotAvailableError(
        f"cannot get the {name} checkpoint: {cause}\n"
        f"  With network access, `entitysam download {name}` fetches it into the Hugging Face cache.\n"
        f"  Otherwise download {checkpoint_url(name, endpoint, revision)}\n"
        f"  (Hugging Face repository {REPO_ID}, file {_filename(name)}) and either\n"
        f"    - put it at {local_checkpoint_path(name)} (found automatically; ENTITYSAM_HOME moves this folder), or",
        Remedy("checkpoint", metavar="/path/to/model_0009999.pth"))


def _default_cache_dir() -> str | None:
    """The cache folder ``HF_HUB_CACHE`` / ``HF_HOME`` name now (None: huggingface_hub's default).
    huggingface_hub reads them once, at import: a script or notebook that points them at a scratch
    disk after something imported it had the checkpoint downloaded into the home folder anyway."""
    for var, sub in (("HF_HUB_CACHE", ""), ("HUGGINGFACE_HUB_CACHE", ""), ("HF_HOME", "hub")):
        if os.environ.get(var):
            return os.path.join(os.path.expandvars(os.path.expanduser(os.environ[var])), sub)
    return None


def _offline_mode() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as huggingface_hub reads it, but read now:
    huggingface_hub reads it once, at import, and a process that sets it later means it too."""
    try:
        from huggingface_hub import constants  # noqa: PLC0415 - optional dependency

        if constants.HF_HUB_OFFLINE:
            return True
    except ImportError:
        pass
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _probe(endpoint: str) -> str | None:
    """A fast reachability check of the endpoint (DNS + TCP connect), so that a machine without
    network gets the instructions at once instead of after huggingface_hub's retries.
    Returns the cause when unreachable. Skipped when a proxy is configured."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                                       "all_proxy")):
        return None
    parts = urlsplit(endpoint)
    host = parts.hostname
    if not host:
        return f"invalid endpoint {endpoint!r}"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT):
            return None
    except OSError as err:
        return f"no network connection to {host}:{port} ({err.strerror or err})"


def resolve_checkpoint(name: str, *, download: bool = True, cache_dir: str | os.PathLike | None = None,
                       endpoint: str | None = None, revision: str = DEFAULT_REVISION,
                       force_download: bool = False, say: Callable[[str], None] | None = None,
                       model_folder: bool = True) -> Path:
    """Path of the published checkpoint `name` (``vit-s`` / ``vit-l``), downloading it if needed.

    Raises ModelNotAvailableError with download instructions when it cannot be found or fetched.
    A bundled model (``demo``) is returned from the package, whatever the other arguments.
    A file of the Hugging Face cache is used only once its SHA-256 is the hub's
    (see `_check_cached`); a damaged one is removed and downloaded again. say: told one line when
    that check takes more than 2 s (None: nothing is said). model_folder=False: the Hugging Face
    cache only (what `entitysam download --cache-dir` fills), not ``$ENTITYSAM_HOME``.
    """
    if name in BUNDLED_MODELS:
        return bundled_checkpoint_path(name)
    filename = _filename(name)
    endpoint = (endpoint or default_endpoint()).rstrip("/")
    local = local_checkpoint_path(name)
    if not force_download and model_folder:
        # A .safetensors copy beside it is preferred: it holds tensors only, nothing to unpickle.
        for candidate in (local.with_suffix(".safetensors"), local):
            if candidate.is_file():
                return candidate
    try:
        from huggingface_hub import hf_hub_download  # noqa: PLC0415 - optional dependency
    except ImportError:
        raise _not_available(name, "huggingface_hub is not installed (pip install 'entitysam[video]')",
                             endpoint, revision) from None
    kwargs = dict(repo_id=REPO_ID, filename=filename, revision=revision, endpoint=endpoint,
                  cache_dir=str(cache_dir) if cache_dir is not None else _default_cache_dir())
    damage = None
    if not force_download:
        try:
            cached = Path(hf_hub_download(**kwargs, local_files_only=True))
        except Exception:  # noqa: BLE001 - not cached (LocalEntryNotFoundError and friends)
            cached = None
        if cached is not None:
            checked = _check_cached(cached, filename, say, f"cached {name}")
            if checked is None:
                return cached
            damage, gone = checked
            if not gone:  # a download would find the same file in its place
                raise _not_available(name, f"the cached file {damage}", endpoint, revision)
    if not download or _offline_mode():
        cause = f"the cached file {damage}" if damage else "it is not in the local cache"
        if download:  # and so no probe either: offline means no connection at all
            cause += ", and HF_HUB_OFFLINE forbids downloading it"
        raise _not_available(name, cause, endpoint, revision)
    cause = _probe(endpoint)
    if cause is not None:
        raise _not_available(name, cause, endpoint, revision)
    try:
        path = Path(hf_hub_download(**kwargs, force_download=force_download))
    except Exception as err:  # noqa: BLE001 - network, HTTP, offline mode, disk: all end in the same advice
        raise _not_available(name, f"download failed ({_download_cause(err)})", endpoint, revision) from None
    checked = _check_cached(path, filename, say, f"downloaded {name}")
    if checked is not None:
        damage, gone = checked
        again = "; run again to download it again" if gone else ""
        raise _not_available(name, f"the downloaded file {damage}{again}", endpoint, revision)
    return path


# Failures of the cache folder (a socket's errors, below httpx's, are no cache's)
_CACHE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.EISDIR, errno.ENOSPC,
                 errno.EDQUOT}


def _download_cause(err: BaseException) -> str:
    """What stopped hf_hub_download, in one line: huggingface_hub words most failures of the
    hub's first answer as a connection problem ("check your connection"), and a failed forced
    download as "Force download failed due to the above error"; the HTTP status or the error
    below says what happened."""
    seen = err
    while seen is not None:
        response = getattr(seen, "response", None)
        status = getattr(response, "status_code", None)
        if isinstance(status, int) and status >= 400:
            reason = getattr(response, "reason_phrase", "") or ""
            hint = {401: "the repository asks for a token (HF_TOKEN)", 403: "access refused (HF_TOKEN)",
                    404: "no such file at this endpoint (HF_ENDPOINT)"}.get(status)
            if hint is None and status >= 500:
                hint = "the server failed: try again later"
            return f"the hub answered HTTP {status} {reason}".rstrip() + (f": {hint}" if hint else "")
        if isinstance(seen, OSError) and seen.errno in _CACHE_ERRNOS:
            where = f" {seen.filename}" if seen.filename else ""
            return f"cannot write{where} ({seen.strerror}): the cache folder must be a writable folder " \
                   "with room for the file (cache_dir, HF_HUB_CACHE or HF_HOME choose another)"
        seen = seen.__cause__ or seen.__context__
    return f"{type(err).__name__}: {err}".strip().splitlines()[0]


_SHA256 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 22


def _check_cached(path: Path, filename: str, say: Callable[[str], None] | None = None,
                  what: str = "") -> tuple[str, bool] | None:
    """None when the file at `path` (a snapshot link of the cache, to the file `filename` of the
    repository) has the SHA-256 its blob is named after; else the problem, worded to follow "the
    file ...", and whether it is gone (so that a download can put a good one in its place).

    The damaged blob is removed when it still is the file that was read (a process beside this
    one may have put a good one in its place meanwhile), and only when it lies in this
    repository's blobs folder: a link leading elsewhere (made by hand, or a cache copied with its
    absolute links) names a file the cache did not write, which is never deleted. say: told "checking
    the `what` checkpoint ..." once the hash has taken over `_SLOW_CHECK_S`."""
    blob = Path(os.path.realpath(path))
    expected = blob.name
    if not _SHA256.fullmatch(expected):  # a copy made without links, or a file of another kind
        return None
    try:
        identity = _identity(os.lstat(blob))
        f = open_regular(blob, follow_links=False)
    except FileNotFoundError:
        return f"{blob} is missing", True
    except OSError as err:
        return f"{blob} cannot be read ({err.strerror or type(err).__name__}); fix or delete it", False
    if f is None:
        problem = f"{blob} is not a regular file"
    else:
        with f:
            identity = _identity(os.fstat(f.fileno()))
            digest = hashlib.sha256()
            buf = bytearray(_CHUNK)
            view = memoryview(buf)
            started = time.monotonic()
            while n := f.readinto(buf):
                digest.update(view[:n])
                if say is not None and time.monotonic() - started > _SLOW_CHECK_S:
                    say(f"checking the {what} checkpoint ({_size(identity[2])}) against the hub's SHA-256 ...")
                    say = None
        if digest.hexdigest() == expected:
            return None
        problem = (f"{blob} is damaged (SHA-256 {digest.hexdigest()[:16]}..., the hub's is {expected[:16]}...: "
                   "cut short or altered on its way)")
    # path is <cache>/<repo folder>/snapshots/<commit>/<filename>
    blobs = Path(path).parents[len(Path(filename).parts) + 1] / "blobs"
    if blob.parent != Path(os.path.realpath(blobs)):
        return (f"{problem}; not removed: it is no file of the cache (the cache's link {path} leads "
                f"outside {blobs}): delete that link, or put the right file there"), False
    # huggingface_hub's lock of that blob: <cache>/.locks/<repo folder>/<blob name>.lock
    lock = blobs.parent.parent / ".locks" / blobs.parent.name / f"{expected}.lock"
    outcome, gone = _removed(blob, identity, lock)
    return problem + outcome, gone


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _removed(blob: Path, identity: tuple[int, int, int, int], lock: Path) -> tuple[str, bool]:
    """Remove the damaged `blob` if it still is the file that was checked; what happened, worded
    to end the problem's sentence, and whether the blob is gone (or replaced).

    Checked and removed under huggingface_hub's own lock of that blob (`lock`): a download renames
    its finished file into the blob's place under it, so a good file put there between the check
    and the removal was deleted, and the process that had just downloaded it was left a dangling
    link. Held for the check and removal only, not the hash: a download waiting on it waits for
    milliseconds, not for minutes."""
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(_blob_lock(lock))
        except OSError as err:
            return f"; delete it (its lock {lock} cannot be taken: {err.strerror or err})", False
        try:
            st = os.lstat(blob)
        except FileNotFoundError:  # another process removed it already
            return "; removed", True
        except OSError as err:
            return f"; delete it (it cannot be checked: {err.strerror})", False
        if _identity(st) != identity:
            return "; replaced since by another process", True
        try:
            blob.unlink()
        except FileNotFoundError:
            return "; removed", True
        except OSError as err:
            return f"; delete it (it cannot be removed: {err.strerror})", False
    return "; removed", True


def _blob_lock(lock: Path) -> contextlib.AbstractContextManager:
    """huggingface_hub's lock of a blob, taken the way it takes it: WeakFileLock falls back to a
    lock file of its own (SoftFileLock) where the file system has no flock; a plain FileLock there
    would exclude nothing. Versions before WeakFileLock (< 0.23) used filelock.FileLock."""
    try:
        from huggingface_hub.utils import WeakFileLock as take  # noqa: PLC0415 - optional dependency
    except ImportError:
        from filelock import FileLock as take  # noqa: PLC0415 - huggingface_hub's dependency
    lock.parent.mkdir(parents=True, exist_ok=True)
    return take(str(lock))
