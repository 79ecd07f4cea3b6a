"""The learned first guess (cloak/cloaking/generator.py, experiments/generator.py) on tiny inputs."""

import numpy as np
import torch
from conftest import tiny_face

from cloak.attacks import LowKey
from cloak.cloaking.generator import FrameGenerator, frame_faces, generator_start, load_generator
from cloak.cloaking.reuse import FRAME_SIZE
from cloak.models.ensemble import as_ensemble
from experiments.generator import batch_loss, save_checkpoint
from experiments.generator_faces import FacePhoto, prepare

EPS = 24 / 255


def _trained_like(seed: int = 0) -> FrameGenerator:
    """A generator whose output layer is scaled up, so its output reaches the bound."""
    torch.manual_seed(seed)
    generator = FrameGenerator(EPS, width=8)
    with torch.no_grad():
        generator.out.weight.mul_(200)
        generator.out.bias.normal_(0, 5)
    return generator.eval()


def test_output_is_the_frame_and_never_past_eps():
    generator = _trained_like()
    with torch.no_grad():
        u = generator(torch.rand(2, 3, FRAME_SIZE // 2, FRAME_SIZE // 2))
    assert u.shape == (2, 3, FRAME_SIZE, FRAME_SIZE)
    assert float(u.abs().max()) <= EPS + 1e-7
    assert float(u.abs().max()) > EPS / 2  # the bound is reached, not just respected by a tiny output


def test_a_fresh_generator_starts_near_zero():
    torch.manual_seed(0)
    with torch.no_grad():
        u = FrameGenerator(EPS, width=8)(torch.rand(1, 3, FRAME_SIZE // 2, FRAME_SIZE // 2))
    assert float(u.abs().max()) < EPS / 3


def test_the_start_lies_on_the_face_in_photo_pixels():
    generator = _trained_like()
    photo = torch.rand(3, 300, 260)
    face = tiny_face(60, 80, scale=4.0)
    start = generator_start(generator, photo, torch.as_tensor(face.landmarks, dtype=torch.float32))
    assert start.shape == (3, 300, 260)
    assert float(start.abs().max()) <= EPS + 1e-6
    x0, y0, x1, y1 = face.box
    assert float(start[:, int(y0) : int(y1), int(x0) : int(x1)].abs().mean()) > 0
    # The frame is twice the tight crop: far from the face the start is zero.
    assert float(start[:, 260:, :].abs().max()) == 0 and float(start[:, :, 230:].abs().max()) == 0


def test_the_frame_of_a_face_is_its_aligned_crop():
    photo = torch.zeros(1, 3, 200, 200)
    photo[:, :, 100:, :] = 1  # bright lower half
    landmarks = torch.as_tensor(tiny_face(60, 50, scale=4.0).landmarks, dtype=torch.float32)[None]
    frame = frame_faces(photo, landmarks)
    assert frame.shape == (1, 3, FRAME_SIZE // 2, FRAME_SIZE // 2)
    assert float(frame[..., :10, :].mean()) < 0.1 < 0.9 < float(frame[..., -10:, 40:70].mean())


def test_a_checkpoint_loads_back(tmp_path):
    generator = _trained_like()
    save_checkpoint(generator, tmp_path / "g.pt", {"epochs": []})
    loaded = load_generator(str(tmp_path / "g.pt"))
    x = torch.rand(1, 3, FRAME_SIZE // 2, FRAME_SIZE // 2)
    assert torch.allclose(loaded(x), generator(x))
    assert loaded.eps == generator.eps and loaded.width == 8


def _cases(attack, model):
    views = attack.views(as_ensemble(model))
    rng = np.random.default_rng(0)
    faces = []
    for k in range(2):
        face = tiny_face(30 + 10 * k, 30, scale=3.0)
        rgb = rng.integers(30, 220, size=(120, 110, 3), dtype=np.uint8)
        faces.append(FacePhoto("p", f"p{k}", rgb, face.landmarks.astype(np.float32), face.box))
    return views, [prepare(attack, views, f, 0) for f in faces]


def test_training_steps_lower_the_attack_loss_on_a_tiny_model(tiny_embedder):
    torch.manual_seed(0)
    attack = LowKey(eps=24, max_dssim=None, smooth_prob=0.0, steps=4)
    views, cases = _cases(attack, tiny_embedder(seed=0))
    generator = FrameGenerator(attack.eps, width=8)
    optimiser = torch.optim.Adam(generator.parameters(), lr=1e-2)
    losses = []
    for step in range(10):
        loss, penalty = batch_loss(attack, views, generator, cases, torch.Generator().manual_seed(step))
        optimiser.zero_grad()
        (loss + penalty).backward()
        optimiser.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0]


def test_a_cloak_past_the_face_budget_is_penalised_with_finite_gradients(tiny_embedder):
    attack = LowKey(eps=24, max_dssim=None, min_face_ssim=0.99, max_shading=0.5, steps=4)
    views, cases = _cases(attack, tiny_embedder(seed=0))
    generator = _trained_like().train()
    loss, penalty = batch_loss(attack, views, generator, cases, torch.Generator().manual_seed(0))
    assert float(penalty) > 0
    (loss + penalty).backward()
    assert all(torch.isfinite(p.grad).all() for p in generator.parameters())
