"""The labelling web service: a FastAPI app over the store, and a static page (no build step).

    tunelab label serve examples/label/project.yaml      # then open http://127.0.0.1:8000

Only the page itself (HTML, JS, CSS: no data in them) is public. Every /api/ call carries
`Authorization: Bearer TOKEN`: an assessor's token sees that assessor's queue and labels only; the
admin token opens /api/admin/ (stats, export). The role comes from the token alone (label/auth.py).
No or unknown token -> 401, repeated failures from one address -> 429 with a growing wait; a valid
token on the other side's endpoint -> 403. A label is taken only for a showing that /api/next served
to that assessor (409 otherwise). A damaged database or a full disk -> 503 with a JSON message. Bodies are validated (unknown showing -> 404, label outside the allowed set or a
reason not in the rule book -> 422, a second label on one showing -> 409, a body over
`server.max_body_bytes` -> 413). The gold answer of a honeypot and the system names never leave the server.
"""

from __future__ import annotations

import ipaddress
import json
import re
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from tunelab.errors import TunelabError
from tunelab.label.auth import Login, Logins
from tunelab.label.db import Conflict, NotFound, Store, db_problem
from tunelab.label.project import Project

STATIC = Path(__file__).parent / "static"
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
    (b"cache-control", b"no-store"),
]


class LabelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    assignment: int = Field(
        ge=1, le=2**62, strict=True, description="the showing being labelled (from /api/next)"
    )
    choice: Literal["left", "right", "tie", "both_bad"]
    reasons: dict[str, str] = Field(description="criterion -> one of its reasons in the rule book")


class Guard:
    """Pure ASGI middleware: caps request bodies (413) and adds security headers to every response."""

    def __init__(self, app, max_body: int):
        self.app, self.max_body = app, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and not length.isdigit():
            response = JSONResponse({"detail": "Content-Length is not a number"}, status_code=400)
            return await response(scope, receive, send_with_headers)
        if length is not None and int(length) > self.max_body:
            response = JSONResponse({"detail": f"request body over {self.max_body} bytes"}, status_code=413)
            return await response(scope, receive, send_with_headers)
        seen = 0

        async def limited_receive():  # a chunked body has no length up front: count as it arrives
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                raise HTTPException(
                    413, f"request body over {self.max_body} bytes"
                )  # FastAPI re-raises these
            return message

        await self.app(scope, limited_receive, send_with_headers)


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def create_app(project: Project, store: Store, *, clock: Callable[[], float] = time.monotonic) -> FastAPI:
    """The app; `store` must already hold the project's queues (Store.sync). `clock` times the brake
    on failed logins (tests pass their own)."""
    cfg = project.cfg
    app = FastAPI(title=f"tunelab label: {cfg.name}", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Guard, max_body=cfg.server.max_body_bytes)
    logins = Logins(project.tokens, project.admin_token, clock=clock)

    def login(request: Request) -> Login:
        return logins.check(_bearer(request), request.client.host if request.client else "unknown")

    def assessor(request: Request) -> str:
        found = login(request)
        if found.role != "assessor":  # the role comes with the token; a name never decides it
            raise HTTPException(403, "the admin token has no queue; log in with an assessor's token")
        return found.name

    def admin(request: Request) -> None:
        if login(request).role != "admin":
            raise HTTPException(403, "admin endpoints need the admin token")

    _error_handlers(app, store)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _assessor_routes(app, project, store, assessor)
    _admin_routes(app, project, store, admin)
    return app


def _error_handlers(app: FastAPI, store: Store) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError):
        parts = [
            f"{'.'.join(str(x) for x in e['loc'] if x != 'body') or 'body'}: {e['msg']}" for e in err.errors()
        ]
        return JSONResponse({"detail": "; ".join(parts)}, status_code=422)

    @app.exception_handler(sqlite3.Error)
    async def _database(request: Request, err: sqlite3.Error):
        # a damaged file or a full disk: nothing was stored by this request, and the client should hear so
        return JSONResponse({"detail": db_problem(err, store.path)}, status_code=503)


