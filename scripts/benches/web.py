"""Speed and memory of the web page, measured through its HTTP API like the page uses it.

Starts the real server (uvicorn in a thread, on a free loopback port) and, with an
HTTP client doing what the page's script does (upload, poll the status, fetch the
before/after views):

1. time from drop to result for the astronaut (512x512, one face): from the upload
   request until the cloaked view has arrived;
2. the same for a 12-megapixel photo (4000x3000) with several faces, made by pasting
   lfw-dev faces (or, without lfw-dev, astronaut crops) onto an enlarged astronaut;
3. the process's memory (RSS) after ``--count`` small photos (256x256 astronaut crops
   or lfw-dev photos) were cloaked through the page and downloaded as one zip.

Usage:
    uv run python scripts/bench.py web [--count 50] [hydra overrides, e.g. strength=high or strength.steps=10]
"""

from __future__ import annotations

import io
import logging
import resource
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from skimage import data

from benches.cli import LFW_DEV, bench_parser
from cloak.config import load_config
from cloak.web.app import create_app
from cloak.web.server import start_in_thread

FINAL = {"done", "no_face", "failed"}


def rss_mb() -> float:
    """Resident memory of this process now, in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def jpeg_bytes(pixels: np.ndarray, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def lfw_faces(folder: Path, count: int) -> list[np.ndarray]:
    """The first photo of the first ``count`` identities of lfw-dev, or none without it."""
    if not folder.is_dir():
        return []
    photos = []
    for person in sorted(p for p in folder.iterdir() if p.is_dir()):
        first = sorted(person.glob("*.jpg"))[:1]
        photos += [np.asarray(Image.open(f).convert("RGB")) for f in first]
        if len(photos) == count:
            break
    return photos


def group_photo(faces: list[np.ndarray]) -> np.ndarray:
    """A 4000x3000 photo: the astronaut enlarged as background, with ``faces`` pasted at 500x500 in a row."""
    canvas = Image.fromarray(data.astronaut()).resize((4000, 3000), Image.Resampling.BICUBIC)
    for i, face in enumerate(faces):
        tile = Image.fromarray(face).resize((500, 500), Image.Resampling.BICUBIC)
        canvas.paste(tile, (150 + (i % 6) * 640, 2300 if i < 6 else 1700))
    return np.asarray(canvas)


def upload(client: httpx.Client, files: list[tuple[str, bytes]], strength: str | None = None) -> list[dict]:
    form = {"strength": strength} if strength else {}
    response = client.post("/api/photos", files=[("photos", (n, b, "image/jpeg")) for n, b in files], data=form)
    response.raise_for_status()
    body = response.json()
    if body["refused"]:
        raise RuntimeError(f"refused: {body['refused']}")
    return body["photos"]


def wait_all(client: httpx.Client, ids: list[str], poll_s: float = 0.5, trace: list | None = None) -> list[dict]:
    """Polls like the page does until every photo is final; ``trace`` collects ``(time, status, step)``."""
    pending, done = set(ids), {}
    while pending:
        for photo_id in list(pending):
            status = client.get(f"/api/photos/{photo_id}").json()
            if trace is not None:
                trace.append((time.perf_counter(), status["status"], status["step"]))
            if status["status"] in FINAL:
                done[photo_id] = status
                pending.discard(photo_id)
        if pending:
            time.sleep(poll_s)
    return [done[i] for i in ids]


def drop_to_result(client: httpx.Client, name: str, photo: bytes) -> tuple[float, dict, str]:
    """Seconds from the upload request until the cloaked view has arrived, the photo's status, and the phases."""
    start = time.perf_counter()
    [queued] = upload(client, [(name, photo)])
    uploaded = time.perf_counter()
    trace: list = []
    [status] = wait_all(client, [queued["id"]], poll_s=0.2, trace=trace)
    if status["status"] != "done":
        raise RuntimeError(f"{name}: {status['status']} {status['message']}")
    client.get(status["views"]["after"]).raise_for_status()
    end = time.perf_counter()
    steps = [(t, k) for t, s, k in trace if s == "cloaking" and k > 0]
    first_cloak = next((t for t, s, _ in trace if s == "cloaking"), uploaded)
    last_step = next((t for t, s, _ in trace if s in ("saving", "done")), end)
    per_step = (
        (steps[-1][0] - steps[0][0]) / (steps[-1][1] - steps[0][1])
        if len(steps) > 1 and steps[-1][1] > steps[0][1]
        else float("nan")
    )
    phases = (
        f"upload {uploaded - start:.1f} s, load+detect ~{first_cloak - uploaded:.1f} s, "
        f"cloak ~{last_step - first_cloak:.1f} s (~{per_step:.2f} s/step), measure+save+views ~{end - last_step:.1f} s"
    )
    return end - start, status, phases


