"""The grading service: a FastAPI app around the study grader (``spinegrade serve``).

Routes: ``GET /`` the upload page; ``POST /v1/grade`` one study (multipart field ``study``:
a .zip of its DICOM files, any folder layout; optional ``series``: JSON
``{"series id": "series type"}`` overrides) answered as JSON; ``GET /v1/reviews/{key}`` the
review page of a graded study (kept for the last few studies graded with ``review``);
``GET /health``; ``GET /openapi.json``.

Every request gets a temporary folder of its own, removed when its response is sent, and
the upload is unpacked only inside it (``spinegrade.data.upload``). Requests are unpacked
and routed in a pool of ``workers`` processes (``spinegrade.service.unpack``), so that the
next study is unpacked while the current one grades, and graded one at a time by the
model's own thread (the one that loaded it); at most ``workers + queue`` requests are in
hand, and beyond that the service answers 503 with Retry-After rather than piling work up.
``/health`` answers while it grades. Responses name a study by its zip's top folder (or a
generated name) and its series by number: no DICOM header value (names, ids, UIDs, dates,
institutions) is sent, logged or shown.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import multiprocessing
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.requests import ClientDisconnect

from spinegrade.core import vocab
from spinegrade.core.errors import EXPECTED_ERRORS
from spinegrade.data.routing import Routing
from spinegrade.data.upload import Unpacked, UploadError, UploadLimits, too_large
from spinegrade.inference.study import StudyFiles, review_html
from spinegrade.service import unpack
from spinegrade.service.form import read_form

log = logging.getLogger(__name__)

TOKEN_COOKIE = "spinegrade-token"
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
# the review page inlines its script and style (it also opens from disk)
REVIEW_CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    "script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'self'"
)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
}
ASSETS = {"upload.js": "text/javascript", "upload.css": "text/css"}


@dataclass(frozen=True)
class ServiceSettings:
    """How the service runs.

    Attributes:
        workers: processes that unpack and route uploads; the model grades one study at a
            time in a thread of its own (with the engine's torch threads).
        queue: requests that may wait beyond ``workers``; more get 503.
        limits: caps on the upload (``max_upload_bytes``: more gets 413 before it is all
            read) and on what its zip may unpack to (``spinegrade.data.upload``).
        token: when set, every route but /health needs ``Authorization: Bearer <token>``
            (or the cookie the upload page sets from ``/?token=...``).
        reviews: review pages kept for ``GET /v1/reviews/{key}``.
        retry_after: seconds a 503 asks the client to wait.
    """

    workers: int = 1
    queue: int = 4
    limits: UploadLimits = field(default_factory=UploadLimits)
    token: str | None = None
    reviews: int = 8
    retry_after: int = 2


class Service:
    """The loaded model, the grading pool and the request counters of one app."""

    def __init__(self, load: Callable[[], object], settings: ServiceSettings, name: str):
        self.settings = settings
        self.name = name
        self.model = None
        self.error: str | None = None
        # a thread per request in hand: it waits for the unpacking, then for the grading
        self.pool = ThreadPoolExecutor(
            max(1, settings.workers + settings.queue), thread_name_prefix="request"
        )
        # the model loads and grades in one thread of its own: torch ran 60% slower
        # grading in another thread than the one that loaded the model (measured)
        self.torch = ThreadPoolExecutor(1, thread_name_prefix="model")
        self._unpacker: ProcessPoolExecutor | None = None
        self._unpacker_lock = threading.Lock()
        self.inflight = 0
        self.served = 0
        self.reviews: OrderedDict[str, str] = OrderedDict()
        self._load = load

    def load(self) -> None:
        try:
            self.model = self._load()
            log.info("model loaded: %s", self.name)
        except Exception as exc:  # reported by /health; the service keeps answering
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("could not load the model %s: %s", self.name, self.error)

    def unpacker(self) -> ProcessPoolExecutor:
        """The unpacking processes (started on first use, and again after one died)."""
        with self._unpacker_lock:
            if self._unpacker is None:
                self._unpacker = ProcessPoolExecutor(
                    max(1, self.settings.workers), mp_context=multiprocessing.get_context("spawn")
                )
            return self._unpacker

    def start_unpacker(self) -> None:
        """Start the unpacking processes now, so that the first upload does not wait."""
        try:
            self.unpacker().submit(unpack.ready).result()
        except Exception as exc:  # the first upload tries again, and says what failed
            log.error("could not start the unpacking process: %s", exc)

    def stop(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.torch.shutdown(wait=False, cancel_futures=True)
        with self._unpacker_lock:
            if self._unpacker is not None:
                self._unpacker.shutdown(wait=False, cancel_futures=True)

    def prepare(
        self, upload: Path, root: Path, overrides: dict[int, str]
    ) -> tuple[Unpacked, Routing]:
        """Unpack and route the upload in an unpacking process; one that has died (killed
        while idle, or by this upload) is replaced and the upload tried once more."""
        for attempt in (1, 2):
            pool = self.unpacker()
            try:
                job = pool.submit(unpack.prepare, upload, root, overrides, self.settings.limits)
                return job.result()
            except BrokenProcessPool:
                log.warning("the unpacking process died (attempt %d): starting another", attempt)
                with self._unpacker_lock:
                    if self._unpacker is pool:
                        self._unpacker = None
                pool.shutdown(wait=False, cancel_futures=True)
                shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError("the unpacking process died twice on this upload")

    def grade(self, upload: Path, folder: Path, overrides: dict[str, str], review: bool) -> dict:
        """Unpack, route and grade one study (in a request thread); the JSON answer."""
        started = time.perf_counter()
        root = folder / "studies"
        overrides_by_id = {int(k): v for k, v in overrides.items()}
        unpacked, routed = self.prepare(upload, root, overrides_by_id)
        name = unpacked.study_name or f"study-{secrets.token_hex(4)}"
        decided = list(routed.series.itertuples(index=False))
        study = StudyFiles(name, 1, {int(r.series_id): str(r.series_id) for r in decided})
        types = {
            (1, int(r.series_id)): r.series_description for r in decided if r.series_description
        }
        (graded,) = self.torch.submit(self.model.grade, root, [study], types, review).result()
        warnings = [f"ignored {n} (not DICOM)" for n in unpacked.ignored]
        warnings += [f"rejected {n}: {why}" for n, why in unpacked.rejected]
        warnings += [re.sub(r"\bstudy 1\b", f"study {name}", w) for w in routed.warnings]
        warnings += graded.warnings
        answer = {
            "study_id": name,
            "rows": graded.rows[list(vocab.SUBMISSION_HEADER)].to_dict("records"),
            "series": [
                {
                    "id": int(r.series_id),
                    "type": r.series_description or None,
                    "basis": r.basis,
                    "reason": r.reason,
                }
                for r in decided
            ],
            "points": _points(graded.points, name),
            "warnings": warnings,
        }
        if review:
            key = secrets.token_urlsafe(16)
            self.reviews[key] = review_html(graded, self.model.bundle.selection)
            while len(self.reviews) > self.settings.reviews:
                self.reviews.popitem(last=False)
            answer["review"] = f"/v1/reviews/{key}#study-{graded.number}"
        answer["seconds"] = round(time.perf_counter() - started, 3)
        return answer


def _points(points, name: str) -> list[dict]:
    """The points found, as JSON records (NaN as null) named by the study's name."""
    records = json.loads(points.drop(columns=["study_id"]).to_json(orient="records"))
    return [{"study_id": name, **r} for r in records]


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status, headers={**SECURITY_HEADERS, **(headers or {})})


