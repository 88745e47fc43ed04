"""Load the recorded conversations under tests/data."""

from __future__ import annotations

import json
from pathlib import Path

DATA = Path(__file__).parent / "data"

Chunks = list[tuple[bool, bytes]]  # (frontend?, data)


def recordings() -> dict[str, list[Chunks]]:
    out: dict[str, list[Chunks]] = {}
    for path in sorted(DATA.glob("*.json")):
        rec = json.loads(path.read_text())
        out[rec["scenario"]] = [
            [(c["dir"] == "F", bytes.fromhex(c["hex"])) for c in conn] for conn in rec["connections"]
        ]
    return out