def _assessor_routes(app: FastAPI, project: Project, store: Store, assessor: Callable) -> None:
    cfg = project.cfg
    rulebook = cfg.rulebook.model_dump()

    def status(name: str) -> dict:
        done, total = store.progress(name)
        return {"done": done, "total": total}

    @app.get("/api/me")
    def me(name: str = Depends(assessor)) -> dict:
        return {"assessor": name, "project": cfg.name, "rulebook": rulebook, **status(name)}

    @app.get("/api/next")
    def next_showing(name: str = Depends(assessor)) -> dict:
        return {"showing": store.next_showing(name), **status(name)}

    @app.post("/api/labels", status_code=201)
    def add_label(body: LabelIn, name: str = Depends(assessor)) -> dict:
        criteria = cfg.rulebook.criteria
        if set(body.reasons) != set(criteria):
            raise HTTPException(422, f"reasons: give one reason for each of {sorted(criteria)}")
        for crit, reason in body.reasons.items():
            if reason not in criteria[crit].reasons:
                raise HTTPException(422, f"reasons.{crit}: {reason[:80]!r} is not in the rule book")
        try:
            label_id = store.add_label(name, body.assignment, body.choice, body.reasons)
        except NotFound as err:
            raise HTTPException(404, str(err)) from None
        except Conflict as err:
            raise HTTPException(409, str(err)) from None
        return {"id": label_id, **status(name)}

    @app.post("/api/undo")
    def undo(name: str = Depends(assessor)) -> dict:
        try:
            assignment = store.undo_last(name)
        except NotFound as err:
            raise HTTPException(404, str(err)) from None
        return {"undone": assignment, **status(name)}

    @app.get("/api/labels")
    def own_labels(name: str = Depends(assessor)) -> dict:
        return {"labels": store.own_labels(name)}


def _admin_routes(app: FastAPI, project: Project, store: Store, admin: Callable) -> None:
    @app.get("/api/admin/stats", dependencies=[Depends(admin)])
    def stats() -> dict:
        from tunelab.label.stats import summarize

        return json.loads(json.dumps(summarize(store.labels(), project.cfg.thresholds)))  # tuples -> lists

    @app.get("/api/admin/export", dependencies=[Depends(admin)])
    def export() -> dict:
        from tunelab.label.export import build_preferences

        rows, dropped = build_preferences(store.labels(), store.items(), project.cfg)
        return {"rows": rows, "dropped": dict(dropped)}


# tokens printed in tunelab's own example project: anyone can read them
PUBLISHED_TOKENS = {
    "ann-token-change-me",
    "bob-token-change-me",
    "cat-token-change-me",
    "admin-token-change-me",
}
PLACEHOLDER = re.compile(r"change-?me|example|placeholder|replace-?me", re.IGNORECASE)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def exposure_warnings(project: Project, host: str) -> list[str]:
    """What to warn about when serving on `host`; a TunelabError when it must not be served there at all."""
    if is_loopback(host):
        return []
    logins = [*((name, t) for t, name in project.tokens.items()), ("admin_token", project.admin_token)]
    weak = [name for name, token in logins if token in PUBLISHED_TOKENS or PLACEHOLDER.search(token)]
    if weak:
        raise TunelabError(
            f"{project.path}: refusing to serve on {host}, where other machines can reach it, with example "
            f"tokens ({', '.join(weak)}): anyone who read the example can log in. Give each its own secret "
            "token (e.g. `env:VAR`), or serve on 127.0.0.1."
        )
    srv = project.cfg.server
    if srv.tls_cert or srv.tls_proxy:
        return []
    return [
        f"serving on {host} over plain HTTP: tokens and labels cross the network unencrypted. Put a TLS "
        "proxy in front (then set server.tls_proxy: true) or set server.tls_cert and server.tls_key."
    ]


def serve(project: Project, host: str, port: int) -> None:
    """Plan any new items, then answer until interrupted."""
    import socket

    import uvicorn

    from tunelab.label.pairs import load_items

    for warning in exposure_warnings(project, host):
        print(f"tunelab label: warning: {warning}", file=sys.stderr)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:  # fail before planning anything, with a message rather than uvicorn's log line
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
        except OSError as err:
            raise TunelabError(
                f"Cannot listen on {host}:{port} ({err.strerror}); pick another --port."
            ) from None
    store = Store(project.db_path)
    added = store.sync(project, load_items(project))
    app = create_app(project, store)
    n_assessors = len(project.cfg.assessors)
    srv = project.cfg.server
    tls = {}
    if srv.tls_cert:
        tls = {
            "ssl_certfile": str(project.resolve(srv.tls_cert)),
            "ssl_keyfile": str(project.resolve(srv.tls_key)),
        }
    print(f"tunelab label: {added} new item(s) queued; {n_assessors} assessor(s); database {project.db_path}")
    scheme = "https" if srv.tls_cert else "http"
    print(f"tunelab label: serving '{project.cfg.name}' at {scheme}://{host}:{port}/", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, **tls)
