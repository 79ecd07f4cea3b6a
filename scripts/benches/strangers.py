"""``scripts/bench.py strangers``: see :mod:`benches.amortised`."""

from __future__ import annotations

from benches.amortised import main as amortised


def main(argv: list[str] | None = None) -> None:
    amortised("strangers", argv)
