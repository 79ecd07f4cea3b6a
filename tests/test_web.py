"""The web page's API end to end (FastAPI's TestClient), with every kind of bad input."""

from __future__ import annotations

import io
import json
import sys
import time
import zipfile

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cloak.builders import build_from_config
from cloak.config import load_config
from cloak.measurement import FaceReport
from cloak.web.app import CONTENT_SECURITY_POLICY, STATIC_DIR, create_app
from cloak.web.names import cloaked_name, safe_name, unique_names
from cloak.web.server import allowed_hosts, exposure_warning, is_loopback, page_url
from cloak.web.strengths import build_presets
from cloak.web.verdicts import face_sentence, face_verdicts

FAST = ["strength.steps=2", "device=cpu"]
GPS = 0x8825


@pytest.fixture(scope="module")
def parts():
    """The model and detector, loaded once for every app in this module."""
    return build_from_config(load_config(FAST, config_name="serve"), need_attack=False)


@pytest.fixture
def make_client(parts):
    """``make_client(*overrides, clock=...)``: a TestClient of a fresh app (its worker runs while it is open)."""
    opened = []

    def make(*overrides: str, clock=time.monotonic) -> TestClient:
        cfg = load_config([*FAST, *overrides], config_name="serve")
        app = create_app(cfg, parts, clock=clock, overrides=[*FAST, *overrides])
        client = TestClient(app)
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


def _jpeg(pixels: np.ndarray, gps: bool = False) -> bytes:
    buf = io.BytesIO()
    exif = Image.Exif()
    if gps:
        exif[GPS] = {1: "N", 2: (48.0, 51.0, 24.0)}
    Image.fromarray(pixels).save(buf, format="JPEG", quality=92, exif=exif)
    return buf.getvalue()


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _face_jpeg(astronaut: np.ndarray) -> bytes:
    return _jpeg(np.asarray(Image.fromarray(astronaut).resize((256, 256))), gps=True)


def _wall() -> np.ndarray:
    return np.full((60, 80, 3), 200, np.uint8)


def _upload(client: TestClient, *files: tuple[str, bytes], **form: str):
    return client.post(
        "/api/photos", files=[("photos", (name, data, "application/octet-stream")) for name, data in files], data=form
    )


def _wait(client: TestClient, photo_id: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    seen = set()
    while time.monotonic() < deadline:
        status = client.get(f"/api/photos/{photo_id}").json()
        seen.add(status["status"])
        if status["status"] in ("done", "no_face", "failed"):
            status["seen"] = seen
            return status
        time.sleep(0.05)
    raise TimeoutError(photo_id)


def _rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def test_face_photo_is_cloaked_reported_and_downloadable(make_client, astronaut):
    client = make_client()
    original = _face_jpeg(astronaut)
    response = _upload(client, ("me.jpg", original), ("wall.png", _png(_wall())), strength="high")
    assert response.status_code == 200
    me, wall = response.json()["photos"]
    assert me["name"] == "me.jpg" and me["strength"] == "high" and response.json()["refused"] == []
    assert wall["status"] == "queued" and wall["position"] == 1, "the second photo waits for the first"

    done = _wait(client, me["id"])
    assert done["status"] == "done", done["message"]
    assert done["steps"] == 2 and done["step"] == 2
    assert (done["width"], done["height"], done["format"]) == (256, 256, "JPEG")
    assert done["metadata"] == {"policy": "strip", "found": True, "gps_found": True, "removed": True}
    [face] = done["report"]["faces"]
    assert "dlib's face model" in face["verdicts"][0]["text"]
    for verdict, numbers in zip(face["verdicts"], face["numbers"], strict=True):
        assert verdict["protected"] == (numbers["distance_jpeg75"] > numbers["threshold"])
    assert face["protected"] == all(v["protected"] for v in face["verdicts"])
    assert 0.9 < done["report"]["ssim"] <= 1.0

    views = {kind: client.get(url) for kind, url in done["views"].items()}
    assert set(views) == {"before", "after", "amplified"}
    for view in views.values():
        assert view.status_code == 200 and view.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(view.content)).size == (256, 256)
    assert np.abs(_rgb(views["amplified"].content) - 128).max() > 0, "the x10 view shows no cloak"

    single = client.get(done["download"])
    assert single.status_code == 200 and 'filename="me-cloaked.jpg"' in single.headers["content-disposition"]
    copy = Image.open(io.BytesIO(single.content))
    assert copy.format == "JPEG" and copy.size == (256, 256)
    assert GPS not in copy.getexif(), "GPS leaked into the download"
    assert np.abs(_rgb(single.content) - _rgb(original)).max() > 0, "the download is not cloaked"

    assert _wait(client, wall["id"])["status"] == "no_face"
    archive = client.get("/api/download.zip", params={"ids": f"{me['id']},{wall['id']}"})
    assert archive.status_code == 200 and archive.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(archive.content)) as z:
        assert sorted(z.namelist()) == ["me-cloaked.jpg", "report.json"], "the no-face photo was not asked for"
        assert z.read("me-cloaked.jpg") == single.content
        assert json.loads(z.read("report.json"))["me-cloaked.jpg"]["original"] == "me.jpg"


