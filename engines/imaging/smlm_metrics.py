"""SMLM figures of merit, shared by the microscopy engines, recipes and experiments (seed Fig. 8).

Coordinates are those of drivers/sim/smlm.py: positions are float (K, 2) arrays of [x, y]
in nm from the field's top-left corner, x = column, y = row; fine pixel (r, c) of an image
at `fine_nm` nm per pixel covers x in [c fine_nm, (c + 1) fine_nm), so its centre is at
((c + 0.5) fine_nm, (r + 0.5) fine_nm).

Localizations (a list of positions):
- `score_localizations(found, truth)`: one-to-one matching within TOLERANCE_NM = 250 nm by
  the Hungarian algorithm (scipy.optimize.linear_sum_assignment, through
  engines.imaging.ulm.match: the most pairs, and among those the smallest squared error),
  then TP, FP, FN, Jaccard = TP / (TP + FP + FN), precision, recall, RMSE of the matched
  pairs (nm) and the efficiency of the SMLM 2016 challenge (Sage et al., "Super-resolution
  fight club: assessment of 2D and 3D single-molecule localization microscopy software",
  Nat. Methods 16, 387-395, 2019; bigwww.epfl.ch/smlm/challenge2016):

      E = 100 - sqrt((100 - Jaccard[%])^2 + alpha^2 RMSE^2),   alpha = 1 %/nm (2D, lateral)

  in %, 100 for a perfect method; without any match (RMSE undefined) Jaccard is 0 and E = 0.
  Frames or stacks are pooled by adding their `Matching`s (`pooled`).
- `localize_image(image, fine_nm, threshold)`: the localizations of a super-resolved image:
  its local maxima over a (2 radius + 1)^2 neighbourhood above `threshold` (the image's own
  units; callers take a fraction of the image's maximum), each refined to the intensity
  centroid of its 3 x 3 neighbourhood, in nm.

Images (a super-resolved image against a truth image, e.g. the simulator's filament image):
- both are brought to one grid by summing blocks of the finer one (the grids' factor must be
  an integer), then blurred by the same Gaussian of BLUR_SIGMA_NM = 25 nm (the filament
  width, one pixel of a 4x grid: tolerant of a one-pixel offset, as the 250 nm matching is
  of a localization's; a 50 nm blur left the diffraction-limited variance image within 0.05
  of SPARCOM's correlation on sim:smlm, measured), then
- `image_correlation`: Pearson's correlation coefficient of the two blurred images, and
- `image_nmse`: ||c a - b||^2 / ||b||^2 with a the blurred estimate, b the blurred truth and
  c = <a, b> / ||a||^2 the least-squares scale (an SR image's intensity unit is arbitrary).

Truth of a stack-level method (SPARCOM, LSPARCOM: one image per stack of frames):
`stack_truth(positions)` = the distinct emitters ON in at least one frame of the stack (the
simulator's emitters sit still, so an emitter's position repeats exactly across frames). A
per-frame method (Deep-STORM, a localization fit) is scored frame by frame against that
frame's positions instead, or, for its accumulated image, against the same stack truth.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from engines.imaging.ulm import Matching, match

TOLERANCE_NM = 250.0  # a localization farther than this from every unmatched emitter is a false one
ALPHA_PER_NM = 1.0  # the challenge's lateral efficiency weight: 1 % per nm of RMSE
BLUR_SIGMA_NM = 25.0  # the Gaussian both images are blurred with before they are compared


@dataclass(frozen=True)
class LocalizationScores:
    """Matched localizations: counts, Jaccard, precision, recall (0..1), RMSE (nm), efficiency (%)."""

    tp: int
    fp: int
    fn: int
    jaccard: float
    precision: float
    recall: float
    rmse_nm: float  # NaN without any match
    efficiency: float

    def as_dict(self, digits: int = 4) -> dict[str, float | int | None]:
        """JSON-ready: floats rounded, NaN as None."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else
                    round(v, digits) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def efficiency(jaccard: float, rmse_nm: float, alpha: float = ALPHA_PER_NM) -> float:
    """The SMLM 2016 challenge's 2D efficiency E = 100 - sqrt((100 - 100 J)^2 + alpha^2 RMSE^2), in %.

    `jaccard` in 0..1, `rmse_nm` in nm (NaN when nothing matched: then E = 0), alpha in % per nm.
    """
    if math.isnan(rmse_nm):
        return 0.0
    return 100.0 - math.hypot(100.0 - 100.0 * jaccard, alpha * rmse_nm)


def scores(m: Matching) -> LocalizationScores:
    """The figures of a Matching whose squared errors are in nm^2."""
    rmse = m.rmse
    return LocalizationScores(
        tp=m.tp, fp=m.fp, fn=m.fn, jaccard=m.jaccard,
        precision=m.tp / (m.tp + m.fp) if m.tp + m.fp else 1.0,
        recall=m.tp / (m.tp + m.fn) if m.tp + m.fn else 1.0,
        rmse_nm=rmse, efficiency=efficiency(m.jaccard, rmse))


def match_nm(found: np.ndarray, truth: np.ndarray, tolerance_nm: float = TOLERANCE_NM) -> Matching:
    """Hungarian matching of found (k, 2) and true (m, 2) positions in nm within `tolerance_nm`;
    the Matching's squared errors are in nm^2."""
    found = np.asarray(found, np.float64).reshape(-1, 2)
    truth = np.asarray(truth, np.float64).reshape(-1, 2)
    return match(found, truth, float(tolerance_nm))


