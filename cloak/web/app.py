"""The page's HTTP API (FastAPI): upload photos, follow their progress, see and download the results.

Routes:

* ``GET /``: the page (``static/index.html``, its script and style under ``/static``).
* ``GET /api/settings``: strength presets, limits, the metadata policy.
* ``POST /api/photos``: multipart upload (``photos``: files; ``strength``; ``keep_no_face``).
  Answers at once with one entry per photo: queued (with its id) or refused (with why).
* ``GET /api/photos/{id}``: a photo's status, progress and, when done, its report.
* ``GET /api/photos/{id}/{before,after,amplified}.png``: the page's views of it.
* ``GET /api/photos/{id}/download``: the cloaked copy.
* ``GET /api/download.zip?ids=a,b``: several copies and their report in one zip.

Every response carries ``Content-Security-Policy: default-src 'self'`` (the page loads
nothing from anywhere else, and runs no inline script or style). Photo ids are
random (:func:`secrets.token_urlsafe`); an unknown id is a 404.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from omegaconf import DictConfig
from starlette.background import BackgroundTask
from starlette.middleware.trustedhost import TrustedHostMiddleware

from cloak.builders import Parts, build_from_config
from cloak.web.names import safe_name, unique_names
from cloak.web.strengths import StrengthPreset, build_presets
from cloak.web.uploads import UploadLimits, accept_form, check_origin, read_form
from cloak.web.worker import QUEUED, CloakWorker, Job, WorkerSettings

log = logging.getLogger(__name__)

#: Sent with every response: the page may load scripts, styles, images and data only from itself.
CONTENT_SECURITY_POLICY = "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

STATIC_DIR = Path(__file__).resolve().parent / "static"

#: The page's three views of a cloaked photo.
PREVIEW_KINDS = ("before", "after", "amplified")


@dataclass(frozen=True)
class _Page:
    """What the routes share: the worker, its settings, the presets and the upload limits."""

    worker: CloakWorker
    settings: WorkerSettings
    presets: dict[str, StrengthPreset]
    default_strength: str
    limits: UploadLimits


def create_app(
    cfg: DictConfig,
    parts: Parts | None = None,
    presets: dict[str, StrengthPreset] | None = None,
    default_strength: str | None = None,
    allowed_hosts: list[str] | None = None,
    clock: Callable[[], float] = time.monotonic,
    overrides: Sequence[str] = (),
) -> FastAPI:
    """The page's app; its worker starts and stops with the app (uvicorn's or TestClient's lifespan).

    Args:
        cfg: the composed ``serve`` config.
        parts: the model, detector and device, built once; ``None`` builds them from ``cfg``.
        presets: one attack per strength; ``None`` composes them from ``overrides``, each
            cloaking with the page's model.
        default_strength: the preset the page starts with (with ``presets=None``: the one
            ``overrides`` chose).
        allowed_hosts: ``Host`` header values accepted (guards a loopback server against
            DNS rebinding); ``None`` accepts any.
        clock: the worker's time source, for idle timeouts.
        overrides: the Hydra overrides ``cfg`` was composed with.
    """
    if parts is None:
        parts = build_from_config(cfg, need_attack=False)
    if presets is None:
        presets, default_strength = build_presets(overrides)
    elif default_strength not in presets:
        default_strength = "mid" if "mid" in presets else next(iter(presets))
    assert default_strength is not None
    settings = WorkerSettings(
        max_pixels=int(cfg.max_pixels),
        metadata=str(cfg.metadata),
        jpeg_quality=int(cfg.jpeg_quality),
        jpeg_subsampling=str(cfg.jpeg_subsampling),
        preview_max_side=int(cfg.preview_max_side),
        idle_timeout_s=float(cfg.idle_timeout_s),
    )
    limits = UploadLimits(max_files=int(cfg.max_files), max_upload_mb=float(cfg.max_upload_mb))
    page = _Page(CloakWorker(parts, presets, settings, clock=clock), settings, presets, default_strength, limits)

    app = FastAPI(title="cloak", lifespan=_lifespan(page.worker), docs_url=None, redoc_url=None, openapi_url=None)
    app.state.worker = page.worker
    app.state.limits = limits
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    app.middleware("http")(_security_headers)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(_page_router(page))
    app.include_router(_upload_router(page))
    app.include_router(_photo_router(page))
    return app


def _lifespan(worker: CloakWorker) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The app's lifespan: the worker runs while the app does."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        worker.start()
        try:
            yield
        finally:
            worker.stop()

    return lifespan


async def _security_headers(request: Request, call_next: Callable[[Request], Awaitable[Any]]) -> Any:
    """Middleware: the CSP and its companions on every response."""
    response = await call_next(request)
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def _page_router(page: _Page) -> APIRouter:
    """``GET /`` (the page) and ``GET /api/settings`` (its presets and limits)."""
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @router.get("/api/settings")
    def page_settings() -> dict:
        return {
            "strengths": [
                {"name": p.name, "eps": p.eps, "steps": p.steps, "max_dssim": p.max_dssim}
                for p in page.presets.values()
            ],
            "default_strength": page.default_strength,
            "max_files": page.limits.max_files,
            "max_upload_mb": page.limits.max_upload_mb,
            "metadata": page.settings.metadata,
            "device": str(page.worker.parts.device),
        }

    return router


def _upload_router(page: _Page) -> APIRouter:
    """``POST /api/photos``: the upload; each photo is stored, checked and queued, or refused with why."""
    router = APIRouter()

    @router.post("/api/photos")
    async def upload(request: Request) -> JSONResponse:
        check_origin(request)
        form = await read_form(request, page.limits)
        if isinstance(form, JSONResponse):
            return form
        try:
            accepted, refused = await accept_form(
                form, page.worker, page.limits, page.settings, page.presets, page.default_strength
            )
        finally:
            await form.close()
        for job in accepted:
            page.worker.submit(job)
        log.info("Queued %d photo(s), refused %d", len(accepted), len(refused))
        return JSONResponse(
            {"photos": [_job_json(page.worker, j) for j in accepted], "refused": refused},
            status_code=200 if accepted else 422,
        )

    return router


def _photo_router(page: _Page) -> APIRouter:
    """A photo's status, its views and its download; several photos' downloads in one zip."""
    router = APIRouter()
    worker = page.worker

    @router.get("/api/photos/{job_id}")
    def status(job_id: str) -> dict:
        return _job_json(worker, _job(worker, job_id))

    @router.get("/api/photos/{job_id}/{kind}.png")
    def preview(job_id: str, kind: str) -> FileResponse:
        job = _job(worker, job_id)
        path = job.previews.get(kind) if kind in PREVIEW_KINDS else None
        if path is None:
            raise HTTPException(404, f"This photo has no {kind} view (yet).")
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @router.get("/api/photos/{job_id}/download")
    def download(job_id: str) -> FileResponse:
        job = _job(worker, job_id)
        if job.result is None:
            raise HTTPException(404, f"{job.name} has nothing to download ({job.status}).")
        return FileResponse(job.result, filename=job.download_name, content_disposition_type="attachment")

    @router.get("/api/download.zip")
    def download_zip(ids: str) -> FileResponse:
        jobs = [_job(worker, i) for i in dict.fromkeys(ids.split(",")) if i]
        ready = [j for j in jobs if j.result is not None]
        if not ready:
            raise HTTPException(404, "None of these photos has a copy to download yet.")
        path = worker.root / f"download-{secrets.token_hex(8)}.zip"
        _write_zip(path, ready)
        return FileResponse(
            path,
            media_type="application/zip",
            filename="cloaked-photos.zip",
            background=BackgroundTask(path.unlink, missing_ok=True),
        )

    return router


def _job(worker: CloakWorker, job_id: str) -> Job:
    job = worker.get(job_id)
    if job is None:
        raise HTTPException(404, "No such photo here: it was never uploaded, or it was deleted after an idle time.")
    return job


def _job_json(worker: CloakWorker, job: Job) -> dict:
    base = f"/api/photos/{job.id}"
    policy = worker.settings.metadata
    return {
        "id": job.id,
        "name": job.name,
        "status": job.status,
        "strength": job.strength,
        "step": job.step,
        "steps": job.steps,
        "position": worker.queue_position(job) if job.status == QUEUED else 0,
        "message": job.message,
        "width": job.size[0] if job.size else None,
        "height": job.size[1] if job.size else None,
        "format": job.image_format or None,
        "metadata": {
            "policy": policy,
            "found": job.had_metadata,
            "gps_found": job.had_gps,
            "removed": policy == "strip",
        },
        "report": job.report,
        "views": {kind: f"{base}/{kind}.png" for kind in PREVIEW_KINDS if kind in job.previews},
        "download": f"{base}/download" if job.result is not None else None,
        "download_name": job.download_name if job.result is not None else None,
        "seconds": round(job.finished - job.started, 2) if job.finished and job.started else None,
    }


def _write_zip(path: Path, jobs: list[Job]) -> None:
    """The copies under unique, safe names, and ``report.json`` with each photo's report."""
    names = unique_names([safe_name(j.download_name) for j in jobs])
    report = {
        name: {"original": j.name, "status": j.status, "strength": j.strength, **(j.report or {})}
        for name, j in zip(names, jobs)
    }
    with zipfile.ZipFile(path, "x", compression=zipfile.ZIP_STORED) as archive:
        for name, job in zip(names, jobs):
            assert job.result is not None
            archive.write(job.result, arcname=name)
        archive.writestr("report.json", json.dumps(report, indent=2), compress_type=zipfile.ZIP_DEFLATED)
