"""Tracker protection rates on embeddings with known answers."""

import numpy as np
import pytest
import torch

from cloak.evaluation.trackers import (
    classifier_protection,
    fit_predict,
    nearest_label,
    protection_by_label,
    protection_rate,
    rank1_protection,
)


def _clusters(n_ids: int = 5, per_id: int = 6, dim: int = 16, spread: float = 0.05, seed: int = 0):
    """Well-separated clusters around orthogonal directions: ``(embeddings [N, D], int labels [N])``."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_ids), per_id)
    emb = np.eye(dim)[labels] * 3.0 + spread * rng.normal(size=(len(labels), dim))
    return emb, labels


@pytest.mark.parametrize("classifier", ["knn1", "logreg"])
def test_perfect_tracker_gives_zero_protection(classifier):
    train, train_labels = _clusters(seed=0)
    test, test_labels = _clusters(per_id=3, seed=1)
    assert classifier_protection(train, train_labels, test, test_labels, classifier) == 0.0
    assert rank1_protection(train, train_labels, test, test_labels) == 0.0


def test_known_error_rate_is_exact():
    # Gallery: user "u" at +e0 (its cloaked photos), distractors "d1" at +e1, "d2" at +e2.
    gallery = np.array([[1.0, 0, 0], [0.9, 0.1, 0], [0, 1.0, 0], [0, 0, 1.0]])
    gallery_labels = ["u", "u", "d1", "d2"]
    # Probes: four clean photos of "u"; exactly one lies closest to "d1".
    probes = np.array([[1.0, 0.05, 0.0], [0.8, 0.0, 0.3], [1.0, 0.0, 0.1], [0.2, 1.0, 0.0]])
    probe_labels = ["u"] * 4
    assert list(nearest_label(gallery, gallery_labels, probes)) == ["u", "u", "u", "d1"]
    assert rank1_protection(gallery, gallery_labels, probes, probe_labels) == 0.25
    assert classifier_protection(gallery, gallery_labels, probes, probe_labels, "knn1") == 0.25


def test_cosine_ignores_scale():
    gallery = np.array([[1.0, 0.0], [0.0, 1.0]])
    probes = np.array([[100.0, 1.0], [0.01, 0.02]])
    assert list(nearest_label(gallery, np.array([7, 8]), probes)) == [7, 8]


def test_torch_inputs_and_string_labels():
    train, train_labels = _clusters(seed=0)
    test, test_labels = _clusters(per_id=2, seed=1)
    names = np.array(["ann", "bo", "cy", "di", "ed"])
    for classifier in ("knn1", "logreg"):
        train_t, test_t = torch.from_numpy(train).float(), torch.from_numpy(test)
        p = classifier_protection(train_t, list(names[train_labels]), test_t, names[test_labels], classifier)
        assert p == 0.0
    assert rank1_protection(train, torch.from_numpy(train_labels), test, torch.from_numpy(test_labels)) == 0.0
    predicted = fit_predict(train, list(names[train_labels]), test, "logreg")
    assert list(predicted) == list(names[test_labels])


def test_cloaked_user_is_protected():
    # The user's cloaked training photos point away from their clean photos: every clean probe is misidentified.
    train, labels = _clusters(n_ids=4, per_id=6, seed=0)
    test, test_labels = _clusters(n_ids=4, per_id=3, seed=1)
    user = 0
    cloaked = train.copy()
    noise = 0.05 * np.random.default_rng(2).normal(size=(6, 16))
    cloaked[labels == user] = (np.eye(16)[7] - np.eye(16)[0]) * 3.0 + noise
    probes, probe_labels = test[test_labels == user], test_labels[test_labels == user]
    for classifier in ("knn1", "logreg"):
        assert classifier_protection(cloaked, labels, probes, probe_labels, classifier) == 1.0
    assert rank1_protection(cloaked, labels, probes, probe_labels) == 1.0


def test_per_user_breakdown():
    predicted = ["a", "a", "x", "b", "b", "b", "x", "x"]
    true = ["a", "a", "a", "b", "b", "b", "b", "b"]
    assert protection_rate(predicted, true) == 3 / 8
    assert protection_by_label(predicted, true) == {"a": pytest.approx(1 / 3), "b": pytest.approx(2 / 5)}
    assert protection_by_label(np.array([1, 2, 2]), torch.tensor([1, 2, 3])) == {1: 0.0, 2: 0.0, 3: 1.0}


def test_logreg_is_deterministic():
    train, train_labels = _clusters(spread=1.0, seed=0)
    test, _ = _clusters(per_id=4, spread=1.0, seed=1)
    first = fit_predict(train, train_labels, test, "logreg")
    assert np.array_equal(first, fit_predict(train, train_labels, test, "logreg"))


def test_errors():
    emb, labels = _clusters()
    with pytest.raises(ValueError, match="knn1, logreg"):
        classifier_protection(emb, labels, emb, labels, "svm")
    with pytest.raises(ValueError, match="one label per embedding"):
        rank1_protection(emb, labels[:-1], emb, labels)
    with pytest.raises(ValueError, match="differ in dimension"):
        rank1_protection(emb, labels, emb[:, :3], labels)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        nearest_label(emb[0], labels[:1], emb)
    with pytest.raises(ValueError, match="two identities"):
        fit_predict(emb[:3], labels[:3], emb, "logreg")
    with pytest.raises(ValueError, match="empty"):
        protection_rate([], [])
