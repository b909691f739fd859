"""Rigid motion compensation of I/Q windows: the step in front of the clutter filter (issue 15 part 1).

Why: tissue that moves is not low rank. In sim:ceus the tissue field shifts rigidly by up to
0.3 mm (2.5 pixels) at 0.2-1 Hz, ~3 pixels across a 40-frame window at the fastest, so a
low-rank model of the window needs several components, and those components take the slow
bubbles with them (ghosts in every other frame, shrunk bubbles): CORONA -> ulm-lista reaches
Jaccard 0.27-0.39 where the perfect clutter filter gives 0.66 (`mbdl_app/experiments/chain_bounds.py`
measures the ceiling of a low-rank filter: 0.34-0.52 even with the true tissue subspace or
the true bubble support). Clinical ULM pipelines register the frames before the SVD filter for
this reason (motion correction, e.g. Hingot et al. 2019); registered, the window's tissue is
close to rank 1 and the separator keeps the bubbles.

How: every frame of a window is registered to the window's reference frame (its centre, the
one a session with lag = T // 2 publishes) by cross-correlation of the complex frames (the
cross-power spectrum's peak), refined to 1/`upsample` pixel by an upsampled DFT of
the cross-power spectrum around that peak (matrix products on a 3 x 3 pixel neighbourhood, the
method of Guizar-Sicairos, Thurman & Fienup, Opt. Lett. 2008), and shifted onto it by a
Fourier phase ramp (circular, sub-pixel, exact for a rigid periodic field). `MotionCompensated`
wraps any clutter-suppression engine: it aligns each window, runs the engine on it, and shifts
every output frame back to where its input frame was. numpy only (the torch-free runtime).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import scipy.fft

from engines.base import check_finite
from engines.errors import ArtifactError, EngineInputError

UPSAMPLE = 20  # 1/20 pixel: a misregistration of 0.05 px leaves ~0.15 of tissue (gradient ~3 / px)


def _frequencies(n: int) -> np.ndarray:
    return np.fft.fftfreq(n)  # cycles per pixel, FFT order


def _upsampled_dft(spectrum: np.ndarray, region: int, upsample: int, offset: np.ndarray) -> np.ndarray:
    """The inverse DFT of `spectrum` (h, w) on a region x region grid of pixel spacing 1/upsample
    centred on `offset` (row, col in pixels): two matrix products, no zero-padded FFT."""
    h, w = spectrum.shape
    pos = np.arange(region) - region // 2  # grid points around the offset, in 1/upsample pixels
    rows = offset[0] + pos / upsample
    cols = offset[1] + pos / upsample
    kr = np.exp(2j * np.pi * np.outer(rows, _frequencies(h)))  # (region, h)
    kc = np.exp(2j * np.pi * np.outer(_frequencies(w), cols))  # (w, region)
    return kr @ spectrum @ kc


def estimate_shift(reference_fft: np.ndarray, moving_fft: np.ndarray, upsample: int = UPSAMPLE) -> np.ndarray:
    """The (row, col) shift in pixels that moves frame `moving` onto `reference` (both given as
    2-D FFTs of complex frames): the cross-correlation's peak, refined to 1/upsample pixel. Not
    whitened (phase correlation): beyond the PSF's band the spectrum is noise only, and
    whitening it gave wrong integer peaks on sim:ceus frames."""
    cross = reference_fft * np.conj(moving_fft)
    corr = np.abs(np.fft.ifft2(cross))
    h, w = corr.shape
    peak = np.array(np.unravel_index(int(np.argmax(corr)), corr.shape), dtype=np.float64)
    peak = np.where(peak > np.array([h, w]) // 2, peak - np.array([h, w]), peak)  # signed
    if upsample <= 1:
        return peak
    region = int(np.ceil(1.5 * upsample)) | 1  # +-0.75 pixel around the integer peak, odd
    fine = np.abs(_upsampled_dft(cross, region, upsample, peak))
    r, c = np.unravel_index(int(np.argmax(fine)), fine.shape)
    return peak + (np.array([r, c]) - region // 2) / upsample


def shift_frames(spectra: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Frames (n, h, w) complex whose 2-D FFTs are `spectra`, shifted by `shifts` (n, 2) pixels
    (row, col; positive = down / right) with a Fourier phase ramp; in the spectra's precision."""
    n, h, w = spectra.shape
    ramp_r = np.exp(-2j * np.pi * shifts[:, :1] * _frequencies(h)[None, :]).astype(spectra.dtype)
    ramp_c = np.exp(-2j * np.pi * shifts[:, 1:] * _frequencies(w)[None, :]).astype(spectra.dtype)
    return scipy.fft.ifft2(spectra * ramp_r[:, :, None] * ramp_c[:, None, :], workers=1)


