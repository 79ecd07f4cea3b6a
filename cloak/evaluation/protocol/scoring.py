"""Scoring a tracker: how often it fails to recognise the users in their clean photos.

A tracker has embedded every photo with its own pipeline
(:mod:`cloak.evaluation.trackers.pipelines`) into :class:`Embedded` rows.
:func:`tracker_protection` scores it, per metric, on the protocol's three sets
of photos: the users' *shared* photos (cloaked, clean or noised, as uploaded),
the *distractors* (everyone else, clean) and the *probes* (the users' clean
photos):

* **Classifiers** (Fawkes, FaceCure): ``knn1`` (nearest neighbour, cosine) or
  ``logreg`` (multinomial logistic regression) trained on the shared and the
  distractor photos, tested on the probes.
* **Rank-1 identification** (LowKey): one user at a time, a gallery of that
  user's shared photos and every distractor photo (the other users are not in
  it); a probe is recognised when its nearest gallery embedding (cosine) is
  the user's.

Protection is ``1 -`` accuracy on the probes. A photo without a face
(``found`` False) is dropped from the training set and gallery; a probe
without one counts as not recognised. Embeddings are L2-normalised first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cloak.evaluation.protocol.results import METRICS

#: The metrics that train a classifier on the shared and distractor photos.
CLASSIFIERS: tuple[str, ...] = ("knn1", "logreg")
#: One label per embedding, ints or strings.
Labels = Sequence[int] | Sequence[str] | np.ndarray


@dataclass
class Embedded:
    """Embeddings of a list of photos by one tracker.

    Attributes:
        emb: ``[N, D]`` float32, unit rows where ``found``; zeros elsewhere.
        found: ``[N]`` bool, whether the tracker found a face in each photo.
    """

    emb: np.ndarray
    found: np.ndarray

    def __post_init__(self) -> None:
        self.emb = np.asarray(self.emb, dtype=np.float32)
        self.found = np.asarray(self.found, dtype=bool)
        if self.emb.ndim != 2 or self.found.shape != (len(self.emb),):
            raise ValueError(
                f"emb must be [N, D] and found [N], got {list(self.emb.shape)} and {list(self.found.shape)}"
            )

    def __len__(self) -> int:
        return len(self.emb)

    def take(self, index: Sequence[int] | np.ndarray) -> Embedded:
        """The rows ``index``, in that order."""
        index = np.asarray(index, dtype=np.int64)
        return Embedded(self.emb[index], self.found[index])


@dataclass
class Score:
    """One metric's outcome on the probes.

    Attributes:
        protection: ``1 -`` accuracy over all probes.
        per_user: user -> ``1 -`` accuracy on their probes.
        n_probes: probes tested.
        n_probes_no_face: probes the tracker found no face in (counted as not recognised).
    """

    protection: float
    per_user: dict[str, float]
    n_probes: int
    n_probes_no_face: int


def _unit_rows(x: np.ndarray, name: str) -> np.ndarray:
    """``[N, D]`` float64 with L2-normalised rows."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must have shape [N, D] with N, D >= 1, got {list(x.shape)}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _checked(train: np.ndarray, labels: Labels, test: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised training and test embeddings of one dimension, and one label per training row."""
    train, test = _unit_rows(train, "training embeddings"), _unit_rows(test, "test embeddings")
    labels = np.asarray(labels)
    if labels.shape != (len(train),):
        raise ValueError(f"need one label per training embedding ({len(train)}), got shape {list(labels.shape)}")
    if test.shape[1] != train.shape[1]:
        raise ValueError(f"test and training embeddings differ in dimension: {test.shape[1]} vs {train.shape[1]}")
    return train, labels, test


def nearest_label(gallery: np.ndarray, gallery_labels: Labels, probes: np.ndarray) -> np.ndarray:
    """The label of each probe's nearest gallery embedding by cosine similarity (ties: the first).

    Args:
        gallery: ``[N, D]`` gallery embeddings.
        gallery_labels: ``[N]`` one label per gallery embedding.
        probes: ``[M, D]`` probe embeddings.

    Returns:
        ``[M]`` the predicted label of each probe.

    Raises:
        ValueError: on mismatched shapes or non-finite embeddings.
    """
    gallery, labels, probes = _checked(gallery, gallery_labels, probes)
    return labels[np.argmax(probes @ gallery.T, axis=1)]


