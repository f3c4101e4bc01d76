"""Files of the result folder (and the static folder) sent from one open file descriptor.

Starlette's FileResponse stats the path, then opens it again and reads until a short read: a
file rewritten while it was downloaded (``cp`` over ``overlay.mp4``, a longer or a shorter one)
made it send more or fewer bytes than its Content-Length, and uvicorn printed a traceback
("Too much data for declared Content-Length"); a file deleted, or replaced by a named pipe, between
the check and the open was a 500 with a traceback (or an open() waiting for a writer for good).

Here the path is opened once, without waiting, and what was opened is checked (a regular file;
entitysam.regular_file);
its size and modification time are taken from that descriptor, and every byte sent is read from
it, at most that size. A file replaced by a rename (as entitysam writes its files) keeps its old
contents for a download in progress. When the file changes under the download (its size or
modification time differ after a read), the response ends there, short of its Content-Length:
the client sees an incomplete download, never a mix of two files nor a protocol error.

Range requests are answered as Starlette does (overlapping ranges merged, over 100 ranges the
whole file, a malformed one 400, one past the end 416), HEAD with the headers only.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from email.utils import formatdate
from pathlib import Path
from typing import BinaryIO, Sequence

import anyio
from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse, Response

from .confined import OutsideRootsError, open_confined

__all__ = ["OpenedFile", "open_regular_file", "OpenFileResponse", "parse_ranges", "MAX_RANGES", "CHUNK"]

CHUNK = 64 * 1024  # bytes read (and sent) at a time
MAX_RANGES = 100  # more ranges than this in one request: the whole file (as Starlette)


class OpenedFile:
    """A regular file open for reading (`file`: see entitysam.regular_file) and what it was when
    opened (its fstat)."""

    def __init__(self, file: BinaryIO):
        self.file = file
        self.fd = file.fileno()
        self.info = os.fstat(self.fd)
        self.size = self.info.st_size

    def read(self, offset: int, count: int) -> bytes | None:
        """`count` bytes at `offset`; None when the file is no longer what it was when opened (shorter
        now, or rewritten: another size or modification time after the read) or cannot be read."""
        try:
            data = os.pread(self.fd, count, offset)
            now = os.fstat(self.fd)
        except OSError:  # an I/O error: what is left cannot be sent either
            return None
        if len(data) != count or (now.st_size, now.st_mtime_ns) != (self.size, self.info.st_mtime_ns):
            return None
        return data

    def close(self) -> None:
        self.file.close()


def open_regular_file(path: str | os.PathLike, roots: Sequence[Path]) -> OpenedFile | None:
    """`path` open for reading if it is a regular file inside one of `roots` (resolved folders) now;
    None when it is gone, not a regular file (a named pipe is opened without waiting for a writer),
    outside them, also through a symbolic link put on its way after the path was checked
    (entitysam.review.confined), or cannot be opened."""
    try:
        f = open_confined(path, roots)
    except (OSError, OutsideRootsError):
        return None
    if f is None:
        return None
    try:
        return OpenedFile(f)
    except OSError:  # (its fstat)
        f.close()
        return None


def parse_ranges(header: str, size: int) -> list[tuple[int, int]] | int | None:
    """The byte ranges [start, end) a Range header asks of a file of `size` bytes, as Starlette
    reads them: [] for the whole file (over MAX_RANGES ranges), 400 for a malformed header, 416 for
    a range starting past the end; overlapping ranges merged."""
    units, sep, spec = header.partition("=")
    if not sep or units.strip().lower() != "bytes":
        return 400
    if spec.count(",") + 1 > MAX_RANGES:
        return []
    ranges = []
    for part in (p.strip() for p in spec.split(",")):
        first, dash, last = part.partition("-")
        first, last = first.strip(), last.strip()
        if not dash or not (first or last):
            continue  # empty, "-" or no dash: ignored
        try:
            start = int(first) if first else max(size - int(last), 0)
            end = int(last) + 1 if first and last and int(last) < size else size
        except ValueError:  # not a number (also one over Python's digit limit): ignored
            continue
        ranges.append((start, end))
    if not ranges:
        return 400
    if any(not 0 <= start < size for start, _ in ranges):
        return 416
    if any(start >= end for start, end in ranges):
        return 400
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged if len(ranges) > 1 else ranges


class OpenFileResponse(Response):
    """A response sending an :class:`OpenedFile` (see the module docstring); it closes the file."""

    def __init__(self, opened: OpenedFile, media_type: str, headers: dict[str, str] | None = None):
        self.opened = opened
        self.status_code = 200
        self.media_type = media_type
        self.background = None
        self.init_headers(headers)
        info = opened.info
        self.headers.setdefault("accept-ranges", "bytes")
        self.headers["content-length"] = str(opened.size)
        self.headers.setdefault("last-modified", formatdate(info.st_mtime, usegmt=True))
        tag = hashlib.md5(f"{info.st_mtime}-{opened.size}".encode(), usedforsecurity=False).hexdigest()
        self.headers.setdefault("etag", f'"{tag}"')

    async def __call__(self, scope, receive, send) -> None:
        try:
            await self._answer(scope, receive, send)
        finally:
            self.opened.close()

    async def _answer(self, scope, receive, send) -> None:
        method = scope.get("method", "GET").upper()
        head = method == "HEAD"
        ranges: list[tuple[int, int]] | int | None = None
        request = Headers(scope=scope)
        wanted, if_range = request.get("range"), request.get("if-range")
        if wanted is not None and method in ("GET", "HEAD") and (if_range is None or self._current(if_range)):
            ranges = parse_ranges(wanted, self.opened.size)
        if ranges == 400:
            return await PlainTextResponse("Malformed range header.", status_code=400)(scope, receive, send)
        if ranges == 416:
            return await PlainTextResponse("", status_code=416, headers={
                "Content-Range": f"bytes */{self.opened.size}"})(scope, receive, send)
        if not ranges:
            ranges = None
        if head:
            await send({"type": "http.response.start", "status": self.status_code if ranges is None else 206,
                        "headers": self._headers_for(ranges)[0].raw})
            return await send({"type": "http.response.body", "body": b"", "more_body": False})
        async with anyio.create_task_group() as group:
            async def transfer() -> None:
                await self._send(send, ranges)
                group.cancel_scope.cancel()

            group.start_soon(transfer)
            while (await receive())["type"] != "http.disconnect":
                pass  # (a request body nobody reads)
            group.cancel_scope.cancel()  # the client is gone: read no further

    def _current(self, if_range: str) -> bool:
        """If-Range names this version of the file (its Last-Modified or strong ETag)."""
        return not if_range.startswith("W/") and if_range in (self.headers["last-modified"], self.headers["etag"])

    def _headers_for(self, ranges):
        """(headers, the multipart boundary or None) of the response for `ranges` (None: the whole file)."""
        if ranges is None:
            return self.headers, None
        headers = self.headers.mutablecopy()
        size = self.opened.size
        if len(ranges) == 1:
            start, end = ranges[0]
            headers["content-range"] = f"bytes {start}-{end - 1}/{size}"
            headers["content-length"] = str(end - start)
            return headers, None
        boundary = secrets.token_hex(13)
        parts = sum(len(self._part_head(boundary, s, e)) + (e - s) + 2 for s, e in ranges)
        headers["content-type"] = f"multipart/byteranges; boundary={boundary}"
        headers["content-length"] = str(parts + len(boundary) + 4)
        return headers, boundary

    def _part_head(self, boundary: str, start: int, end: int) -> bytes:
        return (f"--{boundary}\r\nContent-Type: {self.headers['content-type']}\r\n"
                f"Content-Range: bytes {start}-{end - 1}/{self.opened.size}\r\n\r\n").encode("latin-1")

    async def _send(self, send, ranges) -> None:
        """The status line, headers and body; a file that changed under the transfer ends it
        short (returning without the last message: uvicorn closes the connection)."""
        headers, boundary = self._headers_for(ranges)
        await send({"type": "http.response.start", "status": 200 if ranges is None else 206, "headers": headers.raw})
        if boundary is None:
            start, end = (0, self.opened.size) if ranges is None else ranges[0]
            if await self._send_bytes(send, start, end):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        for start, end in ranges:
            await send({"type": "http.response.body", "body": self._part_head(boundary, start, end), "more_body": True})
            if not await self._send_bytes(send, start, end):
                return
            await send({"type": "http.response.body", "body": b"\r\n", "more_body": True})
        await send({"type": "http.response.body", "body": f"--{boundary}--".encode("latin-1"), "more_body": False})

    async def _send_bytes(self, send, start: int, end: int) -> bool:
        """Bytes [start, end) of the file; False when the file changed (nothing more may be sent)."""
        while start < end:
            chunk = await anyio.to_thread.run_sync(self.opened.read, start, min(CHUNK, end - start))
            if chunk is None:
                return False
            start += len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        return True
