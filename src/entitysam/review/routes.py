"""The HTTP routes of `entitysam view` (see `entitysam.review.server` for the list)."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.responses import JSONResponse as _StarletteJSON
from starlette.routing import Route

from .. import jsonio
from ..errors import EntitySAMError, ResultChangedError, ResultFileGoneError, ResultFolderError, StaleVersionError
from .file_response import OpenFileResponse, open_regular_file
from .web_files import IMMUTABLE, STATIC_DIR, TOKEN_HEADER, VERSION_HEADER, media_type, safe_file

__all__ = ["build_routes", "MAX_EDIT_BYTES", "attachment"]

_NO_STORE = {"Cache-Control": "no-store"}
# An edit names a few entity ids and a label of at most 1000 characters: kilobytes. The cap keeps
# a runaway body out of memory (a 300 MB body was read whole) and its parse, which runs on the
# event loop, short (a 46 MB list of ids froze every other request for ~1 s).
MAX_EDIT_BYTES = 1 << 20


class JSONResponse(_StarletteJSON):
    """Starlette's JSON response written by :func:`entitysam.jsonio.dumps`: a frame or input name
    that is not UTF-8 (a lone surrogate) goes out as a ``\\udcXX`` escape instead of failing."""

    def render(self, content) -> bytes:
        return jsonio.dumps(content, compact=True).encode("utf-8")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=_NO_STORE)


_CHANGED = ("the result changed on disk since it was opened (a file of it is gone or unreadable); "
            "nothing was written: reopen it")


async def _read(read, *args):
    """`read(*args)` on the thread pool; a file of the result gone since it was opened: 404, one
    that can no longer be read (tampered, truncated): 422, each with a one-line JSON error (never
    a 500 with a traceback in the log). Returns (data, None) or (None, the error response)."""
    try:
        return await run_in_threadpool(read, *args), None
    except (ResultFileGoneError, FileNotFoundError, NotADirectoryError) as err:
        return None, _error(404, f"gone: {err}" if isinstance(err, OSError) else str(err))
    except ResultChangedError as err:  # another result in its place (entitysam.review.on_disk)
        return None, _error(409, str(err))
    except (ResultFolderError, OSError) as err:
        return None, _error(422, str(err))


async def _read_edit(request: Request):
    """The JSON of an edit request's body: (value, None), or (None, the error response): 413 for a
    body declared or sent over MAX_EDIT_BYTES (read no further), 400 for one that is not JSON."""
    too_big = JSONResponse({"error": f"the edit is over {MAX_EDIT_BYTES} bytes (an edit takes a few kB)"},
                           status_code=413, headers={**_NO_STORE, "Connection": "close"})  # the rest unread
    declared = _count(request.headers.get("content-length", "0"))  # absent when chunked: counted as read
    if declared is None or declared > MAX_EDIT_BYTES:
        return None, too_big
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_EDIT_BYTES:
                return None, too_big
    except ClientDisconnect:  # gone mid-body (a tab closed): nobody reads the answer, but no traceback
        return None, _error(400, "the edit's body was cut off")
    try:
        return json.loads(body), None
    except (ValueError, RecursionError) as err:  # RecursionError: nested too deeply; ValueError: also an
        # integer over Python's digit limit (JSONDecodeError and UnicodeDecodeError are ValueErrors)
        reason = "nested too deeply" if isinstance(err, RecursionError) else str(err).splitlines()[0][:120]
        return None, _error(400, f"the edit must be a JSON object ({reason})")


def _file(root: Path, relative: str, cache: str, still_current=None) -> Response:
    """A file of `root`, sent from the descriptor opened here (see entitysam.review.file_response):
    404 when it is not one, also when it is gone or no longer a regular file by the time it is opened.
    still_current: called once the file is open, an error response or None (the result's files:
    the folder may have been replaced between the viewer's check and the open)."""
    path = safe_file(root, relative)
    opened = None if path is None else open_regular_file(path, (root.resolve(),))
    if opened is None:
        return _error(404, "not found")
    error = None if still_current is None else still_current()
    if error is not None:
        opened.close()
        return error
    return OpenFileResponse(opened, media_type(path), {"Cache-Control": cache})


def _on_disk_error(viewer) -> Response | None:
    """None when the result folder on disk is still the one `viewer` opened (a few stat calls, see
    entitysam.review.on_disk); else 404 when it is gone, 409 when another result is there: its
    files would be sent under the entities, ids and edits read from the old one."""
    try:
        viewer.result.check_current()
    except ResultFileGoneError as err:
        return _error(404, str(err))
    except ResultChangedError as err:
        return _error(409, str(err))
    except ResultFolderError as err:
        return _error(422, str(err))
    return None


def _version_cache(viewer, request: Request, cache: str) -> tuple[str, Response | None]:
    """The Cache-Control for a response of the opened result's files and a 409 when the URL names
    another result: the page puts ?rv=<the result's version> (of /api/video) in the URLs it builds,
    so a cached answer is never another result's file. Only such a URL is cached long (`cache`);
    one without a version is revalidated each time ("no-cache")."""
    version = request.query_params.get("rv")
    if version is None:
        return "no-cache", None
    if version != viewer.result.version:
        return cache, _error(409, "this page was made for another result than the one the viewer has open "
                                  "(the result changed on disk and the viewer was restarted): reload the page")
    return cache, None


def attachment(filename: str) -> str:
    """The Content-Disposition of a download named `filename`. Header values are latin-1: an export
    of a video named with other characters (日本.mp4) was a 500 (UnicodeEncodeError), and a `"`
    in the name ended the quoted name early; such a name goes as RFC 5987's ``filename*`` (UTF-8)
    after an ASCII ``filename`` for clients that do not read it."""
    plain = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in filename)
    if plain == filename:
        return f'attachment; filename="{filename}"'
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(filename, safe='', errors='replace')}"


