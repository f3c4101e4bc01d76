"""`entitysam view`: the review web app (Starlette on uvicorn) over one result folder.

Routes (all under one per-run token for what changes anything, and for every route but / and
/static/ unless served on loopback only: entitysam.review.access):

    GET  /                      the player (static/index.html)
    GET  /static/<file>         the package's static files (plain JS/CSS, no build step)
    GET  /files/<path>          any file inside the result folder (overlay.mp4, panoptic PNGs, ...)
    GET  /api/video             size, fps, frame names, whether the source frames can be read,
                                `result_version`: names the opened result (the ?rv= of the URLs below)
    GET  /api/state             entities (colour, label, score, frames, area, presence), the original
                                ids (`ids`: panoptic.json's, sorted, 0 first), the id lookup (`lookup`:
                                per frame range, the current id of each entry of `ids`, by position:
                                O(entities) whatever the ids), the edit log, undo/redo availability;
                                `version` counts the edits; `changed_on_disk`: why the result can no
                                longer be saved or exported (replaced, deleted), else null
    GET  /api/frames/<i>.jpg    source frame i as JPEG (404 when the source is gone: the client
                                paints a neutral background); ?w=N scaled to N columns; at full
                                size a source JPEG of the frame is sent as it is
    GET  /api/idmaps/<i>.png    the ORIGINAL id map of frame i (RGB PNG); the client maps its ids
                                through the lookup of /api/state, so edits never invalidate these
    GET  /api/idmaps/<i>.runs   the same id map as row-wise runs (entitysam.review.idruns): what
                                the player reads (no PNG decode, no per-pixel pass in the browser)
    GET  /api/thumbs/<id>.png   a crop around the entity in its largest frame
    POST /api/edits             one edit op (JSON: {"op": "hide"|"show"|"delete"|"merge"|"split"|"label", ...})
    POST /api/undo, /api/redo   the edit session's undo / redo
    POST /api/save              save_revision(session): a new revision folder, its path is returned
    POST /api/export?format=F   the exporter's output, downloaded (a folder comes zipped)

POST requests need the token (header ``X-EntitySAM-Token`` or query ``token``): 403 otherwise.
A POST carrying ``X-EntitySAM-Version: N`` (the page sends the state version it shows) is refused
with 409 ``{"error", "state": <the current state>}`` and nothing done when the edit is at another
version (another tab or window changed it): never an undo of an edit the page has not shown.
Save and export answer 409 when the result folder changed on disk since it was opened (nothing
written); read-only id maps and thumbnails 404 when a file is gone, 422 when it is unreadable.
Frames, id maps, thumbnails and /files/ answer 409 when another result is in the folder's place
now (`segment --overwrite`, a revision saved over it; a few stat calls per request, see
entitysam.review.on_disk), 404 when it is gone: never the new result's files under the old one's
entities and edits. Frames, id maps and thumbnails are cached long only under a URL carrying
?rv=<result_version> (the page's URLs; another result's version: 409), otherwise "no-cache".
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
import threading
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import numpy as np

from ..errors import EntitySAMError, ResultFolderError, StaleVersionError
from ..io.overlay import entity_color
from ..regular_file import open_regular
from .access import allowed_hosts
from .idruns import encode_rgb_id_runs
from .lru import LRU
from .images import jpeg_at_least, jpeg_bytes, scale_to_width, shown_as_is, thumbnail_png
from .web_files import IMMUTABLE, STATIC_DIR, TOKEN_HEADER, VERSION_HEADER

__all__ = ["STATIC_DIR", "TOKEN_HEADER", "VERSION_HEADER", "IMMUTABLE", "ViewerError", "StaleVersionError", "Viewer",
           "create_app", "serve", "allowed_hosts"]

_JPEG_CACHE = 256  # encoded source frames kept (a 1080p JPEG is ~200-400 kB)
_RUNS_CACHE = 1024  # id maps kept as runs (a 1080p map of a few dozen entities: ~10-100 kB)


class ViewerError(EntitySAMError):
    """The viewer cannot start (missing web dependencies, a result folder it cannot open)."""


@contextlib.contextmanager
def _source_file(path: Path | None) -> Iterator[BinaryIO | None]:
    """The source file `path` open for reading, once, without waiting (entitysam.regular_file); None
    when there is none or it is no regular file now. Opening it again by name for each read let a
    named pipe put there after its check hold a worker thread of the server for ever."""
    try:
        f = None if path is None else open_regular(path)
    except OSError:  # gone, unreadable: the source reader says what it can
        f = None
    if f is None:
        yield None
        return
    with f:
        yield f


def _json_ready(value):
    """Numpy scalars / arrays / tuples / Paths in edit ops and entities -> plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


