"""The interactive docs page at /schema: Swagger UI, served from this service's own pinned copy.

The page is where developers paste their tokens, so it loads nothing from anywhere else: the
assets come from the `openapi-ui-bundles` package (pinned exactly in pyproject.toml; Swagger UI
5.17.14, Apache-2.0), read once per process on first use, and the page's Content-Security-Policy
forbids the browser to fetch or run anything from another origin. It also works where browsers
have no internet access. No inline script: the page's own start-up code is served as a file.
"""

from __future__ import annotations

from functools import cache

from litestar import MediaType, get
from litestar.response.base import ASGIResponse
from openapi_ui_bundles import swagger_ui

from service.http.openapi import OPENAPI_PATH

DOCS_PATH = "/schema"
_BUNDLE = f"{DOCS_PATH}/swagger-ui-bundle.js"
_STYLES = f"{DOCS_PATH}/swagger-ui.css"
_START = f"{DOCS_PATH}/docs.js"

_PAGE = f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Conversations API</title>
<link rel="stylesheet" href="{_STYLES}"></head>
<body><div id="docs"></div>
<script src="{_BUNDLE}"></script>
<script src="{_START}"></script>
</body></html>""".encode()

# validatorUrl null: Swagger UI would otherwise send the document to a public validator.
_START_SCRIPT = f"""window.addEventListener("load", function () {{
  window.ui = SwaggerUIBundle({{url: "{OPENAPI_PATH}", dom_id: "#docs", validatorUrl: null, deepLinking: false}});
}});
""".encode()

# Swagger UI sets inline styles and shows its logos as data: images; everything else is this origin's.
_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
           "connect-src 'self'; font-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
_HEADERS = {"Content-Security-Policy": _POLICY, "X-Content-Type-Options": "nosniff"}
_ASSET_HEADERS = {"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"}


@cache
def _asset(name: str) -> bytes:
    return (swagger_ui.static_path / name).read_bytes()


@get(DOCS_PATH, sync_to_thread=False)
def docs_page() -> ASGIResponse:
    return ASGIResponse(body=_PAGE, media_type=MediaType.HTML, headers=_HEADERS)


@get(_START, sync_to_thread=False)
def docs_start_script() -> ASGIResponse:
    return ASGIResponse(body=_START_SCRIPT, media_type="text/javascript", headers=_ASSET_HEADERS)


@get(_BUNDLE, sync_to_thread=False)
def swagger_ui_bundle() -> ASGIResponse:
    return ASGIResponse(body=_asset("swagger-ui-bundle.js"), media_type="text/javascript", headers=_ASSET_HEADERS)


@get(_STYLES, sync_to_thread=False)
def swagger_ui_styles() -> ASGIResponse:
    return ASGIResponse(body=_asset("swagger-ui.css"), media_type="text/css", headers=_ASSET_HEADERS)


DOCS_HANDLERS = [docs_page, docs_start_script, swagger_ui_bundle, swagger_ui_styles]