def fit_predict(train: np.ndarray, train_labels: Labels, test: np.ndarray, classifier: str = "knn1") -> np.ndarray:
    """Trains a tracker's classifier on ``train`` and predicts the label of each ``test`` embedding.

    ``"knn1"`` is :func:`nearest_label`. ``"logreg"`` is scikit-learn's
    multinomial logistic regression (L-BFGS, ``C = 1``, up to 2000 iterations)
    on L2-normalised, then standardised embeddings; it is deterministic.

    Args:
        train: ``[N, D]`` training embeddings.
        train_labels: ``[N]`` one label per training embedding.
        test: ``[M, D]`` test embeddings.
        classifier: ``"knn1"`` or ``"logreg"``.

    Returns:
        ``[M]`` the predicted label of each test embedding.

    Raises:
        ValueError: on an unknown classifier, mismatched shapes, or fewer than
            two training identities for ``"logreg"``.
    """
    if classifier not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {classifier!r}; valid: {', '.join(CLASSIFIERS)}")
    if classifier == "knn1":
        return nearest_label(train, train_labels, test)
    train, labels, test = _checked(train, train_labels, test)
    if len(np.unique(labels)) < 2:
        raise ValueError("logistic regression needs training photos of at least two identities")
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, random_state=0))
    model.fit(train, labels)
    return model.predict(test)


def _score(correct: np.ndarray, labels: np.ndarray, found: np.ndarray) -> Score:
    per_user = {str(u): float(1.0 - correct[labels == u].mean()) for u in np.unique(labels)}
    return Score(float(1.0 - correct.mean()), per_user, len(labels), int((~found).sum()))


def _rank1_correct(
    shared: Embedded,
    shared_labels: np.ndarray,
    distractors: Embedded,
    distractor_labels: np.ndarray,
    probes: Embedded,
    probe_labels: np.ndarray,
) -> np.ndarray:
    """Whether each probe is recognised in a gallery of its user's shared photos and the distractors."""
    correct = np.zeros(len(probes), dtype=bool)
    d_emb, d_labels = distractors.emb[distractors.found], distractor_labels[distractors.found]
    for user in np.unique(probe_labels):
        rows = np.flatnonzero((probe_labels == user) & probes.found)
        mine = shared.found & (shared_labels == user)
        gallery = np.concatenate([shared.emb[mine], d_emb])
        if len(rows) == 0 or len(gallery) == 0:
            continue
        labels = np.concatenate([shared_labels[mine], d_labels])
        correct[rows] = nearest_label(gallery, labels, probes.emb[rows]) == user
    return correct


def tracker_protection(
    shared: Embedded,
    shared_labels: Labels,
    distractors: Embedded,
    distractor_labels: Labels,
    probes: Embedded,
    probe_labels: Labels,
    metrics: Sequence[str] = METRICS,
) -> dict[str, Score]:
    """Protection of the users against one tracker, per metric (see the module docstring).

    Args:
        shared: the users' shared photos as the tracker embedded them (cloaked, clean or noised).
        shared_labels: their users.
        distractors: the distractor identities' photos.
        distractor_labels: their identities.
        probes: the users' clean photos.
        probe_labels: their users.
        metrics: any of ``knn1``, ``logreg`` and ``rank1``.

    Returns:
        Metric -> :class:`Score`, per-user keys as strings.

    Raises:
        ValueError: on an unknown metric, mismatched lengths, no probes, or no
            training photo with a face.
    """
    shared_labels, distractor_labels, probe_labels = (
        np.asarray(labels).astype(str) for labels in (shared_labels, distractor_labels, probe_labels)
    )
    for emb, labels, what in (
        (shared, shared_labels, "shared"),
        (distractors, distractor_labels, "distractor"),
        (probes, probe_labels, "probe"),
    ):
        if len(emb) != len(labels):
            raise ValueError(f"{what} embeddings and labels differ in length: {len(emb)} vs {len(labels)}")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; valid: {', '.join(METRICS)}")
    if len(probes) == 0:
        raise ValueError("no probe photos to evaluate")
    train_emb = np.concatenate([shared.emb[shared.found], distractors.emb[distractors.found]])
    train_labels = np.concatenate([shared_labels[shared.found], distractor_labels[distractors.found]])
    if len(train_emb) == 0:
        raise ValueError("the tracker found no face in any training photo")
    found = probes.found
    out: dict[str, Score] = {}
    for metric in metrics:
        if metric == "rank1":
            correct = _rank1_correct(shared, shared_labels, distractors, distractor_labels, probes, probe_labels)
        else:
            correct = np.zeros(len(probes), dtype=bool)
            if found.any():
                correct[found] = fit_predict(train_emb, train_labels, probes.emb[found], metric) == probe_labels[found]
        out[metric] = _score(correct, probe_labels, found)
    return out
