"""Detecting cloaked photos: can a tracker tell a cloaked photo from a clean one?

FaceCure (Radiya-Dixit et al., ICLR 2022) found a simple detector telling
Fawkes/LowKey-cloaked photos from clean ones with 99.8% precision and recall.
A detected photo can be dropped from training or handled by an adapted model,
so detectability is part of a cloak's honest evaluation. Two detectors, each
trained on photos the tracker cloaked itself (clean label 0, cloaked label 1)
and scored on the users' photos:

* :class:`ResidualDetector`: logistic regression on statistics of each
  photo's high-pass residual (second differences, per channel), inside the
  face box and outside it, and their ratios: a cloak adds high-frequency
  energy where the face is and nowhere else.
* :class:`CNNDetector`: a small CNN on a window of the face at native
  resolution, behind a fixed high-pass layer (as steganalysis detectors are built).

:func:`detection_score` gives the ROC AUC and the precision and recall at the
threshold of best accuracy; :func:`detection_scores` trains and scores every detector
of the ``detectability`` config after each transform.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from cloak.detection import Face
from cloak.evaluation.adaptive.results import DetectionScore
from cloak.imaging.platform import PlatformTransform, apply_transform

log = logging.getLogger(__name__)

#: The detectors of ``detectability.detectors``.
DETECTORS = ("residual_logreg", "cnn")

#: A face box ``(x1, y1, x2, y2)`` in pixels.
Box = Sequence[float] | np.ndarray


class Detector(Protocol):
    """Scores photos: higher means more likely cloaked."""

    name: str

    def fit(self, photos: Sequence[np.ndarray], boxes: Sequence[Box], cloaked: Sequence[bool]) -> Detector:
        """Trains on ``photos`` (``[H, W, 3]`` uint8 RGB) with their face boxes and labels; returns itself."""
        ...

    def scores(self, photos: Sequence[np.ndarray], boxes: Sequence[Box]) -> np.ndarray:
        """``[N]`` cloak scores."""
        ...


def _box_slices(shape: tuple[int, ...], box: Box) -> tuple[slice, slice]:
    """Rows and columns of ``box`` clipped to a photo of ``shape``, at least 4 pixels each way."""
    h, w = shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    c0, c1 = int(np.clip(np.floor(x1), 0, max(0, w - 4))), int(np.clip(np.ceil(x2), 0, w))
    r0, r1 = int(np.clip(np.floor(y1), 0, max(0, h - 4))), int(np.clip(np.ceil(y2), 0, h))
    return slice(r0, max(r1, r0 + 4)), slice(c0, max(c1, c0 + 4))


def _residuals(photo: np.ndarray) -> np.ndarray:
    """``[2, H, W, 3]`` second differences along rows and columns (zero on the border)."""
    x = np.asarray(photo, dtype=np.float32)
    out = np.zeros((2, *x.shape), np.float32)
    out[0, :, 1:-1] = 2 * x[:, 1:-1] - x[:, :-2] - x[:, 2:]
    out[1, 1:-1, :] = 2 * x[1:-1, :] - x[:-2, :] - x[2:, :]
    return out


def _region_stats(r: np.ndarray) -> np.ndarray:
    """Per channel: log mean |r|, log std, log kurtosis, fractions of |r| == 0 and <= 2, neighbour correlation."""
    feats = []
    for c in range(r.shape[-1]):
        v = r[..., c]
        a = np.abs(v)
        std = float(v.std()) + 1e-3
        kurt = float(((v - v.mean()) ** 4).mean()) / std**4
        left, right = v[:, :, :-1].ravel(), v[:, :, 1:].ravel()
        corr = float(np.corrcoef(left, right)[0, 1]) if left.std() > 0 and right.std() > 0 else 0.0
        feats += [np.log(a.mean() + 1e-3), np.log(std), np.log(kurt + 1e-3), (a < 0.5).mean(), (a <= 2).mean(), corr]
    return np.asarray(feats, dtype=np.float64)


def residual_features(photo: np.ndarray, box: Box) -> np.ndarray:
    """High-pass residual statistics of a photo inside its face box, outside it, and their differences.

    Args:
        photo: ``[H, W, 3]`` uint8 RGB.
        box: the face box ``(x1, y1, x2, y2)``.

    Returns:
        ``[54]`` features (18 for the face, 18 for the rest of the photo, 18 differences).
    """
    r = _residuals(photo)
    rows, cols = _box_slices(photo.shape, box)
    face = r[:, rows, cols]
    mask = np.ones(photo.shape[:2], bool)
    mask[rows, cols] = False
    rest = r[:, mask][:, None] if mask.sum() >= 16 else face
    f, b = _region_stats(face), _region_stats(rest)
    return np.concatenate([f, b, f - b])


class ResidualDetector:
    """Logistic regression (standardised features, ``C``) on :func:`residual_features`."""

    name = "residual_logreg"

    def __init__(self, C: float = 1.0) -> None:
        self.model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000, random_state=0))

    def fit(self, photos: Sequence[np.ndarray], boxes: Sequence[Box], cloaked: Sequence[bool]) -> ResidualDetector:
        self.model.fit(np.stack([residual_features(p, b) for p, b in zip(photos, boxes)]), np.asarray(cloaked, int))
        return self

    def scores(self, photos: Sequence[np.ndarray], boxes: Sequence[Box]) -> np.ndarray:
        return self.model.predict_proba(np.stack([residual_features(p, b) for p, b in zip(photos, boxes)]))[:, 1]


def face_window(photo: np.ndarray, box: Box, size: int = 64) -> np.ndarray:
    """A ``size`` x ``size`` window of ``photo`` centred on the box, at native resolution (edge-padded).

    Native resolution keeps the cloak's high frequencies that resizing would blur.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy = round((x1 + x2) / 2), round((y1 + y2) / 2)
    half = size // 2
    pad = ((size, size), (size, size), (0, 0))
    padded = np.pad(np.asarray(photo, dtype=np.uint8), pad, mode="edge")
    top, left = cy - half + size, cx - half + size
    return padded[top : top + size, left : left + size]


