"""In-silico contrast-enhanced ultrasound (CEUS): complex I/Q frames of tissue and bubbles.

Contract. Each frame is D = H*(tissue scatterers) + H*(bubbles) + H*N on an H x W grid
(rows = axial/depth, cols = lateral), H a Gaussian PSF of peak 1 and the same H for all
three terms, so D = H1 L + H2 S + N with H1 = H2 = H (CORONA's model):

- tissue L: one scatterer per pixel, amplitude ~ U(0.6, 1) and uniform phase, blurred
  by the PSF (a periodic field), then moved rigidly by a slow sub-pixel displacement (a
  Fourier phase ramp) and scaled by a slow gain. Over a 20-frame window it is nearly
  rank 3 (the field and its two spatial derivatives): at the defaults the top 3
  singular components hold > 99.8% of its energy, the top 1 about 93%.
- bubbles S: point scatterers (modulus 3 x U(0.5, 1.5), a uniform phase kept for life,
  no Doppler) that flow along `n_vessels` smooth random curves, with a parabolic
  (Poiseuille) profile across each lumen. Each frame a live bubble dies with probability
  `p_death` (or when it leaves its vessel) and a free slot is filled with probability
  `p_birth`; the pool of `max_bubbles = floor(density * field area)` slots bounds the
  count, so `density` is the most bubbles per cm^2 and the mean is a little under
  density * p_birth / (p_birth + p_death). Vessels reach 3 PSF sigmas past the edges,
  so bubbles enter and leave smoothly and a position may lie just outside the field.
- noise N: I and Q each white Gaussian with std `noise_std`, added before the PSF.

A frame is float32 (2, H, W) [I, Q]; the truth is `tissue` and `bubbles` (same layout,
data = tissue + bubbles + filtered noise) and `positions` (max_bubbles, 2) in pixels
(row, col), row i holding slot i (NaN when free). Pixel (r, c) is centred at (r, c).
The same seed gives bit-identical frames. CeusSimulator makes batches (`frames`),
`windows` training windows, `CeusSource` the live Source of `sim:ceus?...`.

Source: the in-silico setup of CORONA, Solomon et al., "Deep unfolded robust PCA with
application to clutter suppression in ultrasound", IEEE TMI 2019 (arXiv 1811.08252):
128 x 128 frames of 0.12 mm pixels, PSF sigma (0.14, 0.32) mm, frames every 0.01 s,
tissue amplitude U(0.6, 1), bubble amplitude 3, noise 0.1 before the PSF, up to 130
bubbles per cm^2, birth/death 0.3 per frame, 32 x 32 x 20 training windows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import scipy.fft

from drivers.base import Frame, Pacer, SimulatedFrameSource, SourceInfo
from drivers.errors import SourceError
from drivers.uri import ParsedURI

_DS = 0.25  # arc-length step (pixels) of the stored vessel centerlines
_GAIN_DEPTH = 0.05  # relative depth of the slow tissue gain (a rank-1 change in time)
_SLOW_HZ = (0.2, 1.0)  # range of the tissue motion and gain frequencies (breathing..cardiac)


@dataclass(frozen=True, slots=True)
class CeusParams:
    """Physics of one simulation; lengths in mm, `density` in bubbles per cm^2 (the bound).

    psf_sigma_mm is (axial, lateral) = (rows, cols). p_birth and p_death are per frame,
    so lifetimes scale with `rate_hz`. Each vessel's peak speed is flow_mm_s x U(0.5, 1.5)
    in a random direction. Raises ValueError on an invalid value.
    """

    height: int = 128
    width: int = 128
    pixel_mm: float = 0.12
    psf_sigma_mm: tuple[float, float] = (0.14, 0.32)
    rate_hz: float = 100.0
    tissue_amp: tuple[float, float] = (0.6, 1.0)
    tissue_motion_mm: float = 0.3
    bubble_amp: float = 3.0
    noise_std: float = 0.1
    density: float = 100.0
    p_birth: float = 0.3
    p_death: float = 0.3
    n_vessels: int = 8
    vessel_diameter_mm: float = 0.06
    flow_mm_s: float = 5.0
    seed: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            for v in value if isinstance(value, tuple) else (value,):
                if not math.isfinite(v):
                    raise ValueError(f"{f.name} must be finite, got {value}")
        if self.height < 8 or self.width < 8:
            raise ValueError(f"height and width must be >= 8, got {self.height}x{self.width}")
        if min(self.pixel_mm, self.rate_hz, *self.psf_sigma_mm) <= 0:
            raise ValueError("pixel_mm, rate_hz and psf_sigma_mm must be > 0")
        if not 0 <= self.tissue_amp[0] <= self.tissue_amp[1]:
            raise ValueError(f"tissue_amp must be (low, high) with 0 <= low <= high, got "
                             f"{self.tissue_amp}")
        for name in ("tissue_motion_mm", "bubble_amp", "noise_std", "density",
                     "vessel_diameter_mm", "flow_mm_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not (0 <= self.p_birth <= 1 and 0 <= self.p_death <= 1
                and self.p_birth + self.p_death > 0):
            raise ValueError(f"p_birth, p_death must be in [0, 1], not both 0; got "
                             f"{self.p_birth}, {self.p_death}")
        if self.n_vessels < 1:
            raise ValueError(f"n_vessels must be >= 1, got {self.n_vessels}")

    @property
    def sigma_px(self) -> tuple[float, float]:
        """PSF sigma in pixels, (axial, lateral)."""
        return (self.psf_sigma_mm[0] / self.pixel_mm, self.psf_sigma_mm[1] / self.pixel_mm)

    @property
    def area_cm2(self) -> float:
        return self.height * self.width * (self.pixel_mm / 10.0) ** 2

    @property
    def max_bubbles(self) -> int:
        return int(self.density * self.area_cm2)


@dataclass(frozen=True, slots=True)
class _Vessels:
    """Centerlines sampled every _DS pixels of arc length, all vessels concatenated."""

    points: np.ndarray  # (P, 2) float64 (row, col)
    normals: np.ndarray  # (P, 2) unit normals, for the offset across the lumen
    start: np.ndarray  # (n_vessels,) int, first point of each vessel
    length: np.ndarray  # (n_vessels,) arc length in pixels (a multiple of _DS)
    vmax: np.ndarray  # (n_vessels,) signed centreline speed, pixels per frame


def _gaussian_kernel(h: int, w: int, sigma: tuple[float, float]) -> np.ndarray:
    """Peak-1 Gaussian on the periodic h x w grid, centred at (0, 0) (for circular FFT use)."""
    dy = np.minimum(np.arange(h), h - np.arange(h))
    dx = np.minimum(np.arange(w), w - np.arange(w))
    return np.exp(-0.5 * (dy[:, None] / sigma[0]) ** 2 - 0.5 * (dx[None, :] / sigma[1]) ** 2)


def _make_vessels(p: CeusParams, rng: np.random.Generator) -> _Vessels:
    """Smooth random curves crossing the field: a chord plus three sine bends."""
    sy, sx = p.sigma_px
    margin = 3.0 * max(sy, sx)  # beyond this a bubble no longer reaches the field
    lo = np.array([-margin, -margin])
    hi = np.array([p.height - 1 + margin, p.width - 1 + margin])
    size = np.array([p.height - 1, p.width - 1], dtype=float)
    pts, nrm, start, length = [], [], [], []
    n = 0
    for _ in range(p.n_vessels):
        centre = size * rng.uniform(0.15, 0.85, 2)
        theta = rng.uniform(0, np.pi)
        d = np.array([np.cos(theta), np.sin(theta)])
        # chord through `centre` clipped to the box extended by the margin
        with np.errstate(divide="ignore"):
            ends = np.sort(np.stack([(lo - centre) / d, (hi - centre) / d]), axis=0)
        lam0, lam1 = ends[0].max(), ends[1].min()
        chord = lam1 - lam0
        bends = rng.normal(0, 0.08 * chord / np.arange(1, 4))
        u = np.linspace(0, 1, int(chord / _DS * 4) + 2)
        offset = np.sin(np.pi * np.arange(1, 4)[None, :] * u[:, None]) @ bends
        curve = centre + (lam0 + u * chord)[:, None] * d + offset[:, None] * np.array([d[1], -d[0]])
        # resample at uniform arc length so a bubble's position is linear in its s
        arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(curve, axis=0).T))])
        s = np.arange(0.0, arc[-1], _DS)
        c = np.stack([np.interp(s, arc, curve[:, 0]), np.interp(s, arc, curve[:, 1])], axis=1)
        t = np.gradient(c, axis=0)
        t /= np.linalg.norm(t, axis=1, keepdims=True)
        pts.append(c)
        nrm.append(np.stack([t[:, 1], -t[:, 0]], axis=1))
        start.append(n)
        length.append((len(s) - 1) * _DS)
        n += len(s)
    px_per_frame = p.flow_mm_s / p.pixel_mm / p.rate_hz
    vmax = px_per_frame * rng.uniform(0.5, 1.5, p.n_vessels) * rng.choice([-1.0, 1.0], p.n_vessels)
    return _Vessels(np.concatenate(pts), np.concatenate(nrm), np.array(start),
                    np.array(length), vmax)


class CeusSimulator:
    """A seeded CEUS simulation advancing one frame per `step`; see the module docstring.

    All randomness comes from one generator seeded by `params.seed`, drawn in a fixed
    order, so the same seed gives bit-identical frames; `seed` overrides params.seed
    (any value numpy's default_rng accepts, e.g. [seed, i] for independent runs).
    """

    def __init__(self, params: CeusParams | None = None,
                 seed: int | Sequence[int] | None = None) -> None:
        p = self.params = params or CeusParams()
        rng = self._rng = np.random.default_rng(p.seed if seed is None else seed)
        H, W = p.height, p.width
        self.index = 0
        self._sigma = p.sigma_px
        self._rows = np.arange(H, dtype=np.float32)
        self._cols = np.arange(W, dtype=np.float32)
        self._psf_hat = scipy.fft.fft2(_gaussian_kernel(H, W, self._sigma)).real
        scatter = rng.uniform(*p.tissue_amp, (H, W)) * np.exp(2j * np.pi * rng.random((H, W)))
        self._tissue_hat = (scipy.fft.fft2(scatter) * self._psf_hat).astype(np.complex64)
        # the DFT of white complex noise is white: draw the noise in the Fourier domain
        self._noise_scale = (p.noise_std * math.sqrt(H * W) * self._psf_hat).astype(np.float32)
        self._ky = np.fft.fftfreq(H)
        self._kx = np.fft.fftfreq(W)
        amp_px = p.tissue_motion_mm / p.pixel_mm
        self._motion = (amp_px, rng.uniform(*_SLOW_HZ, 3), rng.uniform(0, 2 * np.pi, 3))
        self._spec = np.empty((2, H, W), np.complex64)  # tissue and noise spectra
        self._noise = np.empty((2, H, W), np.float32)

        self._vessels = _make_vessels(p, rng)
        self._radius = p.vessel_diameter_mm / 2 / p.pixel_mm
        M = self.max_bubbles = p.max_bubbles
        self._alive = rng.random(M) < p.p_birth / (p.p_birth + p.p_death)  # steady state
        self._vessel = np.zeros(M, np.int64)
        self._s = np.zeros(M)
        self._r = np.zeros(M)
        self._amp = np.zeros(M, np.complex128)
        self._v = np.zeros(M)
        self._spawn(np.flatnonzero(self._alive))

    @property
    def shape(self) -> tuple[int, int, int]:
        return (2, self.params.height, self.params.width)

    def _spawn(self, slots: np.ndarray) -> None:
        """New bubbles in `slots`: a vessel by length, a point on it, an offset, an amplitude."""
        n, v, rng = len(slots), self._vessels, self._rng
        k = rng.choice(len(v.length), n, p=v.length / v.length.sum())
        self._vessel[slots] = k
        self._s[slots] = rng.uniform(0, 1, n) * v.length[k]
        r = self._r[slots] = self._radius * rng.uniform(-1, 1, n)
        self._v[slots] = v.vmax[k] * (1 - (r / self._radius) ** 2) if self._radius else v.vmax[k]
        modulus = self.params.bubble_amp * rng.uniform(0.5, 1.5, n)
        self._amp[slots] = modulus * np.exp(2j * np.pi * rng.random(n))

    def _positions(self, slots: np.ndarray) -> np.ndarray:
        """(len(slots), 2) positions (row, col): interpolated centreline plus the offset."""
        v = self._vessels
        f = self._s[slots] / _DS
        last = np.rint(v.length[self._vessel[slots]] / _DS).astype(np.int64) - 1
        i = np.minimum(f.astype(np.int64), last)  # s == length interpolates to the end point
        frac = (f - i)[:, None]
        j = v.start[self._vessel[slots]] + i
        centre = v.points[j] * (1 - frac) + v.points[j + 1] * frac
        return centre + self._r[slots, None] * v.normals[j]

    def _render(self, data: np.ndarray, tissue: np.ndarray, bubbles: np.ndarray,
                positions: np.ndarray) -> None:
        """Write frame `self.index` into the given arrays, then advance the bubbles."""
        p = self.params
        t = self.index / p.rate_hz
        amp_px, freq, phase = self._motion
        dy, dx, g = np.sin(2 * np.pi * freq * t + phase) * [amp_px, amp_px, _GAIN_DEPTH]
        # rigid sub-pixel shift: f(x - d) <-> F(k) exp(-2 pi i k d); the gain scales it
        ey = ((1 + g) * np.exp(-2j * np.pi * self._ky * dy)).astype(np.complex64)
        ex = np.exp(-2j * np.pi * self._kx * dx).astype(np.complex64)
        np.multiply(self._tissue_hat, ey[:, None], out=self._spec[0])
        self._spec[0] *= ex
        self._rng.standard_normal((2, p.height, p.width), dtype=np.float32, out=self._noise)
        self._noise *= self._noise_scale
        self._spec[1].real, self._spec[1].imag = self._noise
        z = scipy.fft.ifft2(self._spec, axes=(-2, -1), overwrite_x=True, workers=1)
        tissue[0], tissue[1] = z[0].real, z[0].imag

        # separable PSF: bubbles = Gy^T diag(a) Gx, one small matmul for all bubbles
        live = np.flatnonzero(self._alive)
        pos = self._positions(live)
        positions.fill(np.nan)
        positions[live] = pos
        pos32 = pos.astype(np.float32)
        gy = np.exp(-0.5 * ((self._rows[None, :] - pos32[:, :1]) / self._sigma[0]) ** 2)
        gx = np.exp(-0.5 * ((self._cols[None, :] - pos32[:, 1:]) / self._sigma[1]) ** 2)
        a = self._amp[live]
        left = np.stack([gy.T * a.real.astype(np.float32), gy.T * a.imag.astype(np.float32)])
        np.matmul(left, gx, out=bubbles)
        np.add(tissue, bubbles, out=data)
        data[0] += z[1].real
        data[1] += z[1].imag
        self._advance()
        self.index += 1

    def _advance(self) -> None:
        """Flow, then death (random or leaving the vessel), then birth in free slots."""
        p, alive = self.params, self._alive
        self._s += self._v
        u = self._rng.random((2, self.max_bubbles))
        out = (self._s < 0) | (self._s > self._vessels.length[self._vessel])
        born = ~alive & (u[1] < p.p_birth)  # a slot freed now is reborn next frame at best
        alive &= ~(out | (u[0] < p.p_death))
        alive |= born
        self._spawn(np.flatnonzero(born))

    def frames(self, n: int) -> dict[str, np.ndarray]:
        """The next n frames: data, tissue, bubbles (n, 2, H, W) float32, positions (n, M, 2)."""
        out = {key: np.empty((n, *self.shape), np.float32) for key in ("data", "tissue", "bubbles")}
        out["positions"] = np.empty((n, self.max_bubbles, 2), np.float32)
        for i in range(n):
            self._render(out["data"][i], out["tissue"][i], out["bubbles"][i], out["positions"][i])
        return out

    def step(self) -> dict[str, np.ndarray]:
        """The next frame, as `frames(1)` without the leading axis."""
        return {key: value[0] for key, value in self.frames(1).items()}

    def vessel_map(self, upsample: int = 8) -> np.ndarray:
        """float32 (H*upsample, W*upsample): 1 on the vessel lumens, where bubbles can be.

        Fine pixel j is centred at coarse coordinate (j + 0.5) / upsample - 0.5. A lumen
        thinner than a fine pixel still marks the fine pixels its centreline crosses.
        """
        if upsample < 1:
            raise ValueError(f"upsample must be >= 1, got {upsample}")
        p, v = self.params, self._vessels
        Hf, Wf = p.height * upsample, p.width * upsample
        radius = max(self._radius * upsample, 0.5)
        # centreline points every 1/4 fine pixel; a lumen is the union of discs around them
        idx = np.arange(0, len(v.points) - 1, 0.25 / (_DS * upsample))
        i = idx.astype(np.int64)
        frac = (idx - i)[:, None]
        ok = np.isin(i + 1, v.start, invert=True)  # do not bridge one vessel's end to the next
        c = (v.points[i] * (1 - frac) + v.points[i + 1] * frac)[ok]
        c = (c + 0.5) * upsample - 0.5
        k = int(np.ceil(radius))
        off = np.stack(np.meshgrid(np.arange(-k, k + 1), np.arange(-k, k + 1), indexing="ij"), -1)
        cand = np.rint(c).astype(np.int64)[:, None, None, :] + off
        hit = ((cand - c[:, None, None, :]) ** 2).sum(-1) <= radius**2
        hit &= (cand[..., 0] >= 0) & (cand[..., 0] < Hf) & (cand[..., 1] >= 0) & (cand[..., 1] < Wf)
        out = np.zeros((Hf, Wf), np.float32)
        out[cand[hit][:, 0], cand[hit][:, 1]] = 1.0
        return out


def windows(params: CeusParams, n_windows: int, T: int = 20, patch: int = 32
            ) -> dict[str, np.ndarray]:
    """Training windows D, L, S float32 (n_windows, T, 2, patch, patch) (data, tissue, bubbles).

    Simulation j (seeded by [params.seed, j], independent of the others) runs T frames and
    is tiled into its (H // patch) * (W // patch) non-overlapping patches, windows
    j*tiles ... (j+1)*tiles - 1. Use different params.seed for train, validation and test.
    """
    ny, nx = params.height // patch, params.width // patch
    if ny * nx == 0:
        raise ValueError(f"patch {patch} is larger than the field {params.height}x{params.width}")
    tiles = ny * nx
    out = {key: np.empty((n_windows, T, 2, patch, patch), np.float32) for key in "DLS"}
    for j in range(math.ceil(n_windows / tiles)):
        f = CeusSimulator(params, seed=[params.seed, j]).frames(T)
        for key, name in zip("DLS", ("data", "tissue", "bubbles"), strict=True):
            x = f[name][:, :, : ny * patch, : nx * patch].reshape(T, 2, ny, patch, nx, patch)
            x = x.transpose(2, 4, 0, 1, 3, 5).reshape(tiles, T, 2, patch, patch)
            n = min(tiles, n_windows - j * tiles)
            out[key][j * tiles : j * tiles + n] = x[:n]
    return out


class CeusSource(SimulatedFrameSource):
    """Live Source of a CEUS simulation, paced at params.rate_hz x speed (0: flat out).

    Frame k has t = k / rate_hz and truth tissue, bubbles, positions. Ends with
    SourceEnded after `n_frames` frames when given. open() restarts from frame 0.
    """

    def __init__(self, params: CeusParams | None = None, *, speed: float = 1.0,
                 n_frames: int | None = None, uri: str = "sim:ceus") -> None:
        if speed < 0 or not math.isfinite(speed):
            raise ValueError(f"speed must be finite and >= 0, got {speed}")
        if n_frames is not None and n_frames < 0:
            raise ValueError(f"n_frames must be >= 0, got {n_frames}")
        self.params = params or CeusParams()
        self.speed, self.n_frames, self.uri = speed, n_frames, uri
        self._sim: CeusSimulator | None = None
        self._next: Frame | None = None

    def open(self) -> None:
        p = self.params
        self._sim = CeusSimulator(p)
        self._pacer = Pacer(p.rate_hz, self.speed)
        self._next = None
        shape = self._sim.shape
        params = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(p).items()}
        self._info = SourceInfo(
            uri=self.uri, kind="frames", shape=shape, rate_hz=p.rate_hz,
            meta={
                "simulator": "ceus",
                "reference": "CORONA in-silico CEUS, Solomon et al., IEEE TMI 2019",
                "channels": ["I", "Q"],
                "axes": ["axial (rows)", "lateral (cols)"],
                "pixel_mm": p.pixel_mm,
                "psf_sigma_mm": list(p.psf_sigma_mm),
                "psf_sigma_px": list(p.sigma_px),
                "max_bubbles": self._sim.max_bubbles,
                "speed": self.speed,
                "n_frames": self.n_frames,
                "params": params,
                "model": {"psf_sigma_px": list(p.sigma_px), "psf_peak": 1.0,
                          "noise_std": p.noise_std},
            },
            truth_shapes={"tissue": shape, "bubbles": shape,
                          "positions": (self._sim.max_bubbles, 2)},
        )

    def _render(self, k: int) -> Frame:
        f = self._sim.step()
        return Frame(k, k / self.params.rate_hz, f["data"],
                     {"tissue": f["tissue"], "bubbles": f["bubbles"], "positions": f["positions"]})


# URI key -> CeusParams field; `size` sets height and width, `speed` and `n_frames` the source
_URI_FIELDS: dict[str, tuple[str, type]] = {
    "seed": ("seed", int), "rate": ("rate_hz", float), "height": ("height", int),
    "width": ("width", int), "pixel": ("pixel_mm", float), "density": ("density", float),
    "birth": ("p_birth", float), "death": ("p_death", float), "vessels": ("n_vessels", int),
    "diameter": ("vessel_diameter_mm", float), "flow": ("flow_mm_s", float),
    "motion": ("tissue_motion_mm", float), "noise": ("noise_std", float),
    "amp": ("bubble_amp", float),
}


def source_from_uri(parsed: ParsedURI) -> CeusSource:
    """sim:ceus?seed=1&rate=100&speed=1&size=128&density=100&n_frames=500&vessels=8&flow=5...

    Keys: seed, rate (Hz), speed (0: flat out), size (or height, width), pixel (mm),
    density (most bubbles per cm^2), birth, death (per frame), vessels, diameter (mm),
    flow (mm/s), motion (tissue, mm), noise (std before the PSF), amp (bubble mean
    modulus), n_frames. SourceError naming the URI on an unknown key or a bad value.
    """
    parsed.check_known({*_URI_FIELDS, "size", "speed", "n_frames"})
    size = parsed.get("size", None, int)
    values = {} if size is None else {"height": size, "width": size}
    for key, (name, cast) in _URI_FIELDS.items():
        if key in parsed.params:
            values[name] = parsed.get(key, None, cast)
    n_frames = parsed.get("n_frames", None, int)
    try:
        return CeusSource(replace(CeusParams(), **values), speed=parsed.get("speed", 1.0, float),
                          n_frames=n_frames, uri=parsed.uri)
    except ValueError as e:
        raise SourceError(f"{parsed.uri}: {e}") from None