class Viewer:
    """The state behind the web app: the result folder, the edit session, the image caches.

    All edits go through one lock (the server runs sync handlers on a thread pool)."""

    def __init__(self, result_dir: str | Path, token: str | None = None, *, drafts: bool = True,
                 say: Callable[[str], None] | None = None):
        from .draft import Draft
        from .edits import EditSession
        from .result import ResultFolder, check_result_path

        check_result_path(Path(result_dir))  # named as given (resolved, a broken link is its target)
        self.root = Path(result_dir).resolve()
        self.result = ResultFolder.open(self.root)
        # drafts: the unsaved edit log kept beside the result after each change, restored here
        # (entitysam.review.draft); say: where the draft's notices also go (the terminal)
        self.draft = Draft(self.result, say) if drafts else None
        self.session = (self.draft and self.draft.restore()) or EditSession(self.result)
        self._saved: tuple[list, Path] | None = None  # the ops of the last Save and its revision
        self.token = token or secrets.token_urlsafe(24)
        self.version = 0  # edits applied, undone or redone: the client re-fetches the state on change
        self.lock = threading.RLock()
        self._jpegs = LRU(_JPEG_CACHE)
        self._runs = LRU(_RUNS_CACHE)
        self._thumbs = LRU(512)
        self._presence_cache: tuple[int, dict] | None = None
        # the original ids (panoptic.json's, 0 first): the lookup of /api/state is indexed by position here
        self._ids = [int(i) for i in self.result.ids]
        self._position = {i: k for k, i in enumerate(self._ids)}

    # --- what the client reads -------------------------------------------------------------
    @property
    def num_frames(self) -> int:
        return self.result.num_frames

    def video_info(self) -> dict:
        height, width = self.result.size
        return {"name": self.result.name, "width": width, "height": height, "fps": self.result.fps,
                "sample_aspect_ratio": self.result.sample_aspect_ratio,
                "num_frames": self.num_frames, "frame_names": [str(f["name"]) for f in self.result.frames],
                "has_source": self.frame_jpeg(0) is not None, "result_version": self.result.version}

    def state(self) -> dict:
        """What the client shows of the current edit (see the module docstring)."""
        with self.lock:
            presence, members = self._presence(), {}  # members: per frame, shared by the entities' keys
            entities = [entity_record(e, presence.get(e.id, {}), self._thumb_key(e.id, presence.get(e.id, {}), members))
                        for e in self.session.entities]
            return _json_ready({"version": self.version, "entities": entities, "ids": self._ids,
                                "lookup": self.session.lookup_segments(), "ops": list(self.session.ops),
                                "can_undo": self.session.can_undo, "can_redo": self.session.can_redo,
                                "changed_on_disk": self._changed_on_disk(),
                                "draft": self.draft.notice if self.draft else None, "unsaved": self.unsaved})

    def _changed_on_disk(self) -> str | None:
        """Why Save and Export will refuse the result (another one in its place, gone), else None: the
        page says so at once, not after the edits it cannot save (a few stat calls)."""
        try:
            self.result.check_current()
        except ResultFolderError as err:
            return str(err)
        return None

    def _presence(self) -> dict[int, dict[int, int]]:
        """current id -> {frame: area} of the current edit (from panoptic.json's areas: no PNG is read)."""
        cached = self._presence_cache
        if cached is not None and cached[0] == self.version:
            return cached[1]
        out: dict[int, dict[int, int]] = {}
        for t, areas in enumerate(self.result.frame_areas):
            lookup = self.session.id_lookup(t)
            for original, area in areas.items():
                k = self._position.get(original)
                current = int(lookup[k]) if k is not None else original
                if current:
                    frames = out.setdefault(current, {})
                    frames[t] = frames.get(t, 0) + area
        self._presence_cache = (self.version, out)
        return out

    def frame_jpeg(self, index: int, width: int | None = None) -> bytes | None:
        """Source frame `index` as JPEG, None when the source cannot be read any more: the source
        file's own bytes when it is a JPEG of the frame (`images.shown_as_is`). width:
        scaled down to this many columns (the player asks for what its screen shows: decoding
        a smaller JPEG is what makes scrubbing fast); None or >= the frame's width: full size."""
        if width is not None and width >= self.result.size[1]:
            width = None
        with _source_file(self.result.source_file(index)) as f:
            as_is = f is not None and shown_as_is(f, self.result.size)
            if as_is and width is None:  # a JPEG source file of the frame itself: its bytes, no decoding, no cache
                try:
                    f.seek(0)
                    return f.read()
                except OSError:
                    pass

            def make():
                if as_is and width is not None:
                    try:  # decoded at 1/2, 1/4 or 1/8 of the size when that is still >= the width asked
                        return jpeg_bytes(scale_to_width(jpeg_at_least(f, width), width))
                    except OSError:
                        pass
                image = self.result.source_frame(index)
                if image is None:
                    return None
                return jpeg_bytes(image if width is None else scale_to_width(image, width))
            return self._jpegs.get_or_make((index, width), make)

    def id_png(self, index: int) -> bytes:
        """The ORIGINAL id map of frame `index` as RGB PNG: the stored file itself (already compressed)."""
        return self.result.id_png_bytes(index)

    def id_runs(self, index: int) -> bytes:
        """The ORIGINAL id map of frame `index` as row-wise runs (`entitysam.review.idruns`)."""
        return self._runs.get_or_make(index, lambda: encode_rgb_id_runs(self.result.id_rgb(index)))

    def _thumb_key(self, entity_id: int, frames: dict[int, int], members: dict | None = None) -> str | None:
        """What an entity's thumbnail shows: its largest frame and the original ids it is made of
        there (a short hash; unchanged by edits of other entities: the caches stay valid). members:
        frame -> {current id: its originals there}, filled as needed and shared by one state's keys
        (made anew per key, /api/state was quadratic: 4000 entities, 6 s per state, edit, undo)."""
        if not frames:
            return None
        frame = max(frames, key=lambda t: (frames[t], -t))
        if (members := {} if members is None else members).get(frame) is None:
            lookup, found = self.session.id_lookup(frame), {}
            for o in sorted(o for o in self.result.frame_areas[frame] if o in self._position):
                found.setdefault(int(lookup[self._position[o]]), []).append(o)
            members[frame] = found
        digest = hashlib.sha1(repr((entity_id, members[frame].get(entity_id, []))).encode()).hexdigest()[:10]
        return f"{frame}-{digest}"

    def thumbnail(self, entity_id: int) -> bytes | None:
        """A PNG crop of entity `entity_id` (current edit) in the frame where it is largest; None
        when there is no such entity now."""
        return self.thumbnail_and_key(entity_id)[0]

    def thumbnail_and_key(self, entity_id: int) -> tuple[bytes | None, str | None]:
        """(:meth:`thumbnail`, the key of /api/state it shows), both of one edit version: the
        route may cache the picture only under the URL of that key."""
        with self.lock:
            frames = self._presence().get(entity_id)
            if not frames or not any(e.id == entity_id for e in self.session.entities):
                return None, None
            key = self._thumb_key(entity_id, frames)
            frame = int(key.split("-")[0])
            id_map = self.session.id_map(frame)  # under the lock: the session may change after it
        return self._thumbs.get_or_make(key, lambda: thumbnail_png(
            id_map, entity_id, self.result.source_frame(frame, still=True), self.result.sample_aspect_ratio)), key

    # --- what the client changes -----------------------------------------------------------
    # expected: the edit version the caller last saw (the page's state.version), None: any. Checked
    # under the lock that the change takes, so two pages never act on each other's unseen edits.
    def _check_version(self, expected: int | None) -> None:
        if expected is not None and expected != self.version:
            raise StaleVersionError(expected, self.version)

    @property
    def unsaved(self) -> bool:
        """Whether the edit differs from what the last Save wrote (from the original before any)."""
        return self.session.ops != (self._saved[0] if self._saved else [])

    def _changed(self) -> None:
        """One change accepted (under the lock): counted, and its log kept in the draft."""
        self.version += 1
        if self.draft is not None:  # an empty log is the original, what opening gives without a draft: none
            # kept (everything undone after a Save left a draft of 0 edits, "restored" at each start)
            self.draft.update(self.session, self.unsaved and bool(self.session.ops))

    def apply(self, op: dict, expected: int | None = None) -> dict:
        with self.lock:
            self._check_version(expected)
            self.session.apply(op)
            self._changed()
        return self.state()

    def undo(self, expected: int | None = None) -> dict:
        with self.lock:
            self._check_version(expected)
            if self.session.undo() is not None:
                self._changed()
        return self.state()

    def redo(self, expected: int | None = None) -> dict:
        with self.lock:
            self._check_version(expected)
            if self.session.redo() is not None:
                self._changed()
        return self.state()

    def save(self, expected: int | None = None) -> tuple[Path, bool]:
        """(the revision, whether it is new): a Save with no change since the last one (a double
        click) writes no second revision of the same edit and names the one it wrote."""
        from .revision import save_revision

        with self.lock:
            self._check_version(expected)
            if self._saved is not None and not self.unsaved and self._saved[1].is_dir():
                return self._saved[1], False
            path = Path(save_revision(self.session))
            self._saved = ([dict(op) for op in self.session.ops], path)
            if self.draft is not None:
                self.draft.saved()
            return path, True

    def export_formats(self) -> list[str]:
        """The formats the review engineer's exporters offer (entitysam.review.export)."""
        from .export import FORMATS

        return list(FORMATS)

    def export(self, fmt: str, expected: int | None = None) -> tuple[bytes, str]:
        """The current edit exported as `fmt` (the review exporters' one-download form): (bytes,
        file name); MOTS comes as a zip. An unknown format raises before anything is written."""
        from .export import export_bytes

        with self.lock:  # the session must not change while the exporter reads it
            self._check_version(expected)
            return export_bytes(self.session, fmt)

    def check_token(self, supplied: str | None) -> bool:
        return supplied is not None and hmac.compare_digest(supplied.encode(), self.token.encode())


