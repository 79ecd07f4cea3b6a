"""Invariants of every attack, on tiny random-weight models (torchattacks-style)."""

import itertools

import pytest
import torch
from conftest import synthetic_photo

from cloak.attacks import PGD, Fawkes, LowKey, PhotoFaces, photo_seed
from cloak.attacks.masking import VisualMasking
from cloak.attacks.steps import step_sizes
from cloak.models.ensemble import Ensemble
from cloak.transforms import RobustTransform

ATTACKS = {"pgd": PGD, "lowkey": LowKey, "fawkes": Fawkes}


def _photos(n: int, dtype=torch.float64) -> list[PhotoFaces]:
    out = []
    for i in range(n):
        photo, landmarks = synthetic_photo(i, size=(64 + 8 * i, 72), dtype=dtype)
        out.append(PhotoFaces(photo=photo, landmarks=landmarks, seed=photo_seed(0, photo)))
    return out


def _attack(name: str, **kw):
    kw.setdefault("eps", 8.0)
    kw.setdefault("steps", 5)
    kw.setdefault("max_dssim", None)
    return ATTACKS[name](**kw)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_input_unchanged_and_budget_respected(name, tiny_embedder):
    model = tiny_embedder(dtype=torch.float64)
    photos = _photos(2)
    before = [p.photo.clone() for p in photos]
    results = _attack(name, transform=RobustTransform())(model, photos)
    for p, b, r in zip(photos, before, results):
        assert torch.equal(p.photo, b), "the attack modified its input"
        delta = r.photo - p.photo
        assert delta.abs().max() <= 8 / 255 + 1e-9, f"L-inf {delta.abs().max() * 255:.3f} > 8"
        assert delta.abs().max() > 0, "the attack changed nothing"
        assert r.photo.min() >= 0 and r.photo.max() <= 1
        assert r.photo.shape == p.photo.shape


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_cloak_stays_in_the_face_region(name, tiny_embedder):
    model = tiny_embedder(dtype=torch.float64)
    photo, landmarks = synthetic_photo(3, size=(120, 140), dtype=torch.float64)
    result = _attack(name)(model, [PhotoFaces(photo, landmarks, seed=1)])[0]
    x0, y0, x1, y1 = result.box
    changed = (result.photo - photo).abs().sum(0) > 0
    assert changed[y0:y1, x0:x1].any()
    changed[y0:y1, x0:x1] = False
    assert not changed.any(), "pixels outside the face region changed"


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_batch_equals_single(name, tiny_embedder):
    model = tiny_embedder(dtype=torch.float64)
    photos = _photos(3)
    attack = _attack(name, transform=RobustTransform())
    batch = attack(model, photos)
    for p, b in zip(photos, batch):
        single = attack(model, [p])[0]
        assert torch.allclose(single.photo, b.photo, atol=1e-9), "a photo's cloak depends on its batch"


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_reduces_its_loss(name, tiny_embedder):
    model = tiny_embedder(dtype=torch.float64)
    photos = _photos(2)
    weak = _attack(name, steps=0, random_start=False)(model, photos)
    strong = _attack(name, steps=20)(model, photos)
    for w, s in zip(weak, strong):
        assert sum(s.loss) < sum(w.loss) - 1e-3, f"{name}: loss {sum(w.loss):.4f} -> {sum(s.loss):.4f}"


def test_the_cosine_schedule_keeps_the_invariants(tiny_embedder):
    """The step schedule changes the steps, never the budget, the range or batch independence."""
    technique = "cosine"
    model = tiny_embedder(dtype=torch.float64)
    photos = _photos(2)
    before = [p.photo.clone() for p in photos]
    attack = _attack("lowkey", transform=RobustTransform(), step_schedule="cosine")
    batch = attack(model, photos)
    plain = _attack("lowkey", transform=RobustTransform())(model, photos)
    for p, b, r, q in zip(photos, before, batch, plain):
        assert torch.equal(p.photo, b)
        delta = r.photo - p.photo
        assert 0 < delta.abs().max() <= 8 / 255 + 1e-9
        assert r.photo.min() >= 0 and r.photo.max() <= 1
        assert not torch.equal(r.photo, q.photo), f"{technique} changed nothing"
        assert torch.allclose(attack(model, [p])[0].photo, r.photo, atol=1e-9)