def _spectra(frames: np.ndarray) -> np.ndarray:
    """2-D FFTs (n, H, W) complex64 of I/Q frames (n, 2, H, W): single precision keeps a 60-frame
    128 x 128 window's working memory at ~8 MB per array."""
    z = np.empty((len(frames), *frames.shape[2:]), np.complex64)
    z.real, z.imag = frames[:, 0], frames[:, 1]
    return scipy.fft.fft2(z, workers=1, overwrite_x=True)


def align_window(window: np.ndarray, reference: int,
                 upsample: int = UPSAMPLE) -> tuple[np.ndarray, np.ndarray]:
    """(aligned window (T, 2, H, W) float32, shifts (T, 2)): every I/Q frame of `window` shifted
    onto frame `reference` (whose shift is 0)."""
    spectra = _spectra(window)
    shifts = np.zeros((len(spectra), 2))
    for j in range(len(spectra)):
        if j != reference:
            shifts[j] = estimate_shift(spectra[reference], spectra[j], upsample)
    aligned = shift_frames(spectra, shifts)
    return np.stack([aligned.real, aligned.imag], axis=1).astype(np.float32), shifts


def unshift(frames: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """I/Q frames (n, 2, H, W) moved back by -shifts (the inverse of `align_window`'s)."""
    back = shift_frames(_spectra(frames), -shifts)
    return np.stack([back.real, back.imag], axis=1).astype(np.float32)


class MotionCompensated:
    """A clutter-suppression engine run on motion-compensated windows.

    Each window (T frames) is aligned to its frame `reference` (default the centre, T - 1 - T // 2:
    what a session with hop 1 and lag T // 2 publishes), the engine separates the aligned window,
    and every output frame is shifted back onto its input frame. Same shapes and info as the
    inner engine (the name gains "+mc"); the registration runs in numpy on any backend.
    """

    def __init__(self, engine, reference: int | None = None, upsample: int = UPSAMPLE) -> None:
        info = engine.info
        if info.task != "clutter-suppression" or info.window < 2:
            raise ValueError(f"{info.name}: motion compensation needs a windowed clutter-suppression engine")
        self.engine, self.upsample = engine, int(upsample)
        self.reference = info.window - 1 - info.window // 2 if reference is None else int(reference)
        if not 0 <= self.reference < info.window:
            raise ValueError(f"{info.name}: reference frame {self.reference} is outside its window of "
                             f"{info.window}")
        self.info = replace(info, name=f"{info.name}+mc")
        self.card = getattr(engine, "card", None)
        if hasattr(engine, "module"):  # the network itself (export, training): no registration in it
            self.module = engine.module
        self.artifact_sha256 = getattr(engine, "artifact_sha256", None)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 5 or x.shape[1] != self.info.window or x.shape[2] != 2:
            raise EngineInputError(f"{self.info.name}: expected (N, {self.info.window}, 2, H, W) I/Q "
                                   f"windows, got {x.shape}")
        check_finite(self.info.name, x)
        out: np.ndarray | None = None
        for i, window in enumerate(x):  # one window at a time: bounded memory at any batch
            aligned, shifts = align_window(window, self.reference, self.upsample)
            y = self.engine(aligned[None])[0]
            y = unshift(y, shifts[-1:] if len(y) == 1 else shifts)  # a last-frame engine: the newest's
            if out is None:
                out = np.empty((len(x), *y.shape), np.float32)
            out[i] = y
        return out


def from_artifact(art, engine):
    """load_artifact's hook for clutter-suppression artifacts: `engine` on motion-compensated
    windows where the card asks for it ({"motion_compensation": {"reference": int | null,
    "upsample": int}}), unchanged otherwise."""
    spec = art.card.get("motion_compensation")
    if not spec:
        return engine
    if not isinstance(spec, dict):
        raise ArtifactError(f"{art.path / 'card.json'}: motion_compensation must be an object, got {spec!r}")
    return MotionCompensated(engine, spec.get("reference"), int(spec.get("upsample", UPSAMPLE)))