def create_app(load: Callable[[], object], settings: ServiceSettings, name: str) -> FastAPI:
    """The app; ``load`` returns the study grader (``StudyModel``) and runs once, in the
    background, at start-up (``/health`` says when it is ready)."""
    service = Service(load, settings, name)

    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        loading = loop.run_in_executor(service.torch, service.load)
        starting = loop.run_in_executor(service.pool, service.start_unpacker)
        yield
        await loading
        await starting
        service.stop()

    app = FastAPI(
        title="spinegrade",
        summary="Grade a lumbar spine MRI study (RSNA 2024 conditions) from its DICOM files.",
        version="1",
        docs_url=None,  # the Swagger page loads its script from a CDN: /openapi.json instead
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.service = service

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if (origin := request.headers.get("origin")) and not _same_origin(origin, request):
            return error(403, f"cross-origin requests are refused (Origin {origin})")
        if settings.token and request.url.path != "/health" and not _authorized(request):
            if request.url.path == "/" and _given(request.query_params.get("token", "")):
                response = Response(status_code=303, headers={"Location": "/"})
                response.set_cookie(
                    TOKEN_COOKIE, settings.token, httponly=True, samesite="strict", path="/"
                )
                return response
            return error(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
        response = await call_next(request)
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    def _given(candidate: str) -> bool:
        return bool(candidate) and hmac.compare_digest(candidate.encode(), settings.token.encode())

    def _authorized(request: Request) -> bool:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and _given(value.strip()):
            return True
        return _given(request.cookies.get(TOKEN_COOKIE, ""))

    @app.get("/health", summary="200 once the model is loaded, 503 before (or if it failed)")
    async def health():
        body = {
            "model": service.name,
            "grading": service.inflight,
            "capacity": settings.workers + settings.queue,
            "served": service.served,
        }
        if service.model is not None:
            return {"status": "ready", **body}
        status = "failed" if service.error else "loading"
        return JSONResponse({"status": status, "error": service.error, **body}, 503)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(_asset("upload.html"), headers={"Content-Security-Policy": PAGE_CSP})

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str):
        if name not in ASSETS:
            return error(404, f"no asset {name!r}")
        return Response(_asset(name), media_type=ASSETS[name])

    @app.get("/v1/reviews/{key}", response_class=HTMLResponse, summary="a graded study's page")
    async def review(key: str):
        page = service.reviews.get(key)
        if page is None:
            return error(404, "no such review (only the last few studies graded are kept)")
        return HTMLResponse(page, headers={"Content-Security-Policy": REVIEW_CSP})

    @app.post(
        "/v1/grade",
        summary="grade one study: the 25 submission rows, the series types, the points",
        openapi_extra={"requestBody": GRADE_BODY, "responses": GRADE_RESPONSES},
    )
    async def grade(request: Request, review: bool = False):
        retry = {"Retry-After": str(settings.retry_after)}
        if service.model is None:
            return error(503, "the model is not loaded yet" + _why(service), retry)
        if service.inflight >= settings.workers + settings.queue:
            return error(503, "busy: every grading slot is taken, try again shortly", retry)
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > settings.limits.max_upload_bytes:
            return error(413, too_large("the upload", settings.limits.max_upload_bytes).message)
        service.inflight += 1
        folder = Path(tempfile.mkdtemp(prefix="spinegrade-serve-"))
        try:
            form = await read_form(
                request.stream(),
                request.headers.get("content-type", ""),
                folder,
                settings.limits.max_upload_bytes,
            )
            if form.study is None:
                return error(400, "no file field 'study' (a .zip of one study's DICOM files)")
            overrides = _overrides(form.fields.get("series", ""))
            loop = asyncio.get_running_loop()
            answer = await loop.run_in_executor(
                service.pool, service.grade, form.study, folder, overrides, review
            )
            service.served += 1
            return JSONResponse(answer)
        except ClientDisconnect:
            log.info("client hung up during the upload")
            return Response(status_code=499)
        except UploadError as exc:
            return error(exc.status, str(exc))
        except EXPECTED_ERRORS as exc:
            return error(422, str(exc))
        except Exception:
            log.exception("grading failed")
            return error(500, "grading failed: an internal error (the service log has it)")
        finally:
            service.inflight -= 1
            shutil.rmtree(folder, ignore_errors=True)

    return app


def _why(service: Service) -> str:
    return f" ({service.error})" if service.error else ""


def _overrides(text: str) -> dict[str, str]:
    """The ``series`` field: ``{"series id": "series type"}`` as JSON.

    Raises:
        UploadError: 400 naming what is wrong.
    """
    if not text.strip():
        return {}
    try:
        given = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UploadError(400, f"field 'series' is not JSON ({exc})") from None
    if not isinstance(given, dict) or not all(str(k).isdigit() for k in given):
        raise UploadError(
            400,
            'field \'series\': expected {"<series number>": "<series type>"}, e.g. '
            '{"2": "Sagittal T1"}',
        )
    unknown = sorted({str(v) for v in given.values()} - set(vocab.SERIES_TYPES))
    if unknown:
        raise UploadError(
            400,
            f"field 'series': unknown series type {unknown[0]!r} (one of "
            f"{', '.join(vocab.SERIES_TYPES)})",
        )
    return {str(k): str(v) for k, v in given.items()}


def _same_origin(origin: str, request: Request) -> bool:
    host = request.headers.get("host", "")
    return origin.rstrip("/") in (f"http://{host}", f"https://{host}")


def _asset(name: str) -> str:
    return resources.files("spinegrade.service").joinpath("assets", name).read_text("utf-8")


GRADE_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["study"],
                "properties": {
                    "study": {
                        "type": "string",
                        "format": "binary",
                        "description": "a .zip of one study's DICOM files (any folder layout)",
                    },
                    "series": {
                        "type": "string",
                        "description": 'JSON overrides of series types, e.g. {"2": "Sagittal T1"}',
                    },
                },
            }
        }
    },
}
GRADE_RESPONSES = {
    "200": {"description": "study_id, rows, series, points, warnings, seconds (and review)"},
    "400": {"description": "a bad upload: not a zip, unsafe entries, no DICOM files..."},
    "401": {"description": "no or wrong bearer token (when the service has one)"},
    "413": {"description": "the upload, or what it unpacks to, is over the limits"},
    "422": {"description": "the study could not be read or graded"},
    "503": {"description": "the model is loading, or every grading slot is taken (Retry-After)"},
}
