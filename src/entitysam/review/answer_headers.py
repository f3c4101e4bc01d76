"""The headers every answer of `entitysam view` carries, whatever route made it.

* ``Referrer-Policy: no-referrer``: URLs may carry the run's token (``?token=``: the printed URL,
  a /files/ link); a page or file opened from them would send it on in ``Referer``.
* ``X-Content-Type-Options: nosniff``: a file is what its Content-Type says, never guessed active.
* on /files/ (any file of the result, which may be hostile: an .html, an .svg)
  ``Content-Security-Policy: sandbox allow-same-origin``: no script of such a file runs, so none can
  read the viewer's answers or its token (this tab's storage). ``allow-same-origin`` without
  ``allow-scripts`` grants nothing a script-less document can use, and is needed by the result's own
  ``overlay.mp4``: under a bare ``sandbox`` the browser's video page has no origin and its request
  for the video is refused as cross-origin (a dead player).
"""

from __future__ import annotations

__all__ = ["AnswerHeadersMiddleware", "EVERY_ANSWER", "RESULT_FILE"]

EVERY_ANSWER = ((b"referrer-policy", b"no-referrer"), (b"x-content-type-options", b"nosniff"))
RESULT_FILE = ((b"content-security-policy", b"sandbox allow-same-origin"),)
_RESULT_FILES = "/files/"


class AnswerHeadersMiddleware:
    """ASGI middleware adding EVERY_ANSWER to each HTTP answer, RESULT_FILE to those under /files/."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = EVERY_ANSWER + (RESULT_FILE if scope["path"].startswith(_RESULT_FILES) else ())

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                named = {name.lower() for name, _ in message.get("headers", [])}
                message = {**message, "headers": [*message.get("headers", []),
                                                  *(pair for pair in extra if pair[0] not in named)]}
            await send(message)
        await self.app(scope, receive, send_with_headers)
