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
import shutil
import time
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from omegaconf import DictConfig
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import Message, Receive

from cloak.builders import Parts, build_from_config
from cloak.photos import CloakIOError, UnreadablePhotoError, load_photo
from cloak.web.names import safe_name, unique_names
from cloak.web.strengths import StrengthPreset, build_presets
from cloak.web.worker import QUEUED, CloakWorker, Job, WorkerSettings

log = logging.getLogger(__name__)

#: Sent with every response: the page may load scripts, styles, images and data only from itself.
CONTENT_SECURITY_POLICY = "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

STATIC_DIR = Path(__file__).resolve().parent / "static"

#: Room for the multipart framing and form fields on top of the photos' own bytes.
_FORM_OVERHEAD = 1 << 20

#: The page's three views of a cloaked photo.
PREVIEW_KINDS = ("before", "after", "amplified")


@dataclass(frozen=True)
class UploadLimits:
    """What one upload may hold."""

    max_files: int = 20
    max_upload_mb: float = 50.0

    @property
    def max_photo_bytes(self) -> int:
        return int(self.max_upload_mb * 1_000_000)

    @property
    def max_request_bytes(self) -> int:
        return self.max_files * self.max_photo_bytes + _FORM_OVERHEAD


class _BodyTooLarge(Exception):
    pass


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
    settings = WorkerSettings(
        max_pixels=int(cfg.max_pixels),
        metadata=str(cfg.metadata),
        jpeg_quality=int(cfg.jpeg_quality),
        jpeg_subsampling=str(cfg.jpeg_subsampling),
        preview_max_side=int(cfg.preview_max_side),
        idle_timeout_s=float(cfg.idle_timeout_s),
    )
    limits = UploadLimits(max_files=int(cfg.max_files), max_upload_mb=float(cfg.max_upload_mb))
    worker = CloakWorker(parts, presets, settings, clock=clock)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        worker.start()
        try:
            yield
        finally:
            worker.stop()

    app = FastAPI(title="cloak", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.worker = worker
    app.state.limits = limits
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Awaitable[Any]]) -> Any:
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/api/settings")
    def page_settings() -> dict:
        return {
            "strengths": [
                {"name": p.name, "eps": p.eps, "steps": p.steps, "max_dssim": p.max_dssim} for p in presets.values()
            ],
            "default_strength": default_strength,
            "max_files": limits.max_files,
            "max_upload_mb": limits.max_upload_mb,
            "metadata": settings.metadata,
            "device": str(worker.parts.device),
        }

    @app.post("/api/photos")
    async def upload(request: Request) -> JSONResponse:
        _check_origin(request)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_request_bytes:
            return _too_large_response(limits)
        limited = Request(request.scope, _limited_receive(request.receive, limits.max_request_bytes))
        try:
            form = await limited.form(max_files=limits.max_files, max_fields=10)
        except _BodyTooLarge:
            return _too_large_response(limits)
        except StarletteHTTPException as err:  # the multipart parser's complaints
            if "too many files" in str(err.detail).lower():
                return _too_many_response(limits)
            raise HTTPException(400, f"The upload could not be read ({err.detail}).") from err
        accepted: list[Job] = []
        refused: list[dict] = []
        try:
            files = [f for f in form.getlist("photos") if isinstance(f, UploadFile)]
            strength = str(form.get("strength") or default_strength)
            keep_no_face = str(form.get("keep_no_face") or "").lower() in ("1", "true", "on", "yes")
            if strength not in presets:
                raise HTTPException(400, f"Unknown strength {strength!r}; choose one of {', '.join(presets)}.")
            if not files:
                raise HTTPException(400, "The upload holds no photos; choose or drop some photos.")
            for file in files:
                job, error = await _accept(worker, limits, settings, file, strength, keep_no_face)
                if job is None:
                    refused.append({"name": safe_name(file.filename), "error": error})
                else:
                    accepted.append(job)
        except BaseException:
            for job in accepted:
                worker.discard(job)
            raise
        finally:
            await form.close()
        for job in accepted:
            worker.submit(job)
        log.info("Queued %d photo(s), refused %d", len(accepted), len(refused))
        return JSONResponse(
            {"photos": [_job_json(worker, j) for j in accepted], "refused": refused},
            status_code=200 if accepted else 422,
        )

    @app.get("/api/photos/{job_id}")
    def status(job_id: str) -> dict:
        return _job_json(worker, _job(worker, job_id))

    @app.get("/api/photos/{job_id}/{kind}.png")
    def preview(job_id: str, kind: str) -> FileResponse:
        job = _job(worker, job_id)
        path = job.previews.get(kind) if kind in PREVIEW_KINDS else None
        if path is None:
            raise HTTPException(404, f"This photo has no {kind} view (yet).")
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/photos/{job_id}/download")
    def download(job_id: str) -> FileResponse:
        job = _job(worker, job_id)
        if job.result is None:
            raise HTTPException(404, f"{job.name} has nothing to download ({job.status}).")
        return FileResponse(job.result, filename=job.download_name, content_disposition_type="attachment")

    @app.get("/api/download.zip")
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

    return app


