"""A particle under a microscope whose field of view rides on an XY stage: `sim:particle`.

The stage-tracking demo of issue 17: a particle moves in the sample plane as a constant-
velocity target driven by white acceleration noise (spectral density q2, um^2/s^3, exactly
discretized at dt = 1 / rate: the plant of engines/control/lqg.py per axis), and jitters by
N(0, r2) um around that path in each exposure (what makes its measured position noisy).
The camera (size x size pixels of pixel_um) sees the field centred on the stage's position:
the particle is a Gaussian spot (psf_px) of peak 1 on a background of pixel noise `noise`.
The stage is this source's `stage` (an XYStage: `position_um()`, `move_um(x, y)`, instant,
thread-safe); a controller re-centres the particle by moving it.

Frames: data float32 (1, size, size); truth {"offset_um": particle - stage (2,) (x, y), the
true offset without the jitter, "particle_um", "velocity_um_s" (the particle's), "stage_um"};
meta {"pixel_um", "dt", "q2", "r2", ...}. Image coordinates: x = column, y = row; the field's centre is
((size - 1) / 2, (size - 1) / 2) pixels.

URI: sim:particle?seed=1&rate=10&size=32&pixel_um=0.25&q2=1&r2=1&psf_px=1.5&noise=0.02
(speed 0: flat out; n_frames: end after that many).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

import numpy as np

from drivers.base import Frame, Pacer, SimulatedFrameSource, SourceInfo, check_pacing
from drivers.errors import SourceError
from drivers.uri import ParsedURI


@dataclass(frozen=True)
class ParticleParams:
    rate: float = 10.0  # frames/s; dt = 1 / rate
    size: int = 32  # pixels
    pixel_um: float = 0.25
    q2: float = 1.0  # white-acceleration spectral density, um^2/s^3
    r2: float = 1.0  # position jitter per exposure, um^2
    psf_px: float = 1.5
    noise: float = 0.02  # pixel noise std (spot peak 1)

    def __post_init__(self) -> None:
        if not self.rate > 0 or self.size < 4 or not self.pixel_um > 0 or not self.psf_px > 0:
            raise ValueError(f"need rate > 0, size >= 4, pixel_um > 0, psf_px > 0; got {self}")
        if self.q2 < 0 or self.r2 < 0 or self.noise < 0:
            raise ValueError(f"need q2, r2, noise >= 0; got q2={self.q2}, r2={self.r2}, noise={self.noise}")


class XYStage:
    """A simulated XY stage that moves instantly: position_um() -> (x, y), move_um(x, y)."""

    def __init__(self) -> None:
        self._xy = np.zeros(2)
        self._lock = threading.Lock()

    def position_um(self) -> tuple[float, float]:
        with self._lock:
            return float(self._xy[0]), float(self._xy[1])

    def move_um(self, x: float, y: float) -> None:
        if not (np.isfinite(x) and np.isfinite(y)):
            raise ValueError(f"stage target must be finite, got ({x}, {y})")
        with self._lock:
            self._xy = np.array([x, y], dtype=float)


class ParticleSimulator:
    """The particle's motion and the camera's frames (module docstring); `index` frames so far."""

    def __init__(self, params: ParticleParams, seed: int, stage: XYStage) -> None:
        self.p, self.stage, self.index = params, stage, 0
        self.rng = np.random.default_rng(seed)
        dt = 1.0 / params.rate
        self.A = np.array([[1.0, dt], [0.0, 1.0]])
        V = params.q2 * np.array([[dt**3 / 3, dt**2 / 2], [dt**2 / 2, dt]])
        self.Lv = np.linalg.cholesky(V) if params.q2 > 0 else np.zeros((2, 2))
        self.z = np.zeros((2, 2))  # per axis (position, velocity), um and um/s
        c = (params.size - 1) / 2
        self.grid = np.arange(params.size) - c

    def next_frame(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        p = self.p
        particle, velocity = self.z[:, 0].copy(), self.z[:, 1].copy()
        stage = np.array(self.stage.position_um())
        seen = particle + np.sqrt(p.r2) * self.rng.standard_normal(2)
        cx, cy = (seen - stage) / p.pixel_um
        img = np.exp(-((self.grid[None, :] - cx) ** 2 + (self.grid[:, None] - cy) ** 2) / (2 * p.psf_px**2))
        img = img + p.noise * self.rng.standard_normal(img.shape)
        self.z = self.z @ self.A.T + self.rng.standard_normal((2, 2)) @ self.Lv.T
        self.index += 1
        truth = {"offset_um": particle - stage, "particle_um": particle, "velocity_um_s": velocity,
                 "stage_um": stage}
        return img.astype(np.float32)[None], truth


class ParticleSource(SimulatedFrameSource):
    """Live Source of sim:particle paced at rate x speed; `stage` is the XY stage it images from."""

    def __init__(self, params: ParticleParams | None = None, *, seed: int = 0, speed: float = 1.0,
                 n_frames: int | None = None, uri: str = "sim:particle") -> None:
        self.uri = uri
        check_pacing(uri, speed)
        if n_frames is not None and n_frames < 0:
            raise SourceError(f"{uri}: n_frames must be >= 0, got {n_frames}")
        self.params = params or ParticleParams()
        self.seed, self.speed, self.n_frames = seed, speed, n_frames
        self.stage = XYStage()
        self._sim = None
        self._next = None

    def open(self) -> None:
        p = self.params
        self.stage.move_um(0.0, 0.0)
        self._sim = ParticleSimulator(p, self.seed, self.stage)
        self._pacer = Pacer(p.rate, self.speed)
        self._next = None
        self._info = SourceInfo(
            uri=self.uri, kind="frames", shape=(1, p.size, p.size), rate_hz=p.rate,
            meta={"simulator": "particle", "modality": "microscopy", "channels": ["intensity"],
                  "pixel_um": p.pixel_um, "dt": 1.0 / p.rate, "q2": p.q2, "r2": p.r2, "psf_px": p.psf_px,
                  "coordinates": "x = column, y = row; the field is centred on the stage position"},
            truth_shapes={"offset_um": (2,), "particle_um": (2,), "velocity_um_s": (2,), "stage_um": (2,)})

    def _render(self, k: int) -> Frame:
        data, truth = self._sim.next_frame()
        return Frame(index=k, t=k / self.params.rate, data=data, truth=truth)

    def xy_stage(self) -> XYStage:
        """The actuator a controller moves (the same object for the source's lifetime)."""
        return self.stage


_URI_FIELDS = {"rate": float, "size": int, "pixel_um": float, "q2": float, "r2": float, "psf_px": float,
               "noise": float}


def source_from_uri(parsed: ParsedURI) -> ParticleSource:
    """sim:particle?seed=1&rate=10&size=32&pixel_um=0.25&q2=1&r2=1&psf_px=1.5&noise=0.02&speed=1&n_frames=N."""
    parsed.check_known({*_URI_FIELDS, "seed", "speed", "n_frames"})
    values = {k: parsed.get(k, None, cast) for k, cast in _URI_FIELDS.items() if k in parsed.params}
    try:
        params = replace(ParticleParams(), **values)
    except ValueError as e:
        raise SourceError(f"{parsed.uri}: {e}") from None
    return ParticleSource(params, seed=parsed.get("seed", 0, int), speed=parsed.get("speed", 1.0, float),
                          n_frames=parsed.get("n_frames", None, int), uri=parsed.uri)
