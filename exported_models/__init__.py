"""The shipped, trained artifacts: one folder per model with card.json, weights and ONNX.

Every artifact is produced by a recipe (`mbdl train NAME`) and verified by sha256 at load;
`engines.load(NAME)` loads any folder here. Shipped (sparse coding, the 250 x 500 noiseless
benchmark; git carries them, so the folder stays under ~40 MB): lista-cs (~25 MB),
lista-cpss-cs (~9 MB), alista-cs, learned-admm-cs, unfolded-admm-cs (~1-2 MB each). The
Ex. 16 network (unfolded-admm-weights-cs, ~25 MB) and the SNR 40/20 dB models are trained by
the same recipes into the user cache when `mbdl bench sparse` needs them, not shipped.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent


def artifact_dirs() -> list[Path]:
    """Folders that hold a card.json."""
    return sorted(p.parent for p in ROOT.glob("*/card.json"))