async def _accept(
    worker: CloakWorker,
    limits: UploadLimits,
    settings: WorkerSettings,
    file: UploadFile,
    strength: str,
    keep_no_face: bool,
) -> tuple[Job | None, str]:
    """Stores one uploaded photo under a new job and checks that cloak can read it."""
    name = safe_name(file.filename)
    size = file.size if file.size is not None else _stream_size(file)
    if size > limits.max_photo_bytes:
        return None, (
            f"{name} is {size / 1e6:.1f} MB, over the limit of {limits.max_upload_mb:g} MB per photo "
            "(start the server with a larger max_upload_mb= to allow it)."
        )
    if size == 0:
        return None, f"{name} is empty."
    job = worker.new_job(name, strength, keep_no_face, suffix=Path(name).suffix)
    try:
        await run_in_threadpool(_store, file, job.upload)
        await run_in_threadpool(load_photo, job.upload, max_pixels=settings.max_pixels)
    except UnreadablePhotoError as err:
        worker.discard(job)
        detail = _user_message(str(err.__cause__ or err), job, name)
        return None, f"{name} could not be read as a photo: it may be corrupt, cut short, or not an image ({detail})."
    except CloakIOError as err:
        worker.discard(job)
        return None, _user_message(str(err), job, name)
    except OSError as err:
        worker.discard(job)
        return None, f"{name} could not be stored ({err.strerror or err})."
    return job, ""


def _user_message(message: str, job: Job, name: str) -> str:
    """A loader's error message, naming the photo as the user knows it instead of the server's file."""
    text = message.replace(str(job.upload), name)
    text = text.replace("raise the limit (max_pixels)", "start the server with a larger max_pixels=")
    return text


def _store(file: UploadFile, dest: Path) -> None:
    file.file.seek(0)
    with dest.open("xb") as out:
        shutil.copyfileobj(file.file, out, 1 << 20)


def _stream_size(file: UploadFile) -> int:
    file.file.seek(0, 2)
    size = file.file.tell()
    file.file.seek(0)
    return size


def _limited_receive(receive: Receive, limit: int) -> Receive:
    """``receive`` that raises :class:`_BodyTooLarge` once the body passes ``limit`` bytes."""
    seen = 0

    async def limited() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _BodyTooLarge
        return message

    return limited


def _check_origin(request: Request) -> None:
    """Refuses uploads sent by other web sites' pages (the browser names them in ``Origin``)."""
    origin = request.headers.get("origin")
    if origin is None:
        return
    if urlsplit(origin).netloc.lower() != request.headers.get("host", "").lower():
        raise HTTPException(403, "Uploads are accepted only from cloak's own page.")


def _too_large_response(limits: UploadLimits) -> JSONResponse:
    return JSONResponse(
        {
            "detail": f"This upload is too large: at most {limits.max_upload_mb:g} MB per photo and "
            f"{limits.max_files} photos at once. Upload fewer or smaller photos."
        },
        status_code=413,
    )


def _too_many_response(limits: UploadLimits) -> JSONResponse:
    return JSONResponse(
        {
            "detail": f"Too many photos at once: at most {limits.max_files} per upload "
            "(start the server with a larger max_files= to allow more). Upload them in smaller groups."
        },
        status_code=413,
    )


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
