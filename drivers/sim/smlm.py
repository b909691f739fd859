"""Single-molecule localization microscopy (SMLM): blinking fluorophores on tubulin-like filaments.

Coordinates. x = column, y = row, in nm from the top-left corner of the field. Camera
pixel (r, c) covers x in [c * pixel_nm, (c + 1) * pixel_nm) and y in [r * pixel_nm,
(r + 1) * pixel_nm), so its centre is at ((c + 0.5) * pixel_nm, (r + 0.5) * pixel_nm).
Fine-grid pixel (r, c) at upsample u covers x in [c * pixel_nm / u, (c + 1) * pixel_nm / u)
(and likewise y). Positions are float64 (K, 2) arrays of [x, y] in nm.

Sample. `n_filaments` worm-like chains (tangent angle a random walk, <dtheta^2> = ds /
persistence_nm) crossing a square field of size * pixel_nm, each a tube
`filament_width_nm` wide (25 nm: microtubules). `n_emitters` fluorophores sit at fixed,
uniformly random points of the tubes inside the field (uniform along the centreline and
across the width). `filament_image(u)` is the fraction of each fine pixel the tubes
cover, divided by its maximum (so max 1; at u = 8 a 12.5 nm pixel fits inside a 25 nm
tube and the scale is 1): the emitters' density, up to that scale.

Blinking. Each emitter switches between ON and OFF in continuous time with exponential
dwell times of means mean_on and mean_off (in frames; a two-state Markov chain started
in its stationary state). Frame k integrates [k, k + 1): an emitter that was ON for a
fraction f_i of it emits N_i = photons * f_i expected photons, and the frame's truth is
every emitter with f_i > 0. An emitter emits in a given frame with probability

    p_frame = d + (1 - d) (1 - exp(-1 / mean_off)),   d = mean_on / (mean_on + mean_off)

(ON at the frame's start, or switching on during it), so `density` (emitters per um^2
that emit in a frame, on average) fixes n_emitters = round(density * area / p_frame);
mean_off is given, not derived.

Image formation (per frame, camera pixel p = (r, c)):

    PSF        Gaussian, sigma = 0.21 wavelength / NA                     (psf_sigma_nm)
    mean       lambda_p = b + sum_i N_i Ey_i(r) Ex_i(c),
               Ex_i(c) = 1/2 [erf((x_{c+1} - x_i) / (sqrt 2 sigma)) - erf((x_c - x_i) / (sqrt 2 sigma))]
               (the PSF integrated over the pixel; Ey_i likewise; light outside the field is lost)
    photons    n_p ~ Poisson(lambda_p)                                    (shot noise)
    camera     ADU_p = clip(rint(gain (n_p + read_noise z_p) + offset), 0, 65535), z_p ~ N(0, 1)

Integrating the Gaussian over each pixel and Poisson-sampling the mean is the same in
distribution as drawing each of Poisson(N_i) photons from the PSF around its emitter
and histogramming them into pixels (a thinned Poisson process is Poisson in every
pixel, independently), at a cost independent of the photon count. Electrons = photons
(quantum efficiency 1); `adu_to_photons` inverts the camera's gain and offset.

Live source (`sim:smlm?...`, SmlmSource). Frame k: t = k / rate, data float32
(1, size, size) holding the uint16 ADU values exactly (meta["units"] = "adu"), and per
frame truth of fixed shape (a recording stores it as is):

    positions (n_emitters, 2) float32 nm [x, y]: row i is emitter i when it emits in the
              frame, NaN otherwise (the slot layout of sim:ceus)
    photons   (n_emitters,) float32: expected photons of emitter i in the frame
              (photons * its ON fraction; 0 when OFF)

The filament image is static, so it is not repeated in every frame (at 8x it is 1 MiB
a frame, 100 MiB/s at 100 fps): it is a deterministic function of (params, seed,
upsample), all three in meta, and `filament_from_meta(meta)` rebuilds it from a live
source's or a recording's SourceInfo.meta (SmlmSource.filament_image() for the live one).

Randomness: the seed spawns two streams, one for the sample (filaments, emitters) and
one for the dynamics (blinking, noise), drawn in a fixed order: the same (params, seed)
gives bit-identical frames, and the same seed with another density, brightness or
camera keeps the same filaments.

Cost (2-core dev box, one thread): a 64 x 64 frame takes about 0.27 ms of CPU at
density 1 and 0.55 ms at density 5, half of it numpy's Poisson sampler; every emitter's
pixel integrals are computed once when they fit in 32 MB (size 64 at density 5 needs
4 MB), else per frame for the emitters ON. The filament image at u = 8 takes about
0.06 s, once per simulator and u.

Source: the simulated tubulin of LSPARCOM (Dardikman-Yoffe & Eldar, Optics Express 2020)
and SPARCOM (Solomon et al.); ANCHORS.md "Microscopy super-resolution": 100 nm pixels,
high-density frames (a few emitters per um^2).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
from scipy.special import erf

from drivers.base import Frame, Pacer, SimulatedFrameSource, SourceInfo, check_pacing
from drivers.errors import SourceError
from drivers.uri import ParsedURI

_DS_NM = 10.0  # arc-length step of the stored filament centrelines
_SUB_NM = 3.2  # finest pitch of the grid that rasterizes the filament tubes
_CHUNK = 4096  # centreline points per rasterization chunk (bounds the temporaries)
_PSF_CACHE_BYTES = 32 << 20  # keep every emitter's pixel integrals when they fit in this


@dataclass(frozen=True, slots=True)
class SmlmParams:
    """Physics of one SMLM simulation: lengths in nm, times in frames, light in photons.

    density: emitters per um^2 that emit in a frame, on average (high-density regime ~
    1-5); with mean_on and mean_off it fixes n_emitters (module docstring). photons:
    expected photons of an emitter ON for a whole frame. background: photons per pixel
    per frame. read_noise in electrons rms, gain in ADU per electron, offset in ADU.
    rate: frames per second of the live source. Raises ValueError on an invalid value.
    """

    size: int = 64
    pixel_nm: float = 100.0
    na: float = 1.4
    wavelength_nm: float = 660.0
    n_filaments: int = 6
    filament_width_nm: float = 25.0
    density: float = 1.0
    mean_on: float = 2.0
    mean_off: float = 100.0
    photons: float = 1000.0
    background: float = 20.0
    read_noise: float = 1.5
    gain: float = 2.0
    offset: float = 100.0
    rate: float = 100.0
    persistence_nm: float = 10_000.0

    def __post_init__(self) -> None:
        for f in fields(self):
            if not math.isfinite(getattr(self, f.name)):
                raise ValueError(f"{f.name} must be finite, got {getattr(self, f.name)}")
        if self.size < 8:
            raise ValueError(f"size must be >= 8 pixels, got {self.size}")
        if self.n_filaments < 1:
            raise ValueError(f"n_filaments must be >= 1, got {self.n_filaments}")
        for name in ("pixel_nm", "na", "wavelength_nm", "filament_width_nm", "mean_on",
                     "mean_off", "gain", "rate", "persistence_nm"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("density", "photons", "background", "read_noise", "offset"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def psf_sigma_nm(self) -> float:
        """Gaussian PSF sigma = 0.21 wavelength / NA (Zhang et al., Appl. Opt. 2007)."""
        return 0.21 * self.wavelength_nm / self.na

    @property
    def field_nm(self) -> float:
        """Side of the square field."""
        return self.size * self.pixel_nm

    @property
    def duty_cycle(self) -> float:
        """d = mean_on / (mean_on + mean_off): the fraction of time an emitter is ON."""
        return self.mean_on / (self.mean_on + self.mean_off)

    @property
    def p_frame(self) -> float:
        """Probability that an emitter emits in a given frame (module docstring)."""
        d = self.duty_cycle
        return d + (1 - d) * -math.expm1(-1.0 / self.mean_off)

    @property
    def n_emitters(self) -> int:
        """round(density * area / p_frame), area in um^2."""
        return round(self.density * (self.field_nm / 1000.0) ** 2 / self.p_frame)


@dataclass(frozen=True, slots=True)
class _Filaments:
    """Centrelines sampled every _DS_NM of arc length, all filaments concatenated.

    A segment joins point j to j + 1; `seg` lists the j whose j + 1 is on the same filament.
    """

    points: np.ndarray  # (P, 2) float64 nm [x, y]
    seg: np.ndarray  # (S,) int64


def _make_filaments(p: SmlmParams, rng: np.random.Generator) -> _Filaments:
    """Worm-like chains through a random interior point, grown both ways out of the field."""
    F = p.field_nm
    margin = p.filament_width_nm
    max_steps = int(4 * F / _DS_NM)  # a chain curling inside the field still stops
    step_std = math.sqrt(_DS_NM / p.persistence_nm)
    points, seg, n = [], [], 0
    for _ in range(p.n_filaments):
        start = rng.uniform(0.1 * F, 0.9 * F, 2)
        theta0 = rng.uniform(0, 2 * np.pi)
        halves = []
        for direction in (0.0, np.pi):
            theta = theta0 + direction + np.cumsum(rng.normal(0, step_std, max_steps))
            xy = start + _DS_NM * np.cumsum(np.stack([np.cos(theta), np.sin(theta)], 1), 0)
            outside = np.flatnonzero(np.any((xy < -margin) | (xy > F + margin), axis=1))
            halves.append(xy[: outside[0] + 1] if len(outside) else xy)
        chain = np.concatenate([halves[1][::-1], start[None], halves[0]])
        points.append(chain)
        seg.append(n + np.arange(len(chain) - 1))
        n += len(chain)
    return _Filaments(np.concatenate(points), np.concatenate(seg))


def _place_emitters(p: SmlmParams, fil: _Filaments, rng: np.random.Generator) -> np.ndarray:
    """(n_emitters, 2) nm: uniform along the tubes (centreline + offset across), inside the field."""
    a, b = fil.points[fil.seg], fil.points[fil.seg + 1]
    t = b - a
    normal = np.stack([-t[:, 1], t[:, 0]], 1) / np.linalg.norm(t, axis=1, keepdims=True)
    F, n, out = p.field_nm, p.n_emitters, []
    while n > 0:
        k = rng.integers(len(a), size=2 * n + 16)
        u = rng.random((len(k), 1))
        across = rng.uniform(-0.5, 0.5, (len(k), 1)) * p.filament_width_nm
        xy = a[k] + u * t[k] + across * normal[k]
        xy = xy[np.all((xy >= 0) & (xy < F), axis=1)][:n]
        out.append(xy)
        n -= len(xy)
    return np.concatenate(out) if out else np.zeros((0, 2))


class SmlmSimulator:
    """A seeded SMLM simulation advancing one frame per `next_frame`; see the module docstring.

    After construction: `emitters` (n_emitters, 2) nm, fixed. After each next_frame:
    `on_time` (n_emitters,) float64, the fraction of that frame each emitter was ON
    (its expected photons are params.photons * on_time), and `index` the next frame.
    Not thread-safe: one thread calls it.
    """

    def __init__(self, params: SmlmParams, seed: int) -> None:
        self.params = p = params
        self.seed = seed
        sample_ss, dynamics_ss = np.random.SeedSequence(seed).spawn(2)
        sample_rng = np.random.default_rng(sample_ss)
        self._rng = np.random.default_rng(dynamics_ss)
        self._filaments = _make_filaments(p, sample_rng)
        self.emitters = _place_emitters(p, self._filaments, sample_rng)
        N = len(self.emitters)
        self._edges = np.arange(p.size + 1) * p.pixel_nm
        self._scale = 1.0 / (math.sqrt(2.0) * p.psf_sigma_nm)
        # the emitters never move: their pixel integrals are computed once when they fit
        self._psf_cache = None
        if N * 2 * p.size * 4 <= _PSF_CACHE_BYTES:
            self._psf_cache = (self._pixel_integrals(self.emitters[:, 0]),
                               self._pixel_integrals(self.emitters[:, 1]))
        self._on = self._rng.random(N) < p.duty_cycle  # stationary start
        self._t_switch = self._dwell(self._on)  # residual dwell times are exponential too
        self._start = np.empty(N)
        self.on_time = np.zeros(N)
        self.index = 0
        self._fine: dict[int, np.ndarray] = {}

    @property
    def n_emitters(self) -> int:
        return len(self.emitters)

    def _dwell(self, on: np.ndarray) -> np.ndarray:
        """Exponential dwell times (frames) of emitters entering the states `on`."""
        p = self.params
        return self._rng.exponential(1.0, len(on)) * np.where(on, p.mean_on, p.mean_off)

    def _blink(self) -> np.ndarray:
        """ON time of every emitter in frame [k, k + 1), advancing the switching times past it."""
        k, end = float(self.index), self.index + 1.0
        on, t_switch, start = self._on, self._t_switch, self._start
        on_time = np.zeros(len(on))
        start.fill(k)
        idx = np.flatnonzero(t_switch < end)
        while idx.size:  # usually one or two passes: most dwell times span frames
            t = t_switch[idx]
            on_time[idx] += on[idx] * (t - start[idx])
            start[idx] = t
            on[idx] = ~on[idx]
            t_switch[idx] = t + self._dwell(on[idx])
            idx = idx[t_switch[idx] < end]
        on_time += on * (end - start)
        return on_time

    def _pixel_integrals(self, coord: np.ndarray) -> np.ndarray:
        """(K, size) float32 PSF integrated over each pixel along one axis: 1/2 [erf(b) - erf(a)]."""
        e = erf((self._edges[None, :] - coord[:, None]) * self._scale)
        return (0.5 * np.diff(e, axis=1)).astype(np.float32)

    def next_frame(self) -> tuple[np.ndarray, np.ndarray]:
        """The next frame: uint16 (size, size) ADU, and (K, 2) float64 nm [x, y] of the
        emitters ON during it (order: emitter index)."""
        p = self.params
        self.on_time = self._blink()
        live = np.flatnonzero(self.on_time > 0)
        xy = self.emitters[live]
        n_i = p.photons * self.on_time[live]
        if self._psf_cache is not None:
            ex, ey = self._psf_cache[0][live], self._psf_cache[1][live]
        else:
            ex, ey = self._pixel_integrals(xy[:, 0]), self._pixel_integrals(xy[:, 1])
        # lambda = b + Ey^T diag(N) Ex: all emitters in one (size, K) @ (K, size) product
        lam = ((ey.T * n_i) @ ex).astype(np.float64)
        lam += p.background
        electrons = self._rng.poisson(lam).astype(np.float64)
        electrons += p.read_noise * self._rng.standard_normal(lam.shape, dtype=np.float32)
        adu = np.rint(p.gain * electrons + p.offset)
        np.clip(adu, 0, np.iinfo(np.uint16).max, out=adu)
        self.index += 1
        return adu.astype(np.uint16), xy

    def filament_image(self, upsample: int) -> np.ndarray:
        """float32 (size * u, size * u): fraction of each fine pixel inside a filament tube,
        divided by its maximum (max 1). Cached per upsample; a copy is returned."""
        if upsample < 1:
            raise ValueError(f"upsample must be >= 1, got {upsample}")
        if upsample not in self._fine:
            self._fine[upsample] = _rasterize(self.params, self._filaments, upsample)
        return self._fine[upsample].copy()


def _rasterize(p: SmlmParams, fil: _Filaments, upsample: int) -> np.ndarray:
    """Tube coverage per fine pixel, from a subgrid of s x s points per fine pixel.

    A subgrid point is inside when it lies within width / 2 of the centreline, i.e.
    inside the union of discs around centreline points spaced q / 2 (q the subgrid pitch).
    """
    fine_nm = p.pixel_nm / upsample
    s = max(1, math.ceil(fine_nm / _SUB_NM))
    q = fine_nm / s
    n = p.size * upsample * s
    r = p.filament_width_nm / 2
    # centreline points every <= q / 2 along each segment
    a, b = fil.points[fil.seg], fil.points[fil.seg + 1]
    m = math.ceil(_DS_NM / (q / 2))
    u = np.arange(m) / m
    c = (a[:, None, :] + u[None, :, None] * (b - a)[:, None, :]).reshape(-1, 2)
    c = np.concatenate([c, fil.points[fil.seg[-1] + 1][None]])
    c = c[np.all((c > -r) & (c < p.field_nm + r), axis=1)] / q  # in subgrid units
    k = math.ceil(r / q) + 1
    off = np.arange(-k, k + 1)
    inside = np.zeros((n, n), bool)
    r2 = (r / q) ** 2
    for i in range(0, len(c), _CHUNK):
        cc = c[i : i + _CHUNK]
        base = np.floor(cc).astype(np.int64)
        col = base[:, 0, None, None] + off[None, None, :]  # x -> column
        row = base[:, 1, None, None] + off[None, :, None]  # y -> row
        d2 = (col + 0.5 - cc[:, 0, None, None]) ** 2 + (row + 0.5 - cc[:, 1, None, None]) ** 2
        hit = (d2 <= r2) & (col >= 0) & (col < n) & (row >= 0) & (row < n)
        rows, cols = np.broadcast_to(row, hit.shape)[hit], np.broadcast_to(col, hit.shape)[hit]
        inside[rows, cols] = True
    cover = inside.reshape(n // s, s, n // s, s).mean(axis=(1, 3), dtype=np.float32)
    peak = cover.max()
    return cover / peak if peak > 0 else cover


@dataclass
class SmlmStack:
    """A simulated acquisition: frames uint16 (T, H, W) ADU, positions per frame (K_t, 2) nm
    [x, y] of the emitters ON, filament float32 (8 H, 8 W) (upsample 8), and the params."""

    frames: np.ndarray
    positions: list[np.ndarray]
    filament: np.ndarray
    params: SmlmParams


def simulate_stack(params: SmlmParams, n_frames: int, seed: int) -> SmlmStack:
    """n_frames frames of SmlmSimulator(params, seed) and its filament image at upsample 8."""
    if n_frames < 0:
        raise ValueError(f"n_frames must be >= 0, got {n_frames}")
    sim = SmlmSimulator(params, seed)
    frames = np.empty((n_frames, params.size, params.size), np.uint16)
    positions = []
    for t in range(n_frames):
        frames[t], xy = sim.next_frame()
        positions.append(xy)
    return SmlmStack(frames, positions, sim.filament_image(8), params)


def adu_to_photons(frames: np.ndarray, params: SmlmParams) -> np.ndarray:
    """(adu - offset) / gain as float32: photo-electrons (= photons), background included."""
    return ((np.asarray(frames, np.float32) - np.float32(params.offset))
            / np.float32(params.gain))


class SmlmSource(SimulatedFrameSource):
    """Live Source of an SMLM simulation, paced at params.rate x speed (0: flat out).

    See the module docstring for the frames, the truth and the meta. read() is called
    from one acquisition thread; it renders the frame before waiting for its deadline.
    Ends with SourceEnded after `n_frames` frames when given. open() restarts from frame 0.
    """

    def __init__(self, params: SmlmParams | None = None, *, seed: int = 0, speed: float = 1.0,
                 n_frames: int | None = None, upsample: int = 8, uri: str = "sim:smlm") -> None:
        self.uri = uri
        check_pacing(uri, speed)
        if n_frames is not None and n_frames < 0:
            raise SourceError(f"{uri}: n_frames must be >= 0, got {n_frames}")
        if upsample < 1:
            raise SourceError(f"{uri}: upsample must be >= 1, got {upsample}")
        self.params = params or SmlmParams()
        self.seed, self.speed, self.n_frames, self.upsample = seed, speed, n_frames, upsample
        self._sim: SmlmSimulator | None = None
        self._next: Frame | None = None

    def open(self) -> None:
        p = self.params
        self._sim = sim = SmlmSimulator(p, self.seed)
        self._pacer = Pacer(p.rate, self.speed)
        self._next = None
        N = sim.n_emitters
        sigma_px = p.psf_sigma_nm / p.pixel_nm
        self._info = SourceInfo(
            uri=self.uri, kind="frames", shape=(1, p.size, p.size), rate_hz=p.rate,
            meta={
                "simulator": "smlm",
                "reference": "simulated tubulin of LSPARCOM, Dardikman-Yoffe & Eldar, "
                             "Optics Express 2020",
                "channels": ["ADU"],
                "units": "adu",
                "modality": "microscopy",
                "coordinates": "x = column, y = row, nm from the field's top-left corner; "
                               "pixel (r, c) covers x in [c, c + 1) * pixel_nm",
                "pixel_nm": p.pixel_nm,
                "psf_sigma_nm": p.psf_sigma_nm,
                "psf_sigma_px": sigma_px,
                "upsample": self.upsample,
                "seed": self.seed,
                "n_emitters": N,
                "speed": self.speed,
                "n_frames": self.n_frames,
                "params": asdict(p),
                "model": {"psf_sigma_px": sigma_px, "psf_sigma_nm": p.psf_sigma_nm,
                          "pixel_nm": p.pixel_nm, "gain": p.gain, "offset": p.offset,
                          "background": p.background, "read_noise": p.read_noise},
                "truth": {"positions": "nm [x, y] of emitter i in row i, NaN when it does "
                                       "not emit in the frame",
                          "photons": "expected photons of emitter i in the frame",
                          "filament": "static: filament_from_meta(meta)"},
            },
            truth_shapes={"positions": (N, 2), "photons": (N,)},
        )

    def filament_image(self) -> np.ndarray:
        """float32 (size * upsample, size * upsample) filament image of this source (open)."""
        if self._sim is None:
            raise SourceError(f"{self.uri}: source is not open")
        return self._sim.filament_image(self.upsample)

    def _render(self, k: int) -> Frame:
        sim = self._sim
        adu, _ = sim.next_frame()
        emitting = sim.on_time > 0
        positions = np.full((sim.n_emitters, 2), np.nan, np.float32)
        positions[emitting] = sim.emitters[emitting]
        photons = (self.params.photons * sim.on_time).astype(np.float32)
        return Frame(k, k / self.params.rate, adu.astype(np.float32)[None],
                     {"positions": positions, "photons": photons})


def filament_from_meta(meta: dict[str, Any]) -> np.ndarray:
    """The filament image of a sim:smlm stream from its SourceInfo.meta (live or recorded)."""
    try:
        params = SmlmParams(**meta["params"])
        return SmlmSimulator(params, meta["seed"]).filament_image(meta["upsample"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"meta is not that of a sim:smlm stream ({type(e).__name__}: {e})"
                         ) from None


# URI key -> SmlmParams field
_URI_FIELDS: dict[str, tuple[str, type]] = {
    "size": ("size", int), "pixel": ("pixel_nm", float), "na": ("na", float),
    "wavelength": ("wavelength_nm", float), "filaments": ("n_filaments", int),
    "width": ("filament_width_nm", float), "density": ("density", float),
    "mean_on": ("mean_on", float), "mean_off": ("mean_off", float),
    "photons": ("photons", float), "background": ("background", float),
    "read_noise": ("read_noise", float), "gain": ("gain", float), "offset": ("offset", float),
    "rate": ("rate", float), "persistence": ("persistence_nm", float),
}


def source_from_uri(parsed: ParsedURI) -> SmlmSource:
    """sim:smlm?seed=1&rate=100&size=64&density=1&photons=1000&background=20&upsample=8...

    Keys: seed, rate (Hz), speed (0: flat out), n_frames, upsample (of the filament
    image), size (pixels), pixel (nm), na, wavelength (nm), filaments, width (nm),
    persistence (nm), density (per um^2), mean_on, mean_off (frames), photons,
    background (photons/pixel), read_noise (e-), gain (ADU/e-), offset (ADU).
    SourceError naming the URI on an unknown key or a bad value.
    """
    parsed.check_known({*_URI_FIELDS, "seed", "speed", "n_frames", "upsample"})
    values = {name: parsed.get(key, None, cast) for key, (name, cast) in _URI_FIELDS.items()
              if key in parsed.params}
    try:
        params = replace(SmlmParams(), **values)
    except ValueError as e:
        raise SourceError(f"{parsed.uri}: {e}") from None
    return SmlmSource(params, seed=parsed.get("seed", 0, int),
                      speed=parsed.get("speed", 1.0, float),
                      n_frames=parsed.get("n_frames", None, int),
                      upsample=parsed.get("upsample", 8, int), uri=parsed.uri)