def entity_record(entity, frames: dict[int, int], thumb_key: str | None) -> dict:
    """One row of the entity list: the EntityInfo fields, its colour (as in overlay.mp4), the
    frames where it is present (the timeline) and its thumbnail's key. frames: {frame: area}."""
    record = entity.to_dict()
    record["color"] = list(entity_color(entity.id))
    record["presence"] = sorted(frames)
    record["thumb"] = thumb_key
    return record


def create_app(viewer: Viewer, hosts: list[str] | None = None, *, loopback_only: bool = False):
    """The Starlette app serving `viewer`; hosts: the Host headers it answers (None: any);
    loopback_only: the caller serves it on loopback only, where reads need no token. Otherwise (the
    default: an app embedded elsewhere may be reachable from anywhere) reads too need the token, as
    changes always do (entitysam.review.access)."""
    try:
        from starlette.applications import Starlette

        from .access import access_middleware
        from .routes import build_routes
    except ImportError as err:  # pragma: no cover - the [viewer] extra is missing
        raise ViewerError("the viewer needs starlette and uvicorn: pip install 'entitysam[viewer]'") from err
    middleware = access_middleware(viewer, hosts, loopback_only=loopback_only)
    app = Starlette(routes=build_routes(viewer), middleware=middleware)
    app.state.viewer = viewer
    return app


