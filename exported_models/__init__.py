"""The shipped, trained artifacts: one folder per model with card.json, weights and model.onnx.

Every artifact is produced by a recipe (`mbdl train NAME`) and verified by sha256 at load;
`engines.load(NAME)` loads any folder here. Git carries them (74 MB in all, ONNX included):
sparse coding on the 250 x 500 noiseless benchmark — lista-cs (~47 MB with its ONNX),
lista-cpss-cs (~17 MB), alista-cs, learned-admm-cs, unfolded-admm-cs (~3 MB each); tracking —
kalmannet-lorenz, kalmannet-lorenz-rot, mbrnn-lorenz, kalmannet-lorenz-ft (fine-tuned on varied
starts, issue 17), kalmannet-lorenz-drop (fine-tuned with missing observations) (~0.2 MB each);
ultrasound — corona-ceus, corona-fast (its student for the live sliding window), corona-lite
(corona-fast's 5-layer student, issue 15 part 2), corona-mc (corona-ceus on motion-compensated
60-frame windows, output D - L: the separator in front of ULM), resnet-ceus, ulm-lista (< 1 MB each);
microscopy — lsparcom (0.4 MB), deep-storm (2.8 MB);
communications — bcjrnet-isi, viterbinet-isi, sbrnn-isi; control — kalmannet-cv (36 KB: KalmanNet
with the known input, for the CV plant of `mbdl reproduce control`); priors (seed Ex. 20, 21) — dncnn
(the plug-and-play denoiser), vae-digits (the CSGM prior), 0.3 MB each. The Ex. 16 network
(unfolded-admm-weights-cs, ~25 MB), the SNR 40/20 dB sparse models and the other tracking
baselines are trained by the same recipes
into the user cache when a benchmark needs them, not shipped.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent


def artifact_dirs() -> list[Path]:
    """Folders that hold a card.json."""
    return sorted(p.parent for p in ROOT.glob("*/card.json"))