@pytest.mark.parametrize("steps", [1, 7, 40])
def test_step_schedules_keep_the_mean_step(steps):
    constant, cosine = step_sizes(0.5, steps, "constant"), step_sizes(0.5, steps, "cosine")
    assert constant == [0.5] * steps
    assert all(a > b for a, b in itertools.pairwise(cosine)) and min(cosine) > 0
    assert sum(cosine) / steps == pytest.approx(0.5)
    if steps > 1:  # large steps first, small ones last
        assert cosine[0] > 0.9 and cosine[-1] < 0.1


def test_early_stopping_stops_each_photo_once_past_the_threshold(tiny_embedder):
    """A photo stops when its faces clear the margin; its cloak is the same alone or in a batch."""
    model = tiny_embedder(dtype=torch.float64)
    model.cosine_threshold = 0.999  # a threshold the tiny model crosses within a few steps
    photos = _photos(3)
    attack = _attack("pgd", steps=30, stop_margin=0.5, min_steps=3, transform=RobustTransform())
    ticks = []
    batch = attack(model, photos, progress=ticks.append)
    assert all(3 <= r.steps < 30 for r in batch), [r.steps for r in batch]
    assert sum(ticks) == 30, "the progress bar must reach the end"
    for p, b in zip(photos, batch):
        single = attack(model, [p])[0]
        assert single.steps == b.steps
        assert torch.allclose(single.photo, b.photo, atol=1e-9)
    full = _attack("pgd", steps=30, transform=RobustTransform())(model, photos)
    assert all(r.steps == 30 for r in full)
    # An attack with no margin (targeted) runs every step whatever stop_margin says.
    targeted = _attack("fawkes", steps=6, stop_margin=0.0, min_steps=0)(model, photos[:1])
    assert targeted[0].steps == 6


def test_dssim_budget_enforced(tiny_embedder):
    from cloak.quality import dssim

    model = tiny_embedder(dtype=torch.float64)
    photos = _photos(2)
    results = PGD(eps=32, steps=5, max_dssim=0.01)(model, photos)
    for p, r in zip(photos, results):
        x0, y0, x1, y1 = r.box
        region = lambda img: img[:, y0:y1, x0:x1].unsqueeze(0)  # noqa: E731
        assert float(dssim(region(r.photo), region(p.photo))[0]) <= 0.01 + 1e-9
        assert r.dssim <= 0.01 + 1e-9


def test_ensemble_and_models_restored(tiny_embedder):
    a, b = tiny_embedder(seed=0, dtype=torch.float64), tiny_embedder(seed=1, dtype=torch.float64)
    a.train()
    ens = Ensemble({"a": a, "b": b}, weights={"a": 2.0})
    LowKey(eps=4, steps=2, max_dssim=None)(ens, _photos(1))
    assert a.training and not b.training
    assert all(p.requires_grad for p in ens.parameters())


def test_members_of_one_template_share_one_warp(tiny_embedder, monkeypatch):
    """Members with the same template and input size (SFace, EdgeFace) get one warped crop per photo and draw."""
    import cloak.attacks.base as base

    a, b = tiny_embedder(seed=0, dtype=torch.float64), tiny_embedder(seed=1, dtype=torch.float64)
    c = tiny_embedder(seed=2, dtype=torch.float64)
    c.template = c.template + 1.0  # another layout
    ens = Ensemble({"a": a, "b": b, "c": c})
    photos = _photos(2)
    attack = PGD(eps=8, steps=3, max_dssim=None, transform=RobustTransform())
    calls = []
    warp = base.warp_crops
    monkeypatch.setattr(base, "warp_crops", lambda *args: calls.append(args[2]) or warp(*args))
    cloaked = attack(ens, photos)
    # Clean crops, 3 steps and the final check, each 2 photos x 2 layouts (a and b share one).
    assert len(calls) == 5 * 2 * 2
    assert all(0 < (r.photo - p.photo).abs().max() <= 8 / 255 + 1e-9 for p, r in zip(photos, cloaked))
    regions = [base.face_region(p, {"a": a, "b": b, "c": c}) for p in photos]
    crops = attack._crops(
        {n: (m, 1.0) for n, m in (("a", a), ("b", b), ("c", c))}, [p.photo for p in photos], regions, None
    )
    assert torch.equal(crops["a"], crops["b"]) and not torch.equal(crops["a"], crops["c"])


