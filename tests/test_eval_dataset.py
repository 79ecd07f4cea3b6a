"""Identity folders and the seeded user split."""

from pathlib import Path

import pytest
from PIL import Image

from cloak.evaluation.protocol.dataset import UserSplit, load_identity_folder, split_users


def _make_folder(root: Path, counts: dict[str, int]) -> Path:
    """``root/<name>/<name>_NNNN.jpg`` with ``counts[name]`` tiny photos each."""
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(1, n + 1):
            Image.new("RGB", (4, 4), (i * 10 % 256, 0, 0)).save(root / name / f"{name}_{i:04d}.jpg")
    return root


@pytest.fixture
def folder(tmp_path) -> Path:
    return _make_folder(tmp_path / "faces", {"Carol": 12, "Alice": 10, "Bob": 3, "Dave": 15, "Eve": 1})


def test_load_sorted_and_filtered(folder):
    (folder / "Alice" / "notes.txt").write_text("not a photo")
    (folder / "Alice" / ".hidden.jpg").write_bytes(b"")
    (folder / ".cache").mkdir()
    (folder / "README.md").write_text("top-level file")
    ids = load_identity_folder(folder)
    assert list(ids) == ["Alice", "Bob", "Carol", "Dave", "Eve"]
    assert [p.name for p in ids["Bob"]] == ["Bob_0001.jpg", "Bob_0002.jpg", "Bob_0003.jpg"]
    assert len(ids["Alice"]) == 10 and all(isinstance(p, Path) for p in ids["Alice"])
    assert list(load_identity_folder(folder, min_images=10)) == ["Alice", "Carol", "Dave"]
    assert list(load_identity_folder(str(folder), min_images=2)) == ["Alice", "Bob", "Carol", "Dave"]


def test_missing_root_is_explained(tmp_path):
    missing = tmp_path / "lfw-dev"
    with pytest.raises(FileNotFoundError) as info:
        load_identity_folder(missing)
    message = str(info.value)
    assert str(missing) in message and "<root>/<identity>/<image>" in message and "scikit-learn" in message


def test_root_that_is_a_file(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        load_identity_folder(path)


def test_too_few_identities(folder, tmp_path):
    with pytest.raises(ValueError, match="has 0 identities"):
        load_identity_folder(tmp_path / "faces" / "Alice")  # photos directly in root: the wrong layout
    with pytest.raises(ValueError, match=r"has 1 identities with >= 13 photos \(5 with any\), need at least 2"):
        load_identity_folder(folder, min_images=13, min_identities=2)


def _identities(n_ids: int = 8) -> dict[str, list[Path]]:
    """Identity ``idK`` has ``5 + 2K`` photos (paths need not exist)."""
    return {f"id{k}": [Path(f"id{k}/id{k}_{i:04d}.jpg") for i in range(5 + 2 * k)] for k in range(n_ids)}


def test_split_is_seeded_and_respects_fractions():
    ids = _identities()
    split = split_users(ids, n_users=3, min_photos=10, shared_fraction=0.7, seed=1)
    assert isinstance(split, UserSplit)
    assert split == split_users(dict(reversed(ids.items())), n_users=3, min_photos=10, seed=1)
    assert split.users == sorted(split.users) and len(split.users) == 3
    for user in split.users:
        photos = ids[user]
        assert len(photos) >= 10
        shared, clean = split.shared[user], split.clean[user]
        assert len(shared) == int(0.7 * len(photos) + 0.5) and len(shared) + len(clean) == len(photos)
        assert sorted(shared + clean) == sorted(photos) and not set(shared) & set(clean)
    assert set(split.others) == set(ids) - set(split.users)
    assert all(split.others[name] == ids[name] for name in split.others)
    seeds = {tuple(split_users(ids, 3, seed=s).users) for s in range(10)}
    assert len(seeds) > 1  # different seeds pick differently


def test_split_counts_exactly():
    ids = {"a": [Path(f"a{i}") for i in range(10)], "b": [Path(f"b{i}") for i in range(20)]}
    split = split_users(ids, n_users=2, min_photos=10)
    assert (len(split.shared["a"]), len(split.clean["a"])) == (7, 3)
    assert (len(split.shared["b"]), len(split.clean["b"])) == (14, 6)
    assert split.others == {}


def test_split_errors_on_too_few_eligible():
    ids = _identities()  # ids 3..7 have >= 10 photos: 5 eligible
    with pytest.raises(ValueError, match="only 5 of 8 identities"):
        split_users(ids, n_users=6, min_photos=10)
    with pytest.raises(ValueError, match="shared_fraction"):
        split_users(ids, n_users=1, shared_fraction=1.0)
    with pytest.raises(ValueError, match="n_users"):
        split_users(ids, n_users=0)
