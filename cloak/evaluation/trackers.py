"""Trackers on face embeddings and the protection rates they measure.

Two protocols, both on embeddings from some face recognizer:

* **Classifier** (Fawkes, FaceCure): the tracker trains a classifier on every
  identity's training photos, where the users' shared photos are replaced by
  their cloaked versions, then classifies the users' clean photos. Protection
  is ``1 - accuracy``. The classifier is a 1-nearest-neighbour on cosine
  distance (``"knn1"``) or a multinomial logistic regression (``"logreg"``).
* **Rank-1 identification** (LowKey): the gallery holds the users' cloaked
  photos and everyone else's clean photos (distractors); each of a user's
  clean photos is a probe, identified as the label of its nearest gallery
  embedding (cosine). Protection is ``1 - rank-1 rate``.

Rank-1 identification and the ``"knn1"`` classifier are the same computation;
the protocols differ in what the caller puts in the gallery / training set.
Embeddings are always L2-normalised first. Labels may be ints or strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

#: Embeddings as a torch tensor or numpy array of shape ``[N, D]``.
Embeddings = torch.Tensor | np.ndarray
#: One label per embedding: a sequence, numpy array or 1-D tensor of ints or strings.
Labels = Sequence[int] | Sequence[str] | np.ndarray | torch.Tensor

Classifier = Literal["knn1", "logreg"]
CLASSIFIERS: tuple[str, ...] = ("knn1", "logreg")


def _embeddings(x: Embeddings, name: str) -> np.ndarray:
    """``[N, D]`` float64, L2-normalised rows."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must have shape [N, D] with N, D >= 1, got {list(x.shape)}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _labels(y: Labels, n: int | None, name: str) -> np.ndarray:
    """A 1-D numpy array of labels, ``n`` of them unless ``n`` is None."""
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    y = np.asarray(y)
    if y.ndim != 1 or (n is not None and len(y) != n):
        expected = "1-D" if n is None else f"1-D with one label per embedding ({n})"
        raise ValueError(f"{name} must be {expected}, got shape {list(y.shape)}")
    return y


def _outcomes(predicted: Labels, true: Labels) -> tuple[np.ndarray, np.ndarray]:
    """Checked ``(true, correct)`` arrays of the same non-zero length."""
    true = _labels(true, None, "true")
    if len(true) == 0:
        raise ValueError("no photos to evaluate (empty labels)")
    predicted = _labels(predicted, len(true), "predicted")
    return true, predicted == true


