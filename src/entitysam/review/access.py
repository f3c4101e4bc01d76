"""Who may use `entitysam view`: the Host names it answers, and the token that reads need when it
listens beyond this machine.

On a loopback address the server answers only loopback Host names (a page rebound to 127.0.0.1
gets nothing) and reads need no token. On any other address (``--host 0.0.0.0``) anyone who
could reach it read the result without the token (/api/state, id maps, frames, /files/): there
every request but the static files (the package's own, no data of the result) needs the run's
token too, as changes do: the ``X-EntitySAM-Token`` header, ``?token=``, or the cookie set by
the answer to a URL carrying a valid ``?token=`` (the URL `view` prints). The page reads with
``fetch`` and ``<img>``, which send that cookie (same origin): it works as it did, unchanged. The
cookie is HttpOnly and SameSite=Strict, named after the token (two viewers on one host, on two
ports, share cookies: each keeps its own) and holds a digest of it, not the token: it authorises
reads only, a change still needs the header or ``?token=``, which another site's page cannot send.
"""

from __future__ import annotations

import hashlib
import hmac

from .web_files import TOKEN_HEADER

__all__ = ["LOOPBACK_HOSTS", "allowed_hosts", "token_cookie", "ReadTokenMiddleware", "READ_METHODS"]

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
READ_METHODS = ("GET", "HEAD")  # the others are changes: the routes check their token themselves
_OPEN_PREFIX = "/static/"


def allowed_hosts(host: str) -> list[str] | None:
    """The Host headers to answer when listening on `host`: the loopback names for a loopback
    address (a web page that points its own domain at 127.0.0.1, DNS rebinding, then gets no
    answer), None (any) for other addresses, where the user chose to be reachable."""
    return list(LOOPBACK_HOSTS) if host in LOOPBACK_HOSTS or host.startswith("127.") else None


def token_cookie(token: str) -> tuple[str, str]:
    """The name and the value of the cookie that stands for `token` in reads (one per run; any
    token: its digests are what a cookie may hold)."""
    def digest(use: str) -> str:
        return hashlib.sha256(f"{use}:{token}".encode("utf-8", "surrogatepass")).hexdigest()
    return "entitysam-" + digest("name")[:12], digest("read")


class ReadTokenMiddleware:
    """ASGI middleware: a read (GET, HEAD) outside /static/ without the token of `viewer` (its
    check_token) is answered 403; one with a valid ``?token=`` gets the cookie that carries it."""

    def __init__(self, app, viewer):
        self.app, self.viewer = app, viewer
        self.cookie, self.value = token_cookie(viewer.token)

    async def __call__(self, scope, receive, send):
        from starlette.requests import Request  # (the viewer extra: this module is imported without it)
        from starlette.responses import JSONResponse

        if scope["type"] != "http" or scope["method"] not in READ_METHODS or scope["path"].startswith(_OPEN_PREFIX):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        from_query = self.viewer.check_token(request.query_params.get("token"))
        if not (from_query or self.viewer.check_token(request.headers.get(TOKEN_HEADER))
                or hmac.compare_digest(request.cookies.get(self.cookie, "").encode(), self.value.encode())):
            reply = JSONResponse({"error": "missing or wrong token: this viewer listens beyond this machine, so "
                                           "viewing needs it too (use the URL printed by `entitysam view`)"},
                                 status_code=403, headers={"Cache-Control": "no-store"})
            await reply(scope, receive, send)
            return
        if not from_query:
            await self.app(scope, receive, send)
            return
        cookie = f"{self.cookie}={self.value}; Path=/; HttpOnly; SameSite=Strict".encode()

        async def send_with_cookie(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie)]}
            await send(message)
        await self.app(scope, receive, send_with_cookie)
