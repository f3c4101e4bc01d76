"""Who may use `entitysam view`: the Host names it answers, and the token that reads need unless
it listens on loopback only.

On a loopback address the server answers only loopback Host names (a page rebound to 127.0.0.1
gets nothing) and reads need no token. Anywhere else (``--host 0.0.0.0``, or an app made by
`create_app` without ``loopback_only``) anyone who could reach it read the result without the
token (/api/state, id maps, frames, /files/): there every request but the page itself and the
static files (the package's own, no data of the result) needs the run's token too, as changes do:
the ``X-EntitySAM-Token`` header (what the page sends with each request: static/player.js) or
``?token=``. No cookie stands for it: a cookie goes to every port of the host name (SameSite
counts another port as the same site), so any other server there received it and could replay it.
"""

from __future__ import annotations

from .web_files import TOKEN_HEADER

__all__ = ["LOOPBACK_HOSTS", "allowed_hosts", "access_middleware", "ReadTokenMiddleware", "READ_METHODS"]

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
READ_METHODS = ("GET", "HEAD")  # the others are changes: the routes check their token themselves
_OPEN_PREFIX = "/static/"
_OPEN_PATHS = ("/",)  # the page (static/index.html): it finds the token (URL, this tab's storage) itself


def allowed_hosts(host: str) -> list[str] | None:
    """The Host headers to answer when listening on `host`: the loopback names for a loopback
    address (a web page that points its own domain at 127.0.0.1, DNS rebinding, then gets no
    answer), None (any) for other addresses, where the user chose to be reachable."""
    if host in LOOPBACK_HOSTS:
        return list(LOOPBACK_HOSTS)
    # another loopback address (--host 127.0.0.2): its own name too, the Host of the URL printed,
    # which was refused ("Invalid host header") for the page and every request
    return [*LOOPBACK_HOSTS, host] if host.startswith("127.") else None


def access_middleware(viewer, hosts: list[str] | None, *, loopback_only: bool) -> list:
    """The Starlette middleware of the app over `viewer`: the answers' headers (entitysam.review.
    answer_headers), the Host check (`hosts`; None: any), and unless `loopback_only` the token for
    reads. Needs starlette (the viewer extra)."""
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    from .answer_headers import AnswerHeadersMiddleware

    middleware = [Middleware(AnswerHeadersMiddleware)]  # outermost: also on the refusals below
    middleware += [] if hosts is None else [Middleware(TrustedHostMiddleware, allowed_hosts=hosts)]
    return middleware + ([] if loopback_only else [Middleware(ReadTokenMiddleware, viewer=viewer)])


class ReadTokenMiddleware:
    """ASGI middleware: a read (GET, HEAD) outside /static/ and the page without the token of
    `viewer` (its check_token: header or ``?token=``) is answered 403."""

    def __init__(self, app, viewer):
        self.app, self.viewer = app, viewer

    async def __call__(self, scope, receive, send):
        from starlette.requests import Request  # (the viewer extra: this module is imported without it)
        from starlette.responses import JSONResponse

        if (scope["type"] != "http" or scope["method"] not in READ_METHODS or scope["path"] in _OPEN_PATHS
                or scope["path"].startswith(_OPEN_PREFIX)):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if not (self.viewer.check_token(request.headers.get(TOKEN_HEADER))
                or self.viewer.check_token(request.query_params.get("token"))):
            reply = JSONResponse({"error": "missing or wrong token: this viewer listens beyond this machine, so "
                                           "viewing needs it too (use the URL printed by `entitysam view`)"},
                                 status_code=403, headers={"Cache-Control": "no-store"})
            await reply(scope, receive, send)
            return
        await self.app(scope, receive, send)