def test_photo_without_face_is_returned_only_when_asked(make_client):
    client = make_client()
    wall = _png(_wall())
    left_out = _wait(client, _upload(client, ("wall.png", wall)).json()["photos"][0]["id"])
    assert left_out["status"] == "no_face" and left_out["download"] is None
    assert left_out["report"] == {"faces": []} and "before" in left_out["views"]
    assert client.get(f"/api/photos/{left_out['id']}/download").status_code == 404

    kept = _wait(client, _upload(client, ("wall.png", wall), keep_no_face="true").json()["photos"][0]["id"])
    assert kept["status"] == "no_face" and kept["download_name"] == "wall.png"
    returned = client.get(kept["download"]).content
    assert Image.open(io.BytesIO(returned)).format == "PNG"
    assert np.array_equal(_rgb(returned), _rgb(wall))


def test_bad_photos_are_refused_with_a_reason_and_the_server_keeps_working(make_client, astronaut):
    client = make_client("max_pixels=1000000", "max_upload_mb=0.2")
    good = _face_jpeg(astronaut)
    noisy = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    response = _upload(
        client,
        ("notes.txt", b"this is not a photo"),
        ("broken.jpg", good[: len(good) // 3]),
        ("huge.png", _png(np.zeros((1001, 1000, 3), np.uint8))),
        ("big.png", _png(noisy)),
        ("empty.jpg", b""),
        ("fine.jpg", good),
    )
    assert response.status_code == 200
    refused = {r["name"]: r["error"] for r in response.json()["refused"]}
    assert set(refused) == {"notes.txt", "broken.jpg", "huge.png", "big.png", "empty.jpg"}
    assert "not an image" in refused["notes.txt"] and "/tmp" not in refused["notes.txt"]
    assert "truncated" in refused["broken.jpg"] or "corrupt" in refused["broken.jpg"]
    assert "1,001,000 pixels" in refused["huge.png"] and "max_pixels=" in refused["huge.png"]
    assert "over the limit of 0.2 MB" in refused["big.png"]
    assert "empty" in refused["empty.jpg"]
    [fine] = response.json()["photos"]
    assert _wait(client, fine["id"])["status"] == "done"

    only_bad = _upload(client, ("notes.txt", b"nope"))
    assert only_bad.status_code == 422 and only_bad.json()["photos"] == []


def test_upload_limits(make_client):
    client = make_client("max_files=2", "max_upload_mb=0.05")
    wall = _png(_wall())
    too_many = _upload(client, ("a.png", wall), ("b.png", wall), ("c.png", wall))
    assert too_many.status_code == 413 and "at most 2 per upload" in too_many.json()["detail"]
    limit = 2 * 50_000 + (1 << 20)  # two photos of 0.05 MB and the form's framing
    too_big = _upload(client, ("a.png", b"\0" * (limit + 1)))
    assert too_big.status_code == 413 and "too large" in too_big.json()["detail"]

    def chunks():  # no Content-Length: the limit applies while the body streams in
        yield b'--x\r\nContent-Disposition: form-data; name="photos"; filename="a.png"\r\n\r\n'
        for _ in range(limit // 65536 + 2):
            yield b"\0" * 65536

    streamed = client.post("/api/photos", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert "content-length" not in streamed.request.headers
    assert streamed.status_code == 413
    assert _upload(client).status_code == 400
    assert _upload(client, ("a.png", wall), strength="extreme").status_code == 400
    assert _upload(client, ("a.png", wall), ("b.png", wall)).status_code == 200


def test_file_names_are_never_paths(make_client, astronaut):
    client = make_client()
    worker = client.app.state.worker
    good = _face_jpeg(astronaut)
    response = _upload(client, ("../../x.jpg", good), ("..\\..\\x.jpg", good), ("/etc/passwd", b"root:x:0:0"))
    photos = response.json()["photos"]
    assert [p["name"] for p in photos] == ["x.jpg", "x.jpg"]
    assert response.json()["refused"][0]["name"] == "passwd"
    assert all(p.parent == worker.root for p in worker.root.iterdir()), "a file landed outside the photo folders"
    ids = [_wait(client, p["id"])["id"] for p in photos]
    with zipfile.ZipFile(io.BytesIO(client.get("/api/download.zip", params={"ids": ",".join(ids)}).content)) as z:
        assert sorted(z.namelist()) == ["report.json", "x-cloaked (2).jpg", "x-cloaked.jpg"]


def test_unknown_ids_are_not_found(make_client):
    client = make_client()
    for url in (
        "/api/photos/nope",
        "/api/photos/nope/after.png",
        "/api/photos/nope/download",
        "/api/download.zip?ids=nope",
    ):
        response = client.get(url)
        assert response.status_code == 404, url
    photo = _upload(client, ("wall.png", _png(_wall()))).json()["photos"][0]
    assert len(photo["id"]) >= 22, "ids must be long random tokens"
    assert client.get(f"/api/photos/{photo['id']}/secret.png").status_code == 404


def test_every_response_carries_the_content_security_policy(make_client):
    client = make_client()
    assert CONTENT_SECURITY_POLICY.startswith("default-src 'self'")
    page = client.get("/")
    assert page.status_code == 200 and '<script src="/static/app.js"' in page.text
    assert "<script>" not in page.text and "style=" not in page.text, "inline code would be blocked by the CSP"
    assert "http" not in page.text.replace('xmlns="http://www.w3.org/2000/svg"', ""), (
        "the page must load nothing remote"
    )
    for url in ("/", "/static/app.js", "/static/style.css", "/api/settings", "/api/photos/nope", "/no/such/page"):
        assert client.get(url).headers["content-security-policy"] == CONTENT_SECURITY_POLICY, url
    settings = client.get("/api/settings").json()
    assert [s["name"] for s in settings["strengths"]] == ["low", "mid", "high"]
    assert settings["default_strength"] == "mid" and settings["metadata"] == "strip"


def test_uploads_from_other_sites_and_unknown_hosts_are_refused(parts):
    cfg = load_config(FAST, config_name="serve")
    with TestClient(
        create_app(cfg, parts, allowed_hosts=allowed_hosts("127.0.0.1"), overrides=FAST),
        base_url="http://127.0.0.1:8765",
    ) as client:
        wall = _png(_wall())
        foreign = client.post(
            "/api/photos", files=[("photos", ("a.png", wall))], headers={"origin": "http://evil.example"}
        )
        assert foreign.status_code == 403
        own = client.post(
            "/api/photos", files=[("photos", ("a.png", wall))], headers={"origin": "http://127.0.0.1:8765"}
        )
        assert own.status_code == 200
        rebound = client.get("/api/settings", headers={"host": "evil.example"})
        assert rebound.status_code == 400 and rebound.headers["content-security-policy"] == CONTENT_SECURITY_POLICY


def test_loopback_by_default_and_a_warning_for_other_hosts():
    cfg = load_config([], config_name="serve")
    assert cfg.host == "127.0.0.1" and is_loopback(cfg.host)
    assert exposure_warning(cfg.host, cfg.port) is None and exposure_warning("localhost", 1) is None
    assert exposure_warning("::1", 1) is None
    for host in ("0.0.0.0", "::", "192.168.1.20", "my-laptop.local"):
        warning = exposure_warning(host, 8765)
        assert warning is not None and "anyone on your network" in warning, host
        assert allowed_hosts(host) is None
    assert "127.0.0.1" in allowed_hosts("127.0.0.1")
    assert page_url("0.0.0.0", 8765) == "http://127.0.0.1:8765/"
    assert page_url("::1", 80) == "http://[::1]:80/"


@pytest.mark.parametrize("host, warned", [("127.0.0.1", False), ("0.0.0.0", True)])
def test_serve_binds_where_told_and_warns_off_loopback(monkeypatch, caplog, parts, host, warned):
    import uvicorn

    import cloak.web.server as server

    bound = {}
    monkeypatch.setattr(server, "build_from_config", lambda cfg, **need: parts)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: bound.update(host=self.config.host))
    server.serve(load_config([*FAST, f"host={host}", "open_browser=false"], config_name="serve"))
    assert bound["host"] == host
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelname == "WARNING" and "anyone on your network" in r.getMessage()
    ]
    assert bool(warnings) == warned


def test_results_are_deleted_when_idle_and_when_the_server_stops(make_client, parts):
    now = [0.0]
    client = make_client("idle_timeout_s=60", clock=lambda: now[0])
    worker = client.app.state.worker
    photo = _wait(client, _upload(client, ("wall.png", _png(_wall())), keep_no_face="1").json()["photos"][0]["id"])
    folder = worker.root / photo["id"]
    assert folder.is_dir()
    now[0] = 59.0
    assert worker.sweep() == 0 and client.get(f"/api/photos/{photo['id']}").status_code == 200
    now[0] = 200.0
    assert worker.sweep() == 1
    assert not folder.exists() and client.get(f"/api/photos/{photo['id']}").status_code == 404

    cfg = load_config(FAST, config_name="serve")
    with TestClient(create_app(cfg, parts, overrides=FAST)) as other:
        _upload(other, ("wall.png", _png(_wall())))
        root = other.app.state.worker.root
        assert root.is_dir()
    assert not root.exists(), "results outlived the server"


def test_strength_presets_share_overrides_and_follow_the_chosen_one():
    presets, default = build_presets(["strength=high", "strength.steps=3"])
    assert default == "high"
    assert {p.steps for p in presets.values()} == {3}
    # An override shared by every preset leaves each its own visibility limits.
    own_limits = {n: load_config([f"strength={n}"], config_name="serve").strength.get("max_shading") for n in presets}
    assert {n: p.attack.max_shading for n, p in presets.items()} == own_limits
    assert len(set(own_limits.values())) == 3
    presets, default = build_presets(["strength=low"])
    own = {n: load_config([f"strength={n}"], config_name="serve").strength.steps for n in presets}
    assert default == "low" and {n: p.steps for n, p in presets.items()} == own and len(set(own.values())) > 1


def test_each_preset_cloaks_with_the_model_its_strength_selects(parts, astronaut, monkeypatch):
    """As on the command line, high cloaks with every offline family and the others with the page's model."""
    cfg = load_config(FAST, config_name="serve")
    presets = build_presets(FAST, parts.model)[0]
    assert {n: p.model_choice for n, p in presets.items()} == {
        "low": "ensemble",
        "mid": "ensemble",
        "high": "ensemble_all",
    }
    assert presets["low"].model is parts.model and presets["mid"].model is parts.model
    assert "facenet_casia" in presets["high"].model.weights and "facenet_casia" not in parts.model.weights
    explicit = build_presets([*FAST, "model=ensemble", "strength=high"], parts.model)[0]
    assert all(p.model is parts.model and p.model_choice == "ensemble" for p in explicit.values()), (
        "model= beats high's"
    )

    import cloak.web.worker as worker

    used = []

    def spy(photos, faces, attack, model, device, progress=None):
        used.append(model)
        return real(photos, faces, attack, model, device, progress)

    real = worker.cloak_photos
    monkeypatch.setattr(worker, "cloak_photos", spy)
    with TestClient(create_app(cfg, parts, presets, "mid")) as client:
        for strength in ("high", "mid"):
            [photo] = _upload(client, ("me.jpg", _face_jpeg(astronaut)), strength=strength).json()["photos"]
            assert _wait(client, photo["id"])["status"] == "done"
    assert used == [presets["high"].model, parts.model]


def test_verdicts_in_plain_words():
    def face(distance, after_jpeg, threshold=0.6):
        return FaceReport(
            box=[0, 0, 1, 1],
            score=1.0,
            distance={"dlib_resnet": distance},
            distance_jpeg75={"dlib_resnet": after_jpeg},
            threshold={"dlib_resnet": threshold},
        )

    [safe] = face_verdicts(face(0.9, 0.7), "mid")
    assert (
        safe.protected
        and safe.text == "not matched to your original photo by dlib's face model, also after JPEG compression"
    )
    [lost] = face_verdicts(face(0.9, 0.5), "mid")
    assert lost.protected is False and "after JPEG" in lost.text and "try strength high" in lost.text
    [matched] = face_verdicts(face(0.3, 0.3), "low")
    assert matched.text.startswith("still matched") and "try strength high" in matched.text
    [at_high] = face_verdicts(face(0.3, 0.3), "high")
    assert "try strength high" not in at_high.text
    [unknown] = face_verdicts(face(0.3, 0.3, threshold=None), "mid")
    assert unknown.protected is None

    both = FaceReport(
        box=[0, 0, 1, 1],
        score=1.0,
        distance={"dlib_resnet": 0.9, "sface": 1.5, "other": 0.1},
        distance_jpeg75={"dlib_resnet": 0.8, "sface": 1.4, "other": 0.1},
        threshold={"dlib_resnet": 0.6, "sface": 1.13, "other": 0.5},
    )
    assert face_sentence(both, "mid") == (
        "not matched to your original photo by dlib's face model or OpenCV's SFace, also after JPEG compression; "
        "still matched to your original photo by other — try strength high"
    )


def test_names_are_made_safe():
    assert safe_name("../../x.jpg") == "x.jpg"
    assert safe_name("C:\\Users\\me\\holiday.png") == "holiday.png"
    assert safe_name("..") == "photo" and safe_name("") == "photo" and safe_name(None) == "photo"
    assert safe_name(".bashrc") == "bashrc"
    assert safe_name("a\x00b<>.jpg") == "a_b_.jpg"
    assert len(safe_name("x" * 500 + ".jpg")) <= 120 and safe_name("x" * 500 + ".jpg").endswith(".jpg")
    assert cloaked_name("me.JPG", "JPEG") == "me-cloaked.JPG"
    assert cloaked_name("me.jpg", "PNG") == "me-cloaked.png"
    assert unique_names(["a.jpg", "A.jpg", "a.jpg"]) == ["a.jpg", "A (2).jpg", "a (3).jpg"]


def test_python_m_cloak_serve_dispatches_with_hydra_overrides(monkeypatch):
    import cloak.__main__ as entry
    import cloak.web.server as server

    seen = {}

    def fake_serve(cfg, overrides=None):
        seen.update(cfg=cfg, overrides=overrides)

    monkeypatch.setattr(server, "serve", fake_serve)
    monkeypatch.setattr(sys, "argv", ["cloak", "serve", "port=9000", "strength=low", "open_browser=false"])
    entry.main()
    assert seen["cfg"].port == 9000 and seen["cfg"].open_browser is False
    assert seen["overrides"] == ["port=9000", "strength=low", "open_browser=false"], "each preset is composed with them"
    presets, default = build_presets(seen["overrides"])
    assert default == "low" and presets["high"].model_choice == "ensemble_all", "without model=, high picks its own"
    monkeypatch.setattr(sys, "argv", ["cloak", "serve", "strength=high", "model=sface"])
    entry.main()
    presets, default = build_presets(seen["overrides"])
    assert default == "high" and {p.model_choice for p in presets.values()} == {"sface"}, "model= serves every preset"


def test_wheel_ships_the_page(wheel_names):
    names = wheel_names
    shipped = {f"cloak/web/static/{p.name}" for p in STATIC_DIR.iterdir()} | {"cloak/configs/serve.yaml"}
    assert shipped <= names, f"missing from the wheel: {sorted(shipped - names)}"
