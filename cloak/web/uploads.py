"""An upload to the page before its photos are queued: the form read within limits, each photo stored and checked.

Refusals name the photo as the user knows it and the server option that would allow it.
"""

from __future__ import annotations

import shutil
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive

from cloak.photos import CloakIOError, UnreadablePhotoError, load_photo
from cloak.web.names import safe_name
from cloak.web.worker import CloakWorker, Job, WorkerSettings

#: Room for the multipart framing and form fields on top of the photos' own bytes.
_FORM_OVERHEAD = 1 << 20


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


async def read_form(request: Request, limits: UploadLimits) -> FormData | JSONResponse:
    """The upload's form, read within ``limits``; a 413 response when it is over them."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_request_bytes:
        return _too_large_response(limits)
    limited = Request(request.scope, _limited_receive(request.receive, limits.max_request_bytes))
    try:
        return await limited.form(max_files=limits.max_files, max_fields=10)
    except _BodyTooLarge:
        return _too_large_response(limits)
    except StarletteHTTPException as err:  # the multipart parser's complaints
        if "too many files" in str(err.detail).lower():
            return _too_many_response(limits)
        raise HTTPException(400, f"The upload could not be read ({err.detail}).") from err


async def accept_form(
    form: FormData,
    worker: CloakWorker,
    limits: UploadLimits,
    settings: WorkerSettings,
    strengths: Collection[str],
    default_strength: str,
) -> tuple[list[Job], list[dict]]:
    """The form's photos as new jobs (not yet queued) and the refused ones with why; none kept on an error."""
    accepted: list[Job] = []
    refused: list[dict] = []
    try:
        files = [f for f in form.getlist("photos") if isinstance(f, UploadFile)]
        strength = str(form.get("strength") or default_strength)
        keep_no_face = str(form.get("keep_no_face") or "").lower() in ("1", "true", "on", "yes")
        if strength not in strengths:
            raise HTTPException(400, f"Unknown strength {strength!r}; choose one of {', '.join(strengths)}.")
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
    return accepted, refused


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


def check_origin(request: Request) -> None:
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