def pooled(matchings) -> Matching:
    """The sum of several Matchings (frames or stacks scored together)."""
    total = Matching(0, 0, 0, np.zeros(0))
    for m in matchings:
        total = total + m
    return total


def score_localizations(found: np.ndarray, truth: np.ndarray,
                        tolerance_nm: float = TOLERANCE_NM) -> LocalizationScores:
    """Jaccard, precision, recall, RMSE (nm) and efficiency of found vs true positions (nm)."""
    return scores(match_nm(found, truth, tolerance_nm))


def stack_truth(positions: list[np.ndarray]) -> np.ndarray:
    """(K, 2) nm: the distinct emitters ON in at least one frame, from the per-frame positions."""
    rows = [np.asarray(p, np.float64).reshape(-1, 2) for p in positions]
    if not rows:
        return np.zeros((0, 2))
    return np.unique(np.concatenate(rows), axis=0)


def localize_image(image: np.ndarray, fine_nm: float, threshold: float, radius: int = 1) -> np.ndarray:
    """(K, 2) nm [x, y]: local maxima of `image` (H, W) over (2 radius + 1)^2 pixels above
    `threshold`, each at the intensity centroid of its 3 x 3 neighbourhood (sub-pixel)."""
    img = np.asarray(image, np.float64)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D (H, W), got shape {img.shape}")
    size = 2 * int(radius) + 1
    peak = (img == ndimage.maximum_filter(img, size=size, mode="constant", cval=-np.inf)) & (img > threshold)
    labels, n = ndimage.label(peak, structure=np.ones((3, 3)))
    if n == 0:
        return np.zeros((0, 2))
    # a plateau (equal neighbouring maxima) is one peak: its first pixel in row-major order
    idx = np.flatnonzero(labels)
    _, first = np.unique(labels.ravel()[idx], return_index=True)
    rc = np.stack(np.unravel_index(idx[first], img.shape), axis=1)
    padded = np.pad(img, 1)
    d = np.arange(-1, 2)
    win = padded[rc[:, 0, None, None] + 1 + d[:, None], rc[:, 1, None, None] + 1 + d[None, :]]  # (K, 3, 3)
    w = np.clip(win, 0, None)
    mass = np.where(w.sum(axis=(1, 2)) > 0, w.sum(axis=(1, 2)), 1.0)  # a peak <= 0 stays on its pixel
    dy = (w.sum(axis=2) * d).sum(1) / mass
    dx = (w.sum(axis=1) * d).sum(1) / mass
    return np.stack([rc[:, 1] + 0.5 + dx, rc[:, 0] + 0.5 + dy], axis=1) * float(fine_nm)


def to_common_grid(estimate: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Both images on the coarser of their two grids (blocks of the finer one summed), and the
    factor by which the truth's grid was coarsened (1 when the truth's is the coarser one).

    The images must cover the same field: their sizes must differ by an integer factor.
    """
    a, b = np.asarray(estimate, np.float64), np.asarray(truth, np.float64)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"images must be 2-D, got shapes {a.shape} and {b.shape}")

    def binned(x: np.ndarray, f: int) -> np.ndarray:
        return x.reshape(x.shape[0] // f, f, x.shape[1] // f, f).sum(axis=(1, 3))

    big, small = (a, b) if a.shape[0] >= b.shape[0] else (b, a)
    f = big.shape[0] // small.shape[0]
    if f * small.shape[0] != big.shape[0] or f * small.shape[1] != big.shape[1]:
        raise ValueError(f"image sizes {a.shape} and {b.shape} do not differ by an integer factor")
    if big is a:
        return binned(a, f), b, 1
    return a, binned(b, f), f


def _blurred_pair(estimate: np.ndarray, truth: np.ndarray, truth_fine_nm: float,
                  blur_sigma_nm: float) -> tuple[np.ndarray, np.ndarray]:
    a, b, f = to_common_grid(estimate, truth)
    sigma_px = blur_sigma_nm / (truth_fine_nm * f)
    return (ndimage.gaussian_filter(a, sigma_px, mode="constant"),
            ndimage.gaussian_filter(b, sigma_px, mode="constant"))


def image_correlation(estimate: np.ndarray, truth: np.ndarray, truth_fine_nm: float,
                      blur_sigma_nm: float = BLUR_SIGMA_NM) -> float:
    """Pearson correlation of an SR image and the truth image (pixel `truth_fine_nm` nm), both
    blurred by a Gaussian of `blur_sigma_nm` on their common grid (module docstring)."""
    a, b = _blurred_pair(estimate, truth, truth_fine_nm, blur_sigma_nm)
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum()) / den if den > 0 else 0.0


def image_nmse(estimate: np.ndarray, truth: np.ndarray, truth_fine_nm: float,
               blur_sigma_nm: float = BLUR_SIGMA_NM) -> float:
    """||c a - b||^2 / ||b||^2 of the blurred SR image a and blurred truth b, c the least-squares scale."""
    a, b = _blurred_pair(estimate, truth, truth_fine_nm, blur_sigma_nm)
    aa, bb = float((a * a).sum()), float((b * b).sum())
    if bb == 0:
        raise ValueError("the truth image is all zeros")
    c = float((a * b).sum()) / aa if aa > 0 else 0.0
    return float(((c * a - b) ** 2).sum()) / bb