def test_same_seed_same_cloak_different_seed_differs(tiny_embedder):
    model = tiny_embedder(dtype=torch.float64)
    photos = _photos(1)
    r1 = PGD(eps=8, steps=3, transform=RobustTransform())(model, photos)[0]
    r2 = PGD(eps=8, steps=3, transform=RobustTransform())(model, photos)[0]
    other = [PhotoFaces(p.photo, p.landmarks, seed=p.seed + 1) for p in photos]
    r3 = PGD(eps=8, steps=3, transform=RobustTransform())(model, other)[0]
    assert torch.equal(r1.photo, r2.photo)
    assert not torch.equal(r1.photo, r3.photo)


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="eps"):
        PGD(eps=0)
    with pytest.raises(ValueError, match="max_shading"):
        PGD(max_shading=0)
    with pytest.raises(ValueError, match="max_shading_peak"):
        PGD(max_shading_peak=-1.0)
    with pytest.raises(ValueError, match="max_dssim"):
        PGD(max_dssim=2.0)
    with pytest.raises(ValueError, match="min_steps"):
        PGD(min_steps=-1)
    with pytest.raises(ValueError, match="min_face_ssim_p5"):
        PGD(min_face_ssim_p5=1.5)
    with pytest.raises(ValueError, match="min_face_ssim must"):
        PGD(min_face_ssim=-2)
    with pytest.raises(ValueError, match="perturbation_sigma"):
        PGD(perturbation_sigma=-1)
    with pytest.raises(ValueError, match="color"):
        PGD(color="cmyk")
    with pytest.raises(ValueError, match="floor"):
        PGD(masking=VisualMasking(floor=0))
    with pytest.raises(ValueError, match="step_schedule"):
        PGD(step_schedule="linear")
    with pytest.raises(ValueError, match="smooth_prob"):
        LowKey(smooth_prob=1.5)
    with pytest.raises(FileNotFoundError, match="target_dir"):
        Fawkes(target_dir="/nonexistent/targets")


SHAPING = {
    "masking": {"masking": VisualMasking(floor=0.2, contrast=0.05)},
    "smooth": {"perturbation_sigma": 1.0},
    "luma": {"color": "luma"},
    "auto": {"color": "auto"},
    "all": {"masking": True, "perturbation_sigma": 0.7, "color": "luma"},
}


@pytest.mark.parametrize("shaping", sorted(SHAPING))
def test_shaped_cloaks_keep_the_invariants(shaping, tiny_embedder):
    """Masking, smoothing and luma-only cloaks: input unchanged, |delta| <= eps * map, [0, 1], batch == single."""
    model = tiny_embedder(dtype=torch.float64)
    photos = _photos(2)
    before = [p.photo.clone() for p in photos]
    attack = _attack("lowkey", transform=RobustTransform(), **SHAPING[shaping])
    results = attack(model, photos)
    for p, b, r in zip(photos, before, results):
        assert torch.equal(p.photo, b), "the attack modified its input"
        x0, y0, x1, y1 = r.box
        delta = (r.photo - p.photo)[:, y0:y1, x0:x1]
        assert r.bound.shape == (1, y1 - y0, x1 - x0) and r.bound.max() <= 8 / 255 + 1e-12
        assert (delta.abs() <= r.bound + 1e-9).all(), "a pixel moved beyond its own bound"
        assert delta.abs().max() > 0, "the attack changed nothing"
        assert r.photo.min() >= 0 and r.photo.max() <= 1
        if attack.color == "luma":
            assert torch.allclose(delta[0], delta[1], atol=1e-9) or (r.photo.amax() == 1 or r.photo.amin() == 0)
        assert torch.allclose(attack(model, [p])[0].photo, r.photo, atol=1e-9), "a photo's cloak depends on its batch"


