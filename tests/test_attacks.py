"""Invariants of every attack, on tiny random-weight models (torchattacks-style)."""

import pytest
import torch
from conftest import synthetic_photo

from cloak.attacks import PGD, Fawkes, LowKey, PhotoFaces, photo_seed
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


TRANSFER = {"momentum": {"momentum": 0.9}, "diversity": {"input_diversity": 1.0}}


@pytest.mark.parametrize("technique", sorted(TRANSFER))
def test_transfer_techniques_keep_the_invariants(technique, tiny_embedder):
    """Momentum and input diversity change the steps, never the budget, the range or batch independence."""
    model = tiny_embedder(dtype=torch.float64)
    photos = _photos(2)
    before = [p.photo.clone() for p in photos]
    attack = _attack("lowkey", transform=RobustTransform(), **TRANSFER[technique])
    batch = attack(model, photos)
    plain = _attack("lowkey", transform=RobustTransform())(model, photos)
    for p, b, r, q in zip(photos, before, batch, plain):
        assert torch.equal(p.photo, b)
        delta = r.photo - p.photo
        assert 0 < delta.abs().max() <= 8 / 255 + 1e-9
        assert r.photo.min() >= 0 and r.photo.max() <= 1
        assert not torch.equal(r.photo, q.photo), f"{technique} changed nothing"
        assert torch.allclose(attack(model, [p])[0].photo, r.photo, atol=1e-9)


def test_input_diversity_shrinks_the_face_inside_the_crop():
    from cloak.transforms import shrink_crop

    identity = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    m = shrink_crop(identity, (0.5, 1.0, 0.0), (100, 100))
    # The crop's right half shows the whole unshrunk crop: its left edge at x=50, its right at 100.
    corners = m @ torch.tensor([[50.0, 100.0], [0.0, 50.0], [1.0, 1.0]])
    assert torch.allclose(corners[0], torch.tensor([[0.0, 100.0], [0.0, 100.0]]))


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
    with pytest.raises(ValueError, match="max_dssim"):
        PGD(max_dssim=2.0)
    with pytest.raises(ValueError, match="momentum"):
        PGD(momentum=1.0)
    with pytest.raises(ValueError, match="input_diversity"):
        PGD(input_diversity=2.0)
    with pytest.raises(ValueError, match="smooth_prob"):
        LowKey(smooth_prob=1.5)
    with pytest.raises(FileNotFoundError, match="target_dir"):
        Fawkes(target_dir="/nonexistent/targets")


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