class _HighPassCNN(nn.Module):
    """Fixed high-pass (pixel minus its 3x3 mean), then three convolutions, global pooling and a logit."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, stride=2),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2),
            nn.ReLU(),
        )
        self.logit = nn.Linear(4 * width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x in 0..255 units; the residual is a few units for a cloak.
        residual = (x - F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)) / 4.0
        h = self.features(residual)
        return self.logit(torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)).squeeze(1)


class CNNDetector:
    """A small CNN on native-resolution face windows (:func:`face_window`), trained with Adam.

    Args:
        window: side of the face window in pixels.
        epochs, lr, batch_size: the training schedule.
        width: channels of the first convolution.
        seed: seeds the initialisation, the batches and the flips.
        device: where it trains.
    """

    name = "cnn"

    def __init__(
        self,
        window: int = 64,
        epochs: int = 30,
        lr: float = 1e-3,
        batch_size: int = 32,
        width: int = 16,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        self.window, self.epochs, self.lr, self.batch_size = int(window), int(epochs), float(lr), int(batch_size)
        self.seed, self.device = int(seed), torch.device(device)
        torch.manual_seed(self.seed)
        self.net = _HighPassCNN(width).to(self.device)

    def _batch(self, photos: Sequence[np.ndarray], boxes: Sequence[Box]) -> torch.Tensor:
        windows = np.stack([face_window(p, b, self.window) for p, b in zip(photos, boxes)])
        return torch.from_numpy(windows).permute(0, 3, 1, 2).float().to(self.device)

    def fit(self, photos: Sequence[np.ndarray], boxes: Sequence[Box], cloaked: Sequence[bool]) -> CNNDetector:
        x = self._batch(photos, boxes)
        y = torch.as_tensor(np.asarray(cloaked, np.float32), device=self.device)
        gen = torch.Generator().manual_seed(self.seed)
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr)
        self.net.train()
        for epoch in range(self.epochs):
            order = torch.randperm(len(x), generator=gen)
            total = 0.0
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size].to(self.device)
                xb = x[idx]
                flip = torch.rand(len(idx), generator=gen).to(self.device) < 0.5
                xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
                loss = F.binary_cross_entropy_with_logits(self.net(xb), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            if epoch == self.epochs - 1 or (epoch + 1) % 10 == 0:
                log.info("CNN detector: epoch %d/%d, loss %.4f", epoch + 1, self.epochs, total / len(x))
        self.net.eval()
        return self

    @torch.no_grad()
    def scores(self, photos: Sequence[np.ndarray], boxes: Sequence[Box]) -> np.ndarray:
        x = self._batch(photos, boxes)
        return torch.sigmoid(torch.cat([self.net(x[i : i + 64]) for i in range(0, len(x), 64)])).cpu().numpy()


def detection_score(
    detector: str, transform: str, scores: np.ndarray, cloaked: Sequence[bool], n_train: int = 0
) -> DetectionScore:
    """ROC AUC, and precision and recall at the threshold of best accuracy, of cloak scores.

    Args:
        detector: the detector's name.
        transform: the transform the photos went through.
        scores: ``[N]`` cloak scores (higher = cloaked).
        cloaked: ``[N]`` whether each photo is cloaked (both kinds must occur).
        n_train: photos the detector was trained on.

    Raises:
        ValueError: if only one kind of photo is present.
    """
    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(cloaked, dtype=bool)
    if y.all() or not y.any() or len(y) != len(scores):
        raise ValueError("need one score per photo and both cloaked and clean photos to score a detector")
    fpr, tpr, thresholds = roc_curve(y, scores)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    accuracy = (tpr * n_pos + (1 - fpr) * n_neg) / len(y)
    best = int(np.argmax(accuracy))
    predicted = scores >= thresholds[best]
    tp = int((predicted & y).sum())
    precision = tp / max(1, int(predicted.sum()))
    return DetectionScore(
        detector=detector,
        transform=transform,
        auc=float(roc_auc_score(y, scores)),
        threshold=float(min(thresholds[best], 1e9)),
        precision=float(precision),
        recall=float(tp / n_pos),
        accuracy=float(accuracy[best]),
        n_train=int(n_train),
        n_cloaked=n_pos,
        n_clean=n_neg,
        fpr=[float(v) for v in fpr],
        tpr=[float(v) for v in tpr],
    )


#: Photos, their face boxes and whether each is cloaked.
Labelled = tuple[list[np.ndarray], list[Box], list[bool]]


def labelled_pairs(
    originals: Sequence[np.ndarray], cloaked: Sequence[np.ndarray], faces: Sequence[list[Face]]
) -> Labelled:
    """Each photo with a face clean, then each cloaked, with its first face's box and its label."""
    rows = [i for i, f in enumerate(faces) if f]
    both = [originals[i] for i in rows] + [cloaked[i] for i in rows]
    boxes = [faces[i][0].box for i in rows] * 2
    return both, boxes, [False] * len(rows) + [True] * len(rows)