def _count(text: str) -> int | None:
    """A URL's decimal number (ASCII digits only: str.isdigit() also takes "²", which int() refuses,
    and int() takes other scripts' digits), None when it is not one."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 12 else None


def _frame_index(viewer, text: str) -> int | None:
    """`<i>` of /api/frames/<i>.jpg as a frame index, None when it is not one."""
    index = _count(text)
    return index if index is not None and index < viewer.num_frames else None


def build_routes(viewer) -> list[Route]:
    """The routes over `viewer` (an `entitysam.review.server.Viewer`)."""
    def authorised(request: Request) -> bool:
        return viewer.check_token(request.headers.get(TOKEN_HEADER) or request.query_params.get("token"))

    def mutating(handler):
        """A POST handler, called as handler(request, expected) with the edit version the request
        names (VERSION_HEADER; None: any): 403 without the run's token, 409 with the current state
        when the edit is at another version (another page changed it), 409 when the result folder
        changed on disk since it was opened (nothing written), a 400 for other EntitySAMErrors."""
        async def endpoint(request: Request) -> Response:
            if not authorised(request):
                return _error(403, "missing or wrong token (use the URL printed by `entitysam view`)")
            expected = request.headers.get(VERSION_HEADER)
            if expected is not None and _count(expected) is None:
                return _error(400, f"{VERSION_HEADER} must be the edit version the page shows (a number)")
            try:
                return await handler(request, None if expected is None else _count(expected))
            except StaleVersionError as err:  # another tab edited since: the page gets what is there now
                state = await run_in_threadpool(viewer.state)
                return JSONResponse({"error": str(err), "state": state}, status_code=409, headers=_NO_STORE)
            except ResultChangedError as err:  # save/export over a folder rewritten or deleted since it was opened
                return _error(409, str(err))
            except (FileNotFoundError, NotADirectoryError):
                return _error(409, _CHANGED)
            except EntitySAMError as err:
                return _error(400, str(err))
        return endpoint

    async def index(request: Request) -> Response:
        return _file(STATIC_DIR, "index.html", "no-cache")

    async def static(request: Request) -> Response:
        return _file(STATIC_DIR, request.path_params["path"], "no-cache")

    def reads_result(handler):
        """A GET handler that reads the result's files: refused (404/409, _on_disk_error) when the
        folder on disk is no longer the one opened, checked before the read and again after it (a
        replacement during the read); handler(request, cache) gets the Cache-Control to send."""
        async def endpoint(request: Request) -> Response:
            cache, error = _version_cache(viewer, request, IMMUTABLE)
            error = error or _on_disk_error(viewer)
            if error is not None:
                return error
            response = await handler(request, cache)
            return (_on_disk_error(viewer) if response.status_code < 400 else None) or response
        return endpoint

    async def result_file(request: Request) -> Response:
        if error := _on_disk_error(viewer):
            return error
        return _file(viewer.root, request.path_params["path"], "no-cache", lambda: _on_disk_error(viewer))

    async def video(request: Request) -> Response:
        # on the thread pool: has_source decodes frame 0, waiting for a video's cursor while another
        # request decodes far ahead (on the event loop that froze every request for seconds)
        return JSONResponse(await run_in_threadpool(viewer.video_info), headers=_NO_STORE)

    async def state(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(viewer.state), headers=_NO_STORE)

    async def frame(request: Request, cache: str) -> Response:
        index = _frame_index(viewer, request.path_params["index"])
        if index is None:
            return _error(404, "no such frame")
        width = request.query_params.get("w")
        if width is not None and not (_count(width) or 0) > 0:
            return _error(400, "w must be a positive number of columns")
        data = await run_in_threadpool(viewer.frame_jpeg, index, None if width is None else _count(width))
        if data is None:
            return _error(404, "the source frame cannot be read (moved or deleted?)")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": cache})

    async def original_ids(request: Request, cache: str, encode, media_type: str) -> Response:
        """A frame's original id map, encoded by `encode` (never changes for one result: a versioned
        URL is cached for good)."""
        index = _frame_index(viewer, request.path_params["index"])
        if index is None:
            return _error(404, "no such frame")
        data, error = await _read(encode, index)
        if error is not None:
            return error
        return Response(data, media_type=media_type, headers={"Cache-Control": cache})

    async def id_map(request: Request, cache: str) -> Response:
        return await original_ids(request, cache, viewer.id_png, "image/png")

    async def id_runs(request: Request, cache: str) -> Response:
        return await original_ids(request, cache, viewer.id_runs, "application/octet-stream")

    async def thumb(request: Request, cache: str) -> Response:
        entity = _count(request.path_params["entity"])
        found, error = ((None, None), None) if entity is None else await _read(viewer.thumbnail_and_key, entity)
        if error is not None:
            return error
        data, key = found
        if data is None:
            return _error(404, "no such entity")
        # the URL carries ?k=<thumb key of /api/state>: what the picture shows, so it may be cached
        # (with ?rv=, the result's version: the key alone is the same in another result). A key the
        # entity no longer has (an edit made while the page's request was on its way, by it or
        # another tab) is answered with today's picture, kept nowhere: cached, it was shown for an
        # hour under the old key once an undo brought that key back.
        asked = request.query_params.get("k")
        if asked is None:
            cache = "no-cache"
        elif asked != key:
            cache = "no-store"
        elif cache != "no-cache":
            cache = "private, max-age=3600"
        return Response(data, media_type="image/png", headers={"Cache-Control": cache})

    async def edit(request: Request, expected: int | None) -> Response:
        op, error = await _read_edit(request)
        if error is not None:
            return error
        if not isinstance(op, dict):
            return _error(400, "the edit must be a JSON object")
        return JSONResponse(await run_in_threadpool(viewer.apply, op, expected), headers=_NO_STORE)

    async def undo(request: Request, expected: int | None) -> Response:
        return JSONResponse(await run_in_threadpool(viewer.undo, expected), headers=_NO_STORE)

    async def redo(request: Request, expected: int | None) -> Response:
        return JSONResponse(await run_in_threadpool(viewer.redo, expected), headers=_NO_STORE)

    async def save(request: Request, expected: int | None) -> Response:
        path, new = await run_in_threadpool(viewer.save, expected)
        return JSONResponse({"path": str(path), "name": path.name, "new": new}, headers=_NO_STORE)

    async def export(request: Request, expected: int | None) -> Response:
        fmt = request.query_params.get("format", "")
        data, filename = await run_in_threadpool(viewer.export, fmt, expected)
        return Response(data, media_type="application/octet-stream",
                        headers={"Content-Disposition": attachment(filename), **_NO_STORE})

    async def export_formats(request: Request) -> Response:
        return JSONResponse({"formats": viewer.export_formats()}, headers=_NO_STORE)

    return [
        Route("/", index),
        Route("/static/{path:path}", static),
        Route("/files/{path:path}", result_file),
        Route("/api/video", video),
        Route("/api/state", state),
        Route("/api/frames/{index}.jpg", reads_result(frame)),
        Route("/api/idmaps/{index}.png", reads_result(id_map)),
        Route("/api/idmaps/{index}.runs", reads_result(id_runs)),
        Route("/api/thumbs/{entity}.png", reads_result(thumb)),
        Route("/api/exports", export_formats),
        Route("/api/edits", mutating(edit), methods=["POST"]),
        Route("/api/undo", mutating(undo), methods=["POST"]),
        Route("/api/redo", mutating(redo), methods=["POST"]),
        Route("/api/save", mutating(save), methods=["POST"]),
        Route("/api/export", mutating(export), methods=["POST"]),
    ]
