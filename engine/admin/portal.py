"""``GET /portal``: the customer's webhook page, a static client of the ``/v1`` API.

MisarMail's backend mints a link ``<engine>/portal#token=...`` and puts it in an iframe on its
settings page. The token rides in the URL fragment, which browsers never send, so it reaches no
server log; the page (``portal_static/portal.js``) reads it, removes it from the address bar and
keeps it in memory only: no cookie and no storage, which a third-party iframe may not have anyway.

The files ship inside the package and are served as they are checked in: no build step, no CDN.
Every answer carries a strict Content-Security-Policy (only this origin's script, style and API;
nothing inline) whose ``frame-ancestors`` is the operator's ``WEBHOOKS_PORTAL_FRAME_ANCESTORS``,
plus ``nosniff`` and ``no-referrer``. These routes need no bearer token (the server lists
:data:`PATHS` as public): the page is the same for everyone, and its API calls carry the token.
"""

from __future__ import annotations

import functools
from importlib import resources

from aiohttp import web

# Each path and the file it serves, with its content type.
ASSETS = {
    "/portal": ("index.html", "text/html"),
    "/portal/portal.js": ("portal.js", "text/javascript"),
    "/portal/portal.css": ("portal.css", "text/css"),
}
PATHS = frozenset(ASSETS)


def content_security_policy(frame_ancestors: str) -> str:
    """The page's CSP: its own script, style and API only; framed only by ``frame_ancestors``
    (already checked by engine.config.frame_ancestors)."""
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        f"frame-ancestors {frame_ancestors}"
    )


@functools.cache
def asset(name: str) -> bytes:
    """One file of ``portal_static``, read once from the installed package."""
    return resources.files("engine.admin").joinpath("portal_static", name).read_bytes()


def routes(frame_ancestors: str) -> list[web.RouteDef]:
    """The portal's routes, answering with ``frame_ancestors`` in their CSP."""
    headers = {
        "Content-Security-Policy": content_security_policy(frame_ancestors),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        # Revalidated on each load, so an upgraded engine's page and script arrive together.
        "Cache-Control": "no-cache",
    }

    def serve(path: str, name: str, content_type: str) -> web.RouteDef:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(
                body=asset(name), content_type=content_type, charset="utf-8", headers=headers
            )

        return web.get(path, handler)

    return [serve(path, name, content_type) for path, (name, content_type) in ASSETS.items()]
