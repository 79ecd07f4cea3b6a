"""Shared fixtures: the optional lfw-dev face data, the public-domain demo face, a FaceNet weights file."""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def altered_copy(source: Path, copy: Path) -> Path:
    """``copy``: ``source`` with one byte in its middle inverted (a corrupt or tampered weight file)."""
    import shutil

    shutil.copyfile(source, copy)
    middle = copy.stat().st_size // 2
    with open(copy, "r+b") as fh:
        fh.seek(middle)
        byte = fh.read(1)
        fh.seek(middle)
        fh.write(bytes([byte[0] ^ 0xFF]))
    return copy


def lfw_dev_path() -> Path:
    """Where lfw-dev lives: ``$CLOAK_LFW_DEV`` or ``../shared/data/lfw-dev`` beside the repo."""
    return Path(os.environ.get("CLOAK_LFW_DEV", REPO_ROOT.parent / "shared" / "data" / "lfw-dev"))


def first_lfw_photos(count: int) -> list[np.ndarray]:
    """The first photo of each of the first ``count`` lfw-dev identities (RGB); none without lfw-dev."""
    from cloak.photos import load_photo

    root = lfw_dev_path()
    if not root.is_dir():
        return []
    folders = sorted(p for p in root.iterdir() if p.is_dir())[:count]
    return [load_photo(sorted(f.glob("*.jpg"))[0]).rgb for f in folders]


def mtcnn_crops(photos: list[np.ndarray], template, size: tuple[int, int]):
    """``[N, 3, h, w]``: each photo's first face, found by our MTCNN and aligned onto ``template``."""
    import torch

    from cloak.alignment import align_faces
    from cloak.detection import FaceDetector
    from cloak.photos.pixels import to_tensor

    detector = FaceDetector(device="cpu")
    crops = []
    for photo in photos:
        found = detector.detect(photo)
        assert found, "MTCNN found no face in a test photo"
        lm = torch.as_tensor(found[0].landmarks[None], dtype=torch.float32)
        crops.append(align_faces(to_tensor(photo), lm, template, size))
    return torch.cat(crops)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip cleanly on machines without CUDA."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def lfw_dev() -> Path:
    """The lfw-dev folder (``<Name>/<Name>_NNNN.jpg``); skips the test when it is absent."""
    path = lfw_dev_path()
    if not path.is_dir():
        pytest.skip(f"lfw-dev face data not found at {path}")
    return path


@pytest.fixture(scope="session")
def wheel_names(tmp_path_factory) -> set[str]:
    """The file names inside the project's wheel, built once per session with ``uv build``."""
    if shutil.which("uv") is None:
        pytest.skip("needs uv to build the wheel")
    out = tmp_path_factory.mktemp("wheel")
    root = Path(__file__).resolve().parents[1]
    subprocess.run(["uv", "build", "--wheel", "--out-dir", str(out)], cwd=root, check=True, capture_output=True)
    [wheel] = out.glob("cloak-*.whl")
    return set(zipfile.ZipFile(wheel).namelist())


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """The public-domain astronaut photo shipped with scikit-image, ``[512, 512, 3]`` uint8 RGB."""
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="session")
def facenet_file(tmp_path_factory) -> Path:
    """A random-weight state dict in facenet-pytorch's file format (real weights are not needed here)."""
    import torch

    from cloak.models.facenet import FacenetEmbedder

    path = tmp_path_factory.mktemp("weights") / "random-facenet.pt"
    torch.save(FacenetEmbedder().net.state_dict(), path)
    return path


class TinyEmbedder:
    """Builds small random-weight face embedders (24x20 input) for fast, exact tests."""

    @staticmethod
    def make(seed: int = 0, dtype=None):
        import torch
        from torch import nn

        from cloak.models.base import FaceEmbedder

        class _Tiny(FaceEmbedder):
            def __init__(self) -> None:
                template = torch.tensor([[6.0, 8.0], [14.0, 8.0], [10.0, 12.0], [7.0, 17.0], [13.0, 17.0]])
                super().__init__(input_size=(24, 20), template=template, embedding_dim=8)
                self.net = nn.Sequential(
                    nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(6 * 12 * 10, 8)
                )

            def embed(self, faces):
                return self.net(faces)

        torch.manual_seed(seed)
        model = _Tiny().eval()
        return model.to(dtype) if dtype is not None else model


@pytest.fixture
def tiny_embedder():
    """A factory of tiny random-weight embedders: ``tiny_embedder(seed=0, dtype=None)``."""
    return TinyEmbedder.make


def synthetic_photo(seed: int, size: tuple[int, int] = (64, 72), dtype=None):
    """A random ``[3, H, W]`` photo and landmarks of one face placed at a seeded spot (template scaled 1.5x)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    h, w = size
    photo = torch.rand(3, h, w, generator=g, dtype=torch.float64)
    template = torch.tensor([[6.0, 8.0], [14.0, 8.0], [10.0, 12.0], [7.0, 17.0], [13.0, 17.0]], dtype=torch.float64)
    offset = torch.tensor(
        [10.0 + 10 * float(torch.rand(1, generator=g)), 12.0 + 8 * float(torch.rand(1, generator=g))],
        dtype=torch.float64,
    )
    landmarks = (template * 1.5 + offset).unsqueeze(0)
    if dtype is not None:
        photo, landmarks = photo.to(dtype), landmarks.to(dtype)
    return photo, landmarks


def tiny_face(x: float, y: float, scale: float = 4.0):
    """A detected face for the tiny embedder: its landmark template scaled by ``scale`` and moved to ``(x, y)``."""
    import numpy as np

    from cloak.detection import Face

    template = np.array([[6.0, 8.0], [14.0, 8.0], [10.0, 12.0], [7.0, 17.0], [13.0, 17.0]])
    landmarks = template * scale + np.array([x, y])
    box = np.array([x + 3 * scale, y + 4 * scale, x + 17 * scale, y + 21 * scale])
    return Face(box=box, score=0.99, landmarks=landmarks)