def test_auto_colour_gives_a_grey_photo_a_grey_cloak(tiny_embedder):
    """color=auto: on a black-and-white photo the cloak changes R, G and B alike; on a colour one it need not."""
    model = tiny_embedder(dtype=torch.float64)
    photo, landmarks = synthetic_photo(3, size=(72, 80), dtype=torch.float64)
    grey = photo.mean(dim=0, keepdim=True).expand(3, -1, -1).clone()
    attack = PGD(eps=8, steps=6, max_dssim=None, color="auto")
    for image, coloured in ((grey, False), (photo, True)):
        r = attack(model, [PhotoFaces(image, landmarks, seed=1)])[0]
        delta = r.photo - image
        inside = (r.photo > 0) & (r.photo < 1)  # clamping at black or white may differ per channel
        spread = (delta - delta.mean(dim=0, keepdim=True)).abs()[inside].max()
        assert delta.abs().max() > 0
        assert (spread > 1 / 255) == coloured, f"coloured={coloured}: colour spread {float(spread) * 255:.2f} levels"


def test_max_chroma_caps_the_colour_of_the_cloak_on_a_colour_photo(tiny_embedder):
    """color=auto with max_chroma=c: each pixel's change deviates from its grey by at most c times eps."""
    model = tiny_embedder(dtype=torch.float64)
    photo, landmarks = synthetic_photo(3, size=(72, 80), dtype=torch.float64)
    spreads = {}
    for cap in (1.0, 0.25):
        r = PGD(eps=8, steps=6, max_dssim=None, color="auto", max_chroma=cap)(
            model, [PhotoFaces(photo, landmarks, seed=1)]
        )[0]
        delta = r.photo - photo
        inside = ((r.photo > 0) & (r.photo < 1)).all(dim=0)
        spread = (delta - delta.mean(dim=0, keepdim=True)).abs().amax(0)[inside].max()
        assert spread <= cap * 2 * 8 / 255 + 1.5 / 255, f"max_chroma={cap}: spread {float(spread) * 255:.2f} levels"
        spreads[cap] = float(spread)
    assert spreads[0.25] < spreads[1.0]
    with pytest.raises(ValueError, match="max_chroma"):
        PGD(eps=8, steps=2, max_chroma=1.5)


def test_masking_projects_the_bound_per_pixel(tiny_embedder):
    """The bound is eps times the masking map of the clean region (and its feathered mask): |delta / map| <= eps."""
    from cloak.attacks.masking import masking_map

    model = tiny_embedder(dtype=torch.float64)
    photo, landmarks = synthetic_photo(5, size=(72, 80), dtype=torch.float64)
    photo[:, :, :40] = 0.5  # a flat left half, where the map gives only the floor
    masking = VisualMasking(floor=0.25, contrast=0.05, luminance=0.0)
    result = PGD(eps=16, steps=8, max_dssim=None, masking=masking)(model, [PhotoFaces(photo, landmarks, seed=2)])[0]
    x0, y0, x1, y1 = result.box
    share = masking_map(photo[:, y0:y1, x0:x1].unsqueeze(0), 0.25, 0.05, 1.5, 0.0)[0]
    delta = (result.photo - photo)[:, y0:y1, x0:x1]
    assert (result.bound <= 16 / 255 * share + 1e-12).all()
    assert ((delta / share).abs().max() * 255) <= 16 + 1e-6
    flat = share <= 0.25 + 1e-4
    assert flat.any() and (~flat).any()
    assert delta.abs().amax(0)[flat[0]].max() <= 4 / 255 + 1e-9, "flat skin got more than the floor's share"
    assert delta.abs().amax(0)[~flat[0]].max() > 4 / 255, "texture got no more than flat skin"