def serve(result_dir: str | Path, *, host: str = "127.0.0.1", port: int = 0, open_browser: bool = False,
          say: Callable[[str], None] = print, token: str | None = None) -> None:
    """Open `result_dir`, bind host:port (0: a free port) and serve until interrupted.

    The URL printed (and opened with `open_browser`) carries the run's token."""
    import socket

    try:
        from .connections import run_server, server_config  # needs uvicorn (and h11)
    except ImportError as err:
        raise ViewerError("the viewer needs starlette and uvicorn: pip install 'entitysam[viewer]'") from err
    viewer = Viewer(result_dir, token=token, say=say)
    hosts = allowed_hosts(host)
    app = create_app(viewer, hosts=hosts, loopback_only=hosts is not None)  # beyond loopback: viewing too
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ViewerError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    bound_port = sock.getsockname()[1]
    shown_host = f"[{host}]" if ":" in host else host
    url = f"http://{shown_host}:{bound_port}/?token={viewer.token}"
    say(f"entitysam view: {viewer.root} at {url}")
    if hosts is None:  # reads need the token here too, but it crosses the network in the clear
        say(f"warning: listening on {host}, not only on this machine: viewing needs the token of this URL too, "
            "but plain HTTP carries it unencrypted: anyone who sees the traffic can view and edit the result; "
            "keep the default 127.0.0.1 unless the network is trusted")
    say("(Ctrl-C stops the server)")
    if open_browser:
        import webbrowser

        threading.Timer(0.5, webbrowser.open, args=(url,)).start()
    from .draft import unsaved_line

    try:
        run_server(server_config(app), [sock])
    finally:  # stopped (Ctrl-C, SIGTERM): where the edits not saved are, in one line
        with viewer.lock:
            if viewer.unsaved and viewer.session.ops:
                say(unsaved_line(viewer.draft, viewer.root, len(viewer.session.ops)))