def build_detector(name: str, opts: DictConfig, seed: int, device: torch.device | str) -> Detector:
    """The detector ``name`` of :data:`DETECTORS` with its settings in ``opts`` (the ``detectability`` config)."""
    if name == "residual_logreg":
        return ResidualDetector(C=float(opts.logreg_C))
    cnn = opts.cnn
    return CNNDetector(
        window=int(cnn.window),
        epochs=int(cnn.epochs),
        lr=float(cnn.lr),
        batch_size=int(cnn.batch_size),
        seed=seed,
        device=device,
    )


def detection_scores(
    opts: DictConfig,
    transforms: Mapping[str, PlatformTransform],
    train: Labelled,
    test: Labelled,
    seed: int,
    device: torch.device | str,
) -> list[DetectionScore]:
    """Each detector of ``opts.detectors`` trained on ``train`` and scored on ``test``, after each transform."""
    out = []
    for label, transform in transforms.items():
        train_photos = train[0] if label == "none" else apply_transform(train[0], transform)
        test_photos = test[0] if label == "none" else apply_transform(test[0], transform)
        for name in opts.detectors:
            t0 = time.perf_counter()
            detector = build_detector(str(name), opts, seed, device).fit(train_photos, train[1], train[2])
            score = detection_score(
                str(name), label, detector.scores(test_photos, test[1]), test[2], n_train=len(train_photos)
            )
            out.append(score)
            log.info(
                "Detector %s [%s]: AUC %.3f, precision %.2f, recall %.2f (%.0f s)",
                name,
                label,
                score.auc,
                score.precision,
                score.recall,
                time.perf_counter() - t0,
            )
    return out