def test_background_eps_caps_the_cloak_outside_the_grown_face_boxes(tiny_embedder):
    """background_eps: full eps on the faces; beside them background_eps, cut to the masking floor on flat areas."""
    model = tiny_embedder(dtype=torch.float64)
    photo, landmarks = synthetic_photo(3, size=(120, 140), dtype=torch.float64)
    box = torch.cat([landmarks.amin(1), landmarks.amax(1)], dim=1)  # tight: leaves room beside it
    x0, y0, x1, y1 = box[0].tolist()
    gx, gy = 0.05 * (x1 - x0), 0.05 * (y1 - y0)
    m = 3  # past the grown box and its feathered edge (a pixel wide on a face this small)
    away = torch.ones(photo.shape[-2:], dtype=torch.bool)
    away[max(0, int(y0 - gy) - m) : int(y1 + gy) + m, max(0, int(x0 - gx) - m) : int(x1 + gx) + m] = False
    # A flat mid-grey wall left of the face; its first columns see the face's texture in their window.
    wall = int(x0 - gx) - m
    photo[:, :, :wall] = 0.5
    faces = PhotoFaces(photo, landmarks, seed=1, boxes=box)
    result = PGD(eps=16, steps=6, max_dssim=None, background_eps=8)(model, [faces])[0]
    change = (result.photo - photo).abs().amax(0) * 255
    inside = change[int(y0 + gy) : int(y1 - gy), int(x0 + gx) : int(x1 - gx)]
    assert 8 < float(inside.max()) <= 16 + 1e-6, "the face did not get the full eps"
    assert 0 < float(change[away].max()) <= 8 + 1e-6, f"beside the face: {float(change[away].max()):.2f} levels"
    floor = 8 * VisualMasking().floor  # at mid grey there is no luminance masking
    flat = change[:, : wall - 5]
    assert 0 < float(flat.max()) <= floor + 1e-6, "a flat wall got more than the masking floor's share"
    # Without boxes there is nothing to measure against: eps everywhere, as before.
    plain = PGD(eps=16, steps=6, max_dssim=None, background_eps=8)(model, [PhotoFaces(photo, landmarks, seed=1)])[0]
    uncapped = PGD(eps=16, steps=6, max_dssim=None)(model, [PhotoFaces(photo, landmarks, seed=1)])[0]
    assert torch.equal(plain.photo, uncapped.photo)
    with pytest.raises(ValueError, match="background_eps"):
        PGD(background_eps=0)


@pytest.mark.parametrize("with_boxes", [True, False])
def test_face_ssim_budgets_enforced(with_boxes, tiny_embedder):
    from cloak.quality import face_quality, ssim, ssim_percentile

    model = tiny_embedder(dtype=torch.float64)
    # Low-contrast photos, like skin: the cloak shows in their local SSIM.
    photos = [PhotoFaces(0.45 + 0.1 * p.photo, p.landmarks, p.seed) for p in _photos(2)]
    if with_boxes:
        photos = [PhotoFaces(p.photo, p.landmarks, p.seed, boxes=_box(p.landmarks)) for p in photos]
    results = PGD(eps=32, steps=5, max_dssim=None, min_face_ssim_p5=0.9, min_face_ssim=0.97)(model, photos)
    unbudgeted = PGD(eps=32, steps=5, max_dssim=None)(model, photos)
    for p, r, u in zip(photos, results, unbudgeted):
        x0, y0, x1, y1 = r.box
        if with_boxes:
            quality = face_quality(p.photo, r.photo, p.boxes)
            measured, mean = quality.ssim_p5, quality.ssim
            assert float(face_quality(p.photo, u.photo, p.boxes).ssim_p5[0]) < 0.9, "the test budget does not bind"
        else:
            measured = ssim_percentile(r.photo[:, y0:y1, x0:x1], p.photo[:, y0:y1, x0:x1])
            mean = ssim(r.photo[:, y0:y1, x0:x1], p.photo[:, y0:y1, x0:x1])
        assert float(measured.min()) >= 0.9 - 1e-9
        assert float(mean.min()) >= 0.97 - 1e-9
        assert (r.photo - p.photo).abs().max() > 0, "the budget left no cloak at all"


def _box(landmarks: torch.Tensor) -> torch.Tensor:
    """A face box around synthetic landmarks, as a detector would give it."""
    lo, hi = landmarks.amin(1), landmarks.amax(1)
    size = hi - lo
    return torch.cat([lo - 0.3 * size, hi + 0.3 * size], dim=1)


@pytest.mark.gpu
def test_cuda_matches_cpu(tiny_embedder):
    model = tiny_embedder(dtype=torch.float64)
    photos = _photos(2)
    cpu = PGD(eps=8, steps=3, max_dssim=None)(model, photos)
    on_gpu = [PhotoFaces(p.photo.cuda(), p.landmarks.cuda(), p.seed) for p in photos]
    gpu = PGD(eps=8, steps=3, max_dssim=None)(model.cuda(), on_gpu)
    for c, g in zip(cpu, gpu):
        assert g.photo.device.type == "cuda"
        # Sign steps can flip on near-zero gradients; most pixels must agree.
        assert (c.photo - g.photo.cpu()).abs().lt(1e-6).float().mean() > 0.95


