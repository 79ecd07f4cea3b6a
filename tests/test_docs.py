"""The documentation cannot drift from the configs, and its links resolve.

- Every YAML file under ``configs/`` has a section in ``docs/configuration.md`` (a heading
  naming its path in backticks), and every key of the file (dotted, e.g. ``data.root``) is
  listed in the first column of that section's table, or covered by a ``prefix.*`` row.
  ``defaults``, ``_target_`` and ``_recursive_`` are not keys a user sets.
- Every key the doc lists exists in its file, and every ``configs/...`` path the doc names
  exists.
- Every relative link of ``README.md``, ``docs/*.md`` and ``experiments/*.md`` points to a file or
  folder that exists.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
CONFIG_DOC = ROOT / "docs" / "configuration.md"
SKIPPED_KEYS = {"defaults", "_target_", "_recursive_"}

SECTION = re.compile(r"^#{2,6}\s+`(configs/[^`]+\.yaml)`\s*$")
ROW_KEY = re.compile(r"^\|\s*`([^`]+)`\s*\|")
CONFIG_PATH = re.compile(r"configs/[\w./-]*")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def config_files() -> list[str]:
    return sorted(p.relative_to(ROOT).as_posix() for p in CONFIGS.rglob("*.yaml"))


def config_keys(path: Path) -> list[str]:
    """Dotted paths of every key of a YAML file (mappings only; lists are values)."""
    data = yaml.safe_load(path.read_text()) or {}
    keys: list[str] = []

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            if key in SKIPPED_KEYS:
                continue
            dotted = f"{prefix}{key}"
            keys.append(dotted)
            if isinstance(value, dict):
                walk(value, dotted + ".")

    walk(data, "")
    return keys


def doc_sections() -> dict[str, set[str]]:
    """Config path -> the keys listed in the first column of its section's tables."""
    sections: dict[str, set[str]] = {}
    current: str | None = None
    for line in CONFIG_DOC.read_text().splitlines():
        if line.startswith("#"):
            match = SECTION.match(line)
            current = match.group(1) if match else None
            if current is not None:
                sections.setdefault(current, set())
            continue
        row = ROW_KEY.match(line)
        if current is not None and row:
            sections[current].add(row.group(1))
    return sections


def covered(key: str, listed: set[str]) -> bool:
    if key in listed:
        return True
    return any(entry.endswith(".*") and (key == entry[:-2] or key.startswith(entry[:-1])) for entry in listed)


def test_every_config_file_has_a_section():
    missing = sorted(set(config_files()) - set(doc_sections()))
    assert not missing, f"docs/configuration.md has no section (### `configs/...yaml`) for {missing}"


def test_every_documented_file_exists():
    gone = sorted(p for p in doc_sections() if not (ROOT / p).is_file())
    assert not gone, f"docs/configuration.md documents files that no longer exist: {gone}"


def test_every_configs_path_named_in_the_doc_exists():
    named = set(CONFIG_PATH.findall(CONFIG_DOC.read_text()))
    gone = sorted(p for p in named if not (ROOT / p.rstrip(".")).exists())
    assert not gone, f"docs/configuration.md names config groups or files that do not exist: {gone}"


@pytest.mark.parametrize("name", config_files())
def test_every_key_is_documented(name: str):
    listed = doc_sections().get(name, set())
    missing = [k for k in config_keys(ROOT / name) if not covered(k, listed)]
    assert not missing, f"keys of {name} missing from its section in docs/configuration.md: {missing}"


@pytest.mark.parametrize("name", config_files())
def test_every_documented_key_exists(name: str):
    keys = config_keys(ROOT / name)
    listed = doc_sections().get(name, set())
    stale = sorted(entry for entry in listed if (entry[:-2] not in keys if entry.endswith(".*") else entry not in keys))
    assert not stale, f"docs/configuration.md lists keys that {name} no longer has: {stale}"


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "experiments").glob("*.md"))]


def relative_links(path: Path) -> list[str]:
    text = path.read_text()
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks hold commands, not links
    targets = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I) or target.startswith("#"):
            continue  # http:, https:, mailto: ... and anchors within the page
        targets.append(target.split("#", 1)[0])
    return targets


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(path: Path):
    broken = [t for t in relative_links(path) if not (path.parent / t).exists()]
    assert not broken, f"{path.relative_to(ROOT)} links to paths that do not exist: {broken}"