def _pair(emb: Embeddings, labels: Labels, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Normalised ``<name>_emb`` and its matching ``<name>_labels``."""
    x = _embeddings(emb, f"{name}_emb")
    return x, _labels(labels, len(x), f"{name}_labels")


def nearest_label(gallery_emb: Embeddings, gallery_labels: Labels, probe_emb: Embeddings) -> np.ndarray:
    """The label of each probe's nearest gallery embedding by cosine similarity.

    Ties go to the first gallery entry among the tied.

    Args:
        gallery_emb: gallery embeddings.
        gallery_labels: one label per gallery embedding.
        probe_emb: probe embeddings.

    Returns:
        The predicted label of each probe.

    Raises:
        ValueError: on mismatched shapes or non-finite embeddings.

    Shape:
        - gallery_emb: :math:`(N, D)`
        - gallery_labels: :math:`(N,)`
        - probe_emb: :math:`(M, D)`
        - Output: :math:`(M,)`
    """
    gallery, labels = _pair(gallery_emb, gallery_labels, "gallery")
    probes = _embeddings(probe_emb, "probe_emb")
    if probes.shape[1] != gallery.shape[1]:
        raise ValueError(f"probe and gallery embeddings differ in dimension: {probes.shape[1]} vs {gallery.shape[1]}")
    return labels[np.argmax(probes @ gallery.T, axis=1)]


def fit_predict(
    train_emb: Embeddings,
    train_labels: Labels,
    test_emb: Embeddings,
    classifier: Classifier = "knn1",
) -> np.ndarray:
    """Trains a tracker's classifier on ``train`` and predicts the label of each ``test`` embedding.

    ``"knn1"`` is :func:`nearest_label` (cosine). ``"logreg"`` is scikit-learn's
    multinomial logistic regression (L-BFGS, ``C = 1``, up to 2000 iterations)
    on L2-normalised, then standardised embeddings; it is deterministic.

    Args:
        train_emb: training embeddings.
        train_labels: one label per training embedding.
        test_emb: test embeddings.
        classifier: ``"knn1"`` or ``"logreg"``.

    Returns:
        The predicted label of each test embedding.

    Raises:
        ValueError: on an unknown classifier, mismatched shapes, or fewer than
            two training identities for ``"logreg"``.

    Shape:
        - train_emb: :math:`(N, D)`
        - train_labels: :math:`(N,)`
        - test_emb: :math:`(M, D)`
        - Output: :math:`(M,)`
    """
    if classifier not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {classifier!r}; valid: {', '.join(CLASSIFIERS)}")
    if classifier == "knn1":
        return nearest_label(train_emb, train_labels, test_emb)
    train, labels = _pair(train_emb, train_labels, "train")
    test = _embeddings(test_emb, "test_emb")
    if test.shape[1] != train.shape[1]:
        raise ValueError(f"test and train embeddings differ in dimension: {test.shape[1]} vs {train.shape[1]}")
    if len(np.unique(labels)) < 2:
        raise ValueError("logistic regression needs training photos of at least two identities")
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, random_state=0))
    model.fit(train, labels)
    return model.predict(test)


def protection_rate(predicted: Labels, true: Labels) -> float:
    """Fraction of photos the tracker got wrong: ``1 - accuracy``.

    Args:
        predicted: predicted labels.
        true: true labels.

    Returns:
        The protection rate in ``[0, 1]``.

    Raises:
        ValueError: if the labels are empty, not 1-D, or differ in length.

    Shape:
        - predicted: :math:`(M,)`, at least one
        - true: :math:`(M,)`
    """
    _, correct = _outcomes(predicted, true)
    return float(1.0 - correct.mean())


def protection_by_label(predicted: Labels, true: Labels) -> dict[int | str, float]:
    """Protection rate of each true label (each user) separately.

    Args:
        predicted: predicted labels.
        true: true labels.

    Returns:
        True label -> ``1 - accuracy`` on its photos, labels sorted, as Python scalars.

    Raises:
        ValueError: if the labels are empty, not 1-D, or differ in length.

    Shape:
        - predicted: :math:`(M,)`, at least one
        - true: :math:`(M,)`
    """
    true, correct = _outcomes(predicted, true)
    return {label.item(): float(1.0 - correct[true == label].mean()) for label in np.unique(true)}


def classifier_protection(
    train_emb: Embeddings,
    train_labels: Labels,
    test_emb: Embeddings,
    test_labels: Labels,
    classifier: Classifier = "knn1",
) -> float:
    """Protection against a tracker that trains a classifier on the shared photos.

    The caller builds the training set from every identity's training photos,
    with the users' shared photos replaced by their cloaked versions, and the
    test set from the users' clean photos. For a per-user breakdown use
    :func:`fit_predict` and :func:`protection_by_label`.

    Args:
        train_emb: training embeddings (cloaked for the users, clean for the rest).
        train_labels: one label per training embedding.
        test_emb: embeddings of the users' clean photos.
        test_labels: the users' labels, one per test embedding.
        classifier: ``"knn1"`` (1-NN, cosine) or ``"logreg"`` (logistic regression).

    Returns:
        ``1 - accuracy`` on the test photos, in ``[0, 1]``.

    Raises:
        ValueError: as :func:`fit_predict`, or when the test labels do not match the test embeddings.

    Shape:
        - train_emb: :math:`(N, D)`
        - train_labels: :math:`(N,)`
        - test_emb: :math:`(M, D)`
        - test_labels: :math:`(M,)`
    """
    test_labels = _labels(test_labels, len(_embeddings(test_emb, "test_emb")), "test_labels")
    return protection_rate(fit_predict(train_emb, train_labels, test_emb, classifier), test_labels)


def rank1_protection(
    gallery_emb: Embeddings,
    gallery_labels: Labels,
    probe_emb: Embeddings,
    probe_labels: Labels,
) -> float:
    """Protection against rank-1 identification (LowKey's gallery/probe protocol).

    The gallery holds the users' cloaked photos plus clean photos of everyone
    else (distractors); the probes are the users' clean photos. A probe is
    identified when its nearest gallery embedding (cosine) carries its label.
    For a per-user breakdown use :func:`nearest_label` and :func:`protection_by_label`.

    Args:
        gallery_emb: gallery embeddings.
        gallery_labels: one label per gallery embedding.
        probe_emb: probe embeddings.
        probe_labels: one label per probe embedding.

    Returns:
        ``1 -`` the rank-1 identification rate, in ``[0, 1]``.

    Raises:
        ValueError: on mismatched shapes or non-finite embeddings.

    Shape:
        - gallery_emb: :math:`(N, D)`
        - gallery_labels: :math:`(N,)`
        - probe_emb: :math:`(M, D)`
        - probe_labels: :math:`(M,)`
    """
    probe_labels = _labels(probe_labels, len(_embeddings(probe_emb, "probe_emb")), "probe_labels")
    return protection_rate(nearest_label(gallery_emb, gallery_labels, probe_emb), probe_labels)