def _dtype_log(model: torch.nn.Module) -> list[torch.dtype]:
    """The dtypes of the first convolution's outputs, one per forward pass of ``model``."""
    seen: list[torch.dtype] = []
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda _module, _inputs, output: seen.append(output.dtype))
    return seen


@pytest.mark.parametrize("native", [True, False])
def test_bfloat16_members_run_in_bfloat16_only_where_native_and_only_while_optimising(
    native, tiny_embedder, monkeypatch
):
    """Named members see bfloat16 in the loop's steps where the device has it; references and final losses stay float32."""
    monkeypatch.setattr("cloak.device.native_bfloat16", lambda device: native)
    a, b = tiny_embedder(seed=0), tiny_embedder(seed=1)
    seen_a, seen_b = _dtype_log(a), _dtype_log(b)
    ens = Ensemble({"a": a, "b": b})
    photos = _photos(2, dtype=torch.float32)
    steps = 4
    fast = LowKey(eps=8, steps=steps, max_dssim=None, bfloat16_members=["a", "not_a_member"])(ens, photos)
    # a's passes: the clean references of its two views (sharp, smoothed), one view each
    # step, then the final losses of both views.
    expected = torch.bfloat16 if native else torch.float32
    assert seen_a == [torch.float32] * 2 + [expected] * steps + [torch.float32] * 2
    assert set(seen_b) == {torch.float32}
    plain = LowKey(eps=8, steps=steps, max_dssim=None)(ens, photos)
    for p, f, q in zip(photos, fast, plain):
        assert 0 < (f.photo - p.photo).abs().max() <= 8 / 255 + 1e-6
        assert f.photo.min() >= 0 and f.photo.max() <= 1
        # Emulated or native, bfloat16 changes the cloak as float rounding would; without it nothing changes.
        assert torch.equal(f.photo, q.photo) is not native


def test_shading_limit_holds_on_every_face(tiny_embedder):
    """max_shading: every face's shading figure ends at or under the limit, which binds, with a cloak left."""
    from cloak.shading import shading

    model = tiny_embedder(dtype=torch.float64)
    photos = [PhotoFaces(0.45 + 0.1 * p.photo, p.landmarks, p.seed, boxes=_box(p.landmarks)) for p in _photos(2)]
    kw = {"eps": 16, "steps": 5, "max_dssim": None, "perturbation_sigma": 1.0}
    limited = PGD(max_shading=0.5, **kw)(model, photos)
    free = PGD(**kw)(model, photos)
    for p, r, u in zip(photos, limited, free):
        assert float(shading(p.photo, u.photo, p.boxes).max()) > 0.5, "the test limit does not bind"
        assert float(shading(p.photo, r.photo, p.boxes).max()) <= 0.5
        assert (r.photo - p.photo).abs().max() > 0, "the limit left no cloak at all"


def test_shading_peak_limit_holds_on_every_face(tiny_embedder):
    """max_shading_peak: every face's shading map ends at or under the limit at every pixel, with a cloak left."""
    from cloak.shading import shading_peak

    model = tiny_embedder(dtype=torch.float64)
    photos = [PhotoFaces(0.45 + 0.1 * p.photo, p.landmarks, p.seed, boxes=_box(p.landmarks)) for p in _photos(2)]
    kw = {"eps": 16, "steps": 5, "max_dssim": None, "perturbation_sigma": 1.0}
    limited = PGD(max_shading_peak=0.8, shading_peak_weight=0.1, **kw)(model, photos)
    free = PGD(**kw)(model, photos)
    for p, r, u in zip(photos, limited, free):
        assert float(shading_peak(p.photo, u.photo, p.boxes).max()) > 0.8, "the test limit does not bind"
        assert float(shading_peak(p.photo, r.photo, p.boxes).max()) <= 0.8
        assert (r.photo - p.photo).abs().max() > 0, "the limit left no cloak at all"
