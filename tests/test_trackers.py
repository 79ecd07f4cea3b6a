"""Scoring trackers (the code the experiments run) on embeddings with known answers."""

import numpy as np
import pytest

from cloak.evaluation.protocol.scoring import Embedded, fit_predict, nearest_label, tracker_protection


def _emb(rows, found=None) -> Embedded:
    rows = np.asarray(rows, dtype=np.float32)
    return Embedded(rows, np.ones(len(rows), bool) if found is None else np.asarray(found))


def _clusters(ids, per_id: int, dim: int = 16, spread: float = 0.05, seed: int = 0):
    """Tight clusters around orthogonal directions, one per id: ``(Embedded, labels)``."""
    rng = np.random.default_rng(seed)
    index = np.repeat(np.arange(len(ids)), per_id)
    emb = np.eye(dim)[index] * 3.0 + spread * rng.normal(size=(len(index), dim))
    return _emb(emb), np.array(ids)[index]


def _split(emb: Embedded, labels: np.ndarray, users) -> tuple[Embedded, np.ndarray, Embedded, np.ndarray]:
    """The rows of ``users`` and those of everyone else."""
    mine = np.isin(labels, users)
    return emb.take(np.flatnonzero(mine)), labels[mine], emb.take(np.flatnonzero(~mine)), labels[~mine]


def test_a_perfect_tracker_gives_no_protection():
    users = ["ann", "bo"]
    train, train_labels = _clusters(["ann", "bo", "d1", "d2"], per_id=5, seed=0)
    probes, probe_labels = _clusters(["ann", "bo"], per_id=3, seed=1)
    shared, shared_labels, distractors, distractor_labels = _split(train, train_labels, users)
    scores = tracker_protection(shared, shared_labels, distractors, distractor_labels, probes, probe_labels)
    assert list(scores) == ["knn1", "logreg", "rank1"]
    for s in scores.values():
        assert s.protection == 0.0 and s.per_user == {"ann": 0.0, "bo": 0.0}
        assert s.n_probes == 6 and s.n_probes_no_face == 0


def test_a_user_whose_shared_photos_point_elsewhere_is_protected_and_the_others_are_not():
    ids = ["u0", "u1", "u2", "d"]
    train, train_labels = _clusters(ids, per_id=6, seed=0)
    probes, probe_labels = _clusters(["u0", "u1", "u2"], per_id=3, seed=1)
    cloaked = train.emb.copy()
    cloaked[train_labels == "u0"] = (np.eye(16)[7] - np.eye(16)[0]) * 3.0  # the cloak moved u0 elsewhere
    shared, shared_labels, distractors, distractor_labels = _split(_emb(cloaked), train_labels, ["u0", "u1", "u2"])
    scores = tracker_protection(shared, shared_labels, distractors, distractor_labels, probes, probe_labels)
    for metric, s in scores.items():
        assert s.per_user == {"u0": 1.0, "u1": 0.0, "u2": 0.0}, metric
        assert s.protection == pytest.approx(1 / 3), metric


def test_known_answer_with_faces_not_found():
    e = np.eye(4)
    # u1's shared photos sit at e0; u2's at e1, one of them with no face found (dropped).
    shared = _emb([e[0], e[0], e[1], e[3]], found=[True, True, True, False])
    shared_labels = ["u1", "u1", "u2", "u2"]
    distractors = _emb([e[2], e[2] * 0.9 + e[3] * 0.1])
    # u1's probes: one near e0 (right), one near e2 (a distractor: wrong). u2's: one near e1 (right),
    # one near e0 (u1 for the classifier: wrong; in u2's own rank-1 gallery u2 is nearer than d), one without a face.
    probes = _emb(
        [e[0] + 0.1 * e[1], e[2] + 0.1 * e[0], e[1] + 0.1 * e[2], e[0] + 0.6 * e[1], e[3]],
        found=[True, True, True, True, False],
    )
    probe_labels = ["u1", "u1", "u2", "u2", "u2"]
    scores = tracker_protection(shared, shared_labels, distractors, ["d", "d"], probes, probe_labels, ["knn1", "rank1"])
    assert scores["knn1"].protection == pytest.approx(3 / 5)
    assert scores["knn1"].per_user == {"u1": 0.5, "u2": pytest.approx(2 / 3)}
    assert scores["knn1"].n_probes == 5 and scores["knn1"].n_probes_no_face == 1
    assert scores["rank1"].protection == pytest.approx(2 / 5)
    assert scores["rank1"].per_user == {"u1": 0.5, "u2": pytest.approx(1 / 3)}


def test_a_user_with_no_training_face_is_protected():
    e = np.eye(3)
    shared = _emb([e[0]], found=[False])
    scores = tracker_protection(shared, ["u"], _emb([e[1], e[2]]), ["a", "b"], _emb([e[0]]), ["u"], ["knn1", "rank1"])
    assert scores["knn1"].protection == 1.0 and scores["rank1"].protection == 1.0


def test_nearest_label_uses_cosine_and_keeps_label_types():
    gallery = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert list(nearest_label(gallery, np.array([7, 8]), np.array([[100.0, 1.0], [0.01, 0.02]]))) == [7, 8]
    gallery = np.array([[1.0, 0, 0], [0.9, 0.1, 0], [0, 1.0, 0], [0, 0, 1.0]])
    probes = np.array([[1.0, 0.05, 0.0], [0.8, 0.0, 0.3], [1.0, 0.0, 0.1], [0.2, 1.0, 0.0]])
    assert list(nearest_label(gallery, ["u", "u", "d1", "d2"], probes)) == ["u", "u", "u", "d1"]


def test_logreg_separates_clusters_and_is_deterministic():
    train, labels = _clusters(["a", "b", "c"], per_id=6, spread=0.5, seed=0)
    test, test_labels = _clusters(["a", "b", "c"], per_id=4, spread=0.5, seed=1)
    first = fit_predict(train.emb, labels, test.emb, "logreg")
    assert list(first) == list(test_labels)
    assert np.array_equal(first, fit_predict(train.emb, labels, test.emb, "logreg"))


def test_bad_input_is_refused_with_what_is_wrong():
    e = np.eye(2)
    with pytest.raises(ValueError, match="length"):
        tracker_protection(_emb([e[0]]), ["u", "u"], _emb([e[1]]), ["d"], _emb([e[0]]), ["u"])
    with pytest.raises(ValueError, match="metric"):
        tracker_protection(_emb([e[0]]), ["u"], _emb([e[1]]), ["d"], _emb([e[0]]), ["u"], ["svm"])
    with pytest.raises(ValueError, match="no face in any training photo"):
        tracker_protection(_emb([e[0]], [False]), ["u"], _emb([e[1]], [False]), ["d"], _emb([e[0]]), ["u"])
    with pytest.raises(ValueError, match="knn1, logreg"):
        fit_predict(e, ["a", "b"], e, "svm")
    with pytest.raises(ValueError, match="one label per training embedding"):
        nearest_label(e, ["a"], e)
    with pytest.raises(ValueError, match="differ in dimension"):
        nearest_label(e, ["a", "b"], np.eye(3))
    with pytest.raises(ValueError, match="NaN"):
        nearest_label(e, ["a", "b"], np.array([[np.nan, 0.0]]))
    with pytest.raises(ValueError, match="two identities"):
        fit_predict(e, ["a", "a"], e, "logreg")
    with pytest.raises(ValueError, match=r"emb must be \[N, D\]"):
        Embedded(np.zeros(3), np.zeros(3, bool))
