"""A person's cloak reused within a run (cloak/cloaking/reuse.py), on tiny random-weight models."""

import numpy as np
import pytest
import torch
from conftest import tiny_face

from cloak.attacks import LowKey, PhotoFaces
from cloak.attacks.budget import FaceBudget
from cloak.cloaking.groups import cloak_photos
from cloak.cloaking.reuse import IdentityMemory, descriptors, same_person
from cloak.models.ensemble import as_ensemble
from cloak.photos.pixels import to_tensor

EPS = 8.0


def _model(tiny_embedder, threshold: float = 0.5):
    model = tiny_embedder(seed=0)
    model.cosine_threshold = threshold  # the tiny model has no threshold of its own
    return model


def _photo(seed: int, size=(120, 110)) -> np.ndarray:
    """A smooth random photo (a face-sized blob of texture the tiny model reads)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, size[0] // 8, size[1] // 8, generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)[0]
    return (smooth.permute(1, 2, 0).numpy() * 200 + 25).round().astype(np.uint8)


def _attack(**kw) -> LowKey:
    kw.setdefault("steps", 12)
    kw.setdefault("warm_steps", 4)
    return LowKey(eps=EPS, max_dssim=None, min_face_ssim=0.9, min_face_ssim_p5=0.6, max_shading=3.0, **kw)


def _cloak(photos, faces, attack, model, memory):
    per_face: list = []
    out = cloak_photos(photos, faces, attack, model, memory=memory, face_steps=per_face)
    return out, per_face


def test_a_later_face_of_the_same_person_starts_from_their_cloak(tiny_embedder):
    model, attack = _model(tiny_embedder), _attack()
    first = _photo(0)
    again = np.clip(first.astype(int) + np.random.default_rng(1).integers(-2, 3, first.shape), 0, 255).astype(np.uint8)
    face = tiny_face(20, 15)
    memory = IdentityMemory()
    _, steps_a = _cloak([first], [[face]], attack, model, memory)
    cloaked, steps_b = _cloak([again], [[face]], attack, model, memory)
    assert (steps_a[0][0].steps, steps_a[0][0].warm) == (attack.steps, False)
    assert (steps_b[0][0].steps, steps_b[0][0].warm) == (attack.warm_steps, True)
    assert len(memory.people) == 1
    # The warm start is not the zero start: without the memory the same photo gets another cloak.
    alone, _ = _cloak([again], [[face]], attack, model, None)
    assert not np.array_equal(cloaked[0], alone[0])


def test_a_face_of_the_same_person_in_the_same_batch_waits_for_the_first(tiny_embedder):
    model, attack = _model(tiny_embedder), _attack()
    photo = _photo(0)
    memory = IdentityMemory()
    _, steps = _cloak([photo, photo.copy(), _photo(5)], [[tiny_face(20, 15)]] * 3, attack, model, memory)
    warm = [s[0].warm for s in steps]
    assert warm[:2] == [False, True], "the second copy of a face should start from the first one's cloak"


def test_a_warm_started_cloak_respects_every_budget(tiny_embedder):
    model, attack = _model(tiny_embedder), _attack(warm_steps=6)
    photo, face = _photo(2), tiny_face(20, 15)
    memory = IdentityMemory()
    _cloak([photo], [[face]], attack, model, memory)
    # A stronger start than the budget allows: the warm face must still be shrunk into every limit.
    for person in memory.people.values():
        person.variable = person.variable.sign() * attack.eps
    cloaked, steps = _cloak([photo.copy()], [[face]], attack, model, memory)
    assert steps[0][0].warm
    assert np.abs(cloaked[0].astype(int) - photo.astype(int)).max() <= EPS, "a warm-started cloak broke L-inf"
    clean, adv = to_tensor(photo)[None].double(), to_tensor(cloaked[0])[None].double()
    boxes = torch.as_tensor(face.box, dtype=torch.float64)[None]
    budget = FaceBudget(boxes, photo.shape[:2], None, 0.6, min_face_ssim=0.9, max_shading=3.0)
    assert budget.within(adv, clean), "a warm-started cloak broke a face limit"


def test_another_person_never_starts_from_someone_elses_cloak(tiny_embedder):
    model, attack = _model(tiny_embedder, threshold=0.99), _attack()
    anna, bert = _photo(0), _photo(7)
    face = tiny_face(20, 15)
    ensemble = as_ensemble(model)
    a, b = (
        descriptors(ensemble, PhotoFaces(to_tensor(p), torch.as_tensor(face.landmarks[None]).float()))
        for p in (anna, bert)
    )
    assert same_person(a, b, {n: m for n, m, _ in ensemble.items()}) > 1, (
        "the test needs two people the model tells apart"
    )
    memory = IdentityMemory()
    _cloak([anna], [[face]], attack, model, memory)
    cloaked, steps = _cloak([bert], [[face]], attack, model, memory)
    alone, _ = _cloak([bert], [[face]], attack, model, None)
    assert not steps[0][0].warm and steps[0][0].steps == attack.steps
    assert np.array_equal(cloaked[0], alone[0]), "a stranger's cloak must be exactly the one from zero"
    assert len(memory.people) == 2


def test_without_reuse_every_face_starts_as_it_would_alone(tiny_embedder):
    model, attack = _model(tiny_embedder), _attack()
    photos = [_photo(0), _photo(0), _photo(3)]
    faces = [[tiny_face(20, 15)]] * 3
    plain, steps = _cloak(photos, faces, attack, model, None)
    assert all(not s[0].warm and s[0].steps == attack.steps for s in steps)
    assert np.array_equal(plain[0], plain[1]), "without reuse the same photo gets the same cloak"
    for p, f, c in zip(photos, faces, plain):
        single, _ = _cloak([p], [f], attack, model, None)
        assert np.array_equal(single[0], c), "without reuse a photo's cloak depends on the others"


def test_faces_cloaked_together_are_not_reused(tiny_embedder):
    model, attack = _model(tiny_embedder), _attack()
    photo = _photo(0, size=(120, 200))
    pair = [tiny_face(10, 15), tiny_face(60, 15)]  # close: one region, cloaked together
    memory = IdentityMemory()
    _, steps = _cloak([photo, photo.copy()], [pair, pair], attack, model, memory)
    assert not any(s.warm for faces in steps for s in faces)
    assert not memory.people


def test_the_frame_carries_a_cloak_back_to_the_same_face(tiny_embedder):
    """Into the aligned frame and back out onto the same face: the same cloak, up to interpolation."""
    model = _model(tiny_embedder)
    photo, face = _photo(0), tiny_face(20, 15)
    job = PhotoFaces(to_tensor(photo), torch.as_tensor(face.landmarks[None]).float())
    result = _attack(steps=3)(model, [job])[0]
    memory = IdentityMemory()
    key = memory.add(descriptors(as_ensemble(model), job))
    memory.keep(key, job, result, memory.people[key].descriptors[0])
    start = memory.start(key, job)
    x0, y0, x1, y1 = result.box
    inner = (slice(None), slice(y0 + 4, y1 - 4), slice(x0 + 4, x1 - 4))
    back = start[inner]
    kept = torch.zeros_like(start)
    kept[:, y0:y1, x0:x1] = result.variable[0]
    err = (back - kept[inner]).abs().mean() / kept[inner].abs().mean()
    assert err < 0.35, f"round trip through the frame lost the cloak (relative error {err:.2f})"


def test_memory_forgets_the_least_recently_seen_person():
    memory = IdentityMemory(max_people=2)
    keys = [memory.add({"m": torch.full((4,), float(i))}) for i in range(3)]
    assert list(memory.people) == keys[1:]


@pytest.mark.parametrize("warm_steps", [-1])
def test_warm_steps_must_not_be_negative(warm_steps):
    with pytest.raises(ValueError, match="warm_steps"):
        LowKey(warm_steps=warm_steps)