Row = tuple[str, str, str]


def astronaut_case(client: httpx.Client) -> list[Row]:
    """Drop to result for the astronaut (512x512, one face)."""
    seconds, status, phases = drop_to_result(client, "astronaut.jpg", jpeg_bytes(data.astronaut()))
    d = status["report"]["faces"][0]["numbers"][0]
    return [
        (
            f"astronaut 512x512, 1 face, {status['strength']} ({status['steps']} steps)",
            f"{seconds:.1f} s",
            f"{rss_mb():.0f} MB; dlib distance {d['distance']:.2f}, after JPEG {d['distance_jpeg75']:.2f}",
        ),
        ("", "", phases),
    ]


def big_case(client: httpx.Client, folder: Path, count: int) -> list[Row]:
    """Drop to result for a 12-megapixel group photo of ``count`` faces."""
    faces = lfw_faces(folder, count)
    source = f"{len(faces)} lfw-dev faces"
    if not faces:
        crop = data.astronaut()[30:260, 140:330]
        faces, source = [crop] * count, f"{count} astronaut crops"
    big = jpeg_bytes(group_photo(faces))
    seconds, status, phases = drop_to_result(client, "group.jpg", big)
    protected = sum(bool(f["protected"]) for f in status["report"]["faces"])
    return [
        (
            f"4000x3000, {source} + background face, {status['strength']} ({status['steps']} steps)",
            f"{seconds:.1f} s",
            f"{rss_mb():.0f} MB (peak {peak_rss_mb():.0f} MB); {len(status['report']['faces'])} faces "
            f"found, {protected} not matched after JPEG",
        ),
        ("", "", phases),
    ]


def small_photos_case(client: httpx.Client, folder: Path, count: int, max_files: int) -> list[Row]:
    """``count`` small photos cloaked through the page and downloaded as one zip: time and memory."""
    smalls = lfw_faces(folder, count)
    if len(smalls) < count:
        base = data.astronaut()
        smalls = [base[i % 200 : i % 200 + 256, 100 : 100 + 256] for i in range(count)]
    start = time.perf_counter()
    ids = []
    files = [(f"small{i:03d}.jpg", jpeg_bytes(p)) for i, p in enumerate(smalls)]
    for group in range(0, len(files), max_files):
        ids += [p["id"] for p in upload(client, files[group : group + max_files])]
    statuses = wait_all(client, ids)
    client.get("/api/download.zip", params={"ids": ",".join(ids)}).raise_for_status()
    counts = {s: sum(x["status"] == s for x in statuses) for s in sorted(FINAL)}
    steps = statuses[0]["steps"] or "-"
    return [
        (
            f"{count} small photos ({smalls[0].shape[1]}x{smalls[0].shape[0]}, {steps} steps) + zip",
            f"{time.perf_counter() - start:.1f} s",
            f"{rss_mb():.0f} MB after (peak {peak_rss_mb():.0f} MB); {counts}",
        )
    ]


def main(argv: list[str] | None = None) -> None:
    """``scripts/bench.py web``: prints one row per case."""
    parser = bench_parser("web", __doc__, "Hydra overrides of the serve config (default strength=mid)")
    parser.add_argument("--data", type=Path, default=LFW_DEV)
    parser.add_argument("--count", type=int, default=50, help="small photos for the memory measurement (0: none)")
    parser.add_argument("--faces", type=int, default=6, help="faces pasted into the 12-megapixel photo")
    parser.add_argument("--skip", choices=["astronaut", "big"], action="append", default=[], help="leave a case out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    cfg = load_config(["open_browser=false", *args.overrides], config_name="serve")
    start = time.perf_counter()
    app = create_app(cfg)
    load_s = time.perf_counter() - start
    server = start_in_thread(app, "127.0.0.1", 0)
    rows = [("models loaded, server up", f"{load_s:.1f} s", f"{rss_mb():.0f} MB")]
    try:
        with httpx.Client(base_url=server.url, timeout=600) as client:
            if "astronaut" not in args.skip:
                rows += astronaut_case(client)
            if "big" not in args.skip:
                rows += big_case(client, args.data, args.faces)
            if args.count:
                rows += small_photos_case(client, args.data, args.count, int(cfg.max_files))
    finally:
        server.stop()
    rows.append(("server stopped", "", f"{rss_mb():.0f} MB"))
    width = max(len(r[0]) for r in rows)
    print(f"{'':{width}}  {'drop to result':<15} memory (RSS) and notes")
    for what, when, note in rows:
        print(f"{what:{width}}  {when:<15} {note}")
