"""The shipped, trained artifacts: one folder per model with card.json, weights and ONNX.

Every artifact is produced by a recipe (`mbdl train NAME`) and verified by sha256 at load.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent


def artifact_dirs() -> list[Path]:
    """Folders that hold a card.json."""
    return sorted(p.parent for p in ROOT.glob("*/card.json"))
