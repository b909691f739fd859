"""The Lorenz attractor observed in noise: the KalmanNet tracking benchmark, as data.

State x = (x1, x2, x3), observed through h with additive noise:

    dx/dt = A(x) x,   A(x) = [[-10, 10, 0], [28, -1, -x1], [0, x1, -8/3]]
    F(x) = sum_{j=0..J} (A(x) dt)^j / j!          (A frozen at x over one step)
    x_{t+1} = F(x_t) x_t + w_t,   w_t ~ N(0, q2 I)
    y_t = h(x_t) + v_t,           v_t ~ N(0, r2 I)

Observation models h (m = 3 for all):
  "identity"   y = x.
  "rotated"    y = R_z(angle_deg) x: the first two components rotated by angle_deg about
               the x3 axis, x3 unchanged. (The rotation-mismatch anchor only says "a 1 degree
               rotation"; we rotate about one axis so that the angle is the one number
               that describes the mismatch.)
  "spherical"  y = (range, elevation, azimuth): range = |x|, elevation = atan2(x3,
               sqrt(x1^2 + x2^2)) in [-pi/2, pi/2], azimuth = atan2(x2, x1) in (-pi, pi].
               Angles in radians; the noise is added to all three as they are.

Sampling-mismatch truth (`decimate=k`): the state is integrated with the same scheme at
the fine step dt / k (order `fine_J`) and every k-th state is kept, so samples are
`dt` apart while a filter's dt-model is only an approximation (seed Table 2: dt = 0.02,
k = 2000, fine dt = 1e-5, J = 5, q2 = 0, identity obs, r2 = 1). Process noise, if any,
is added once per sample, after the k fine steps.

Accuracy: freezing A(x) over a step makes the scheme first-order accurate whatever J
(its error against the ODE shrinks like dt; J > 2 changes nothing visible): over 0.1 s
from x0 it is 1.6e-5 off at dt = 1e-5 and 3e-2 off at dt = 0.02. That gap is the
sampling mismatch a dt = 0.02 filter faces.

Trajectories: `x[:, t]` is the state after t + 1 steps from x0 (x0 itself is the
filters' prior, not a sample). With q2 = 0 and x0_std = 0 every trajectory shares one
truth and only the observation noise differs; give x0_std > 0 for independent truths
(the anchor warns against reusing one trajectory for training and testing).

Speed (2-core dev box): one trajectory is integrated with Python floats (0.75 us per
fine step, 10x faster than numpy on 3-vectors), a batch with numpy arrays (about 0.1
ms per fine step for 1000 trajectories); both run the same arithmetic and agree bit
for bit. dt-model samples cost microseconds (the live source does ~150k/s flat out).
A sampling-mismatch sample (2000 fine steps) costs 1.5 ms: the live source reaches
~650 samples/s flat out, so 500 Hz keeps ~75% of a core busy in Python, holding the
GIL; an engine thread in the same process then sees its p99 step latency grow to the
interpreter's 5 ms switch interval. Run it live at a lower rate or in its own process;
for data sets, 1000 trajectories x 3000 samples take about 5 minutes.

Source: Revach et al., "KalmanNet", IEEE TSP 2022, sec. V; seed Example 18, Table 2;
ANCHORS.md "Tracking - KalmanNet on the Lorenz attractor".
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from drivers.base import Pacer, Sample, SourceBase, SourceInfo
from drivers.errors import SourceEnded, SourceError

OBSERVATIONS = ("identity", "rotated", "spherical")

# Below this many trajectories, a Python loop over rows of floats beats numpy arrays.
_FLOAT_ROWS_MAX = 32
# Integration steps the live source computes ahead per chunk (about 0.2 ms of work per
# 256 dt-model steps; a sampling-mismatch chunk is one sample of 2000 fine steps).
_CHUNK_STEPS = 256


@dataclass(frozen=True, slots=True)
class LorenzParams:
    """One Lorenz setup: the dynamics, the noise, the observation and the live pacing.

    J, dt: Taylor order and sample interval of the model x_{t+1} = F(x_t) x_t.
    q2, r2: process and observation noise variances.
    obs, angle_deg: the observation model (see the module docstring).
    x0, x0_std: initial state; each trajectory starts at x0 + x0_std * N(0, I).
    decimate: None (the data follow the dt-model), or k fine steps of dt / k per sample
      (sampling-mismatch truth) integrated with Taylor order fine_J.
    seed: the only source of randomness; same seed, same trajectories.
    rate_hz: live samples per second (the simulation's own clock advances dt per sample).
    Defaults: the anchor's noisy-state setting nu = q2 / r2 = -20 dB at 1/r2 = 0 dB.
    """

    J: int = 5
    dt: float = 0.02
    q2: float = 0.01
    r2: float = 1.0
    obs: str = "identity"
    angle_deg: float = 0.0
    x0: tuple[float, float, float] = (1.0, 1.0, 1.0)
    x0_std: float = 0.0
    decimate: int | None = None
    fine_J: int = 5
    seed: int = 0
    rate_hz: float = 500.0

    def __post_init__(self) -> None:
        if self.J < 1 or self.fine_J < 1:
            raise ValueError(f"Taylor orders must be >= 1, got J={self.J}, fine_J={self.fine_J}")
        if not self.dt > 0:
            raise ValueError(f"dt must be > 0, got {self.dt}")
        if self.q2 < 0 or self.r2 < 0 or self.x0_std < 0:
            raise ValueError(
                f"q2, r2, x0_std must be >= 0, got {self.q2}, {self.r2}, {self.x0_std}"
            )
        if self.obs not in OBSERVATIONS:
            raise ValueError(f"obs must be one of {', '.join(OBSERVATIONS)}, got {self.obs!r}")
        if len(self.x0) != 3 or not all(math.isfinite(v) for v in self.x0):
            raise ValueError(f"x0 must be 3 finite numbers, got {self.x0}")
        if self.decimate is not None and self.decimate < 1:
            raise ValueError(f"decimate must be None or >= 1, got {self.decimate}")
        if self.rate_hz < 0:
            raise ValueError(f"rate_hz must be >= 0, got {self.rate_hz}")

    @property
    def m(self) -> int:
        """Observation dimension."""
        return 3

    @property
    def steps_per_sample(self) -> int:
        return 1 if self.decimate is None else self.decimate

    @property
    def step_dt(self) -> float:
        """Integration step: dt, or dt / decimate for the sampling-mismatch truth."""
        return self.dt if self.decimate is None else self.dt / self.decimate

    @property
    def step_J(self) -> int:
        return self.J if self.decimate is None else self.fine_J

    def model(self) -> dict:
        """What a model-based filter needs, named like `engines.load("ekf")`'s parameters.

        q2 is None when the data have no process noise: the filter then picks its own
        (the dt-model error of sampling mismatch is not a white-noise variance we know).
        p0 is the prior variance of the initial state, x0_std^2.
        """
        return {
            "J": self.J,
            "dt": self.dt,
            "q2": self.q2 if self.q2 > 0 else None,
            "r2": self.r2,
            "obs": self.obs,
            "angle_deg": self.angle_deg,
            "x0": list(self.x0),
            "p0": self.x0_std**2,
        }


def _taylor_flow(a, b, c, hs: tuple[float, ...], steps: int):
    """`steps` of x <- F(x) x on components (floats or equally shaped arrays).

    Horner form of sum_j (A dt)^j / j! x: w <- x + (dt / j) A(x) w for j = J..1, with
    A(x) w = (10 (w2 - w1), 28 w1 - w2 - x1 w3, x1 w2 - 8/3 w3); hs = (dt/J, ..., dt/1).
    """
    for _ in range(steps):
        p, q, r = a, b, c
        for h in hs:
            p, q, r = (
                a + h * (10.0 * (q - p)),
                b + h * (28.0 * p - q - a * r),
                c + h * (a * q - (8.0 / 3.0) * r),
            )
        a, b, c = p, q, r
    return a, b, c


def lorenz_flow(x: np.ndarray, dt: float, J: int, steps: int = 1) -> np.ndarray:
    """Apply x <- F(x) x `steps` times to states x (n, 3) float64; returns (n, 3)."""
    x = np.asarray(x, dtype=np.float64)
    hs = tuple(dt / j for j in range(J, 0, -1))
    if x.shape[0] <= _FLOAT_ROWS_MAX:
        return np.array([_taylor_flow(*row, hs, steps) for row in x.tolist()]).reshape(x.shape)
    return np.stack(_taylor_flow(x[:, 0].copy(), x[:, 1].copy(), x[:, 2].copy(), hs, steps), 1)


def lorenz_step(x: np.ndarray, dt: float = 0.02, J: int = 5) -> np.ndarray:
    """f(x) = F(x) x for states x (n, 3): one step of the discretized Lorenz model."""
    return lorenz_flow(x, dt, J, 1)


def rotation(angle_deg: float) -> np.ndarray:
    """R = R_z R_y R_x (3, 3), each elementary rotation by angle_deg (roll = pitch = yaw).

    The rotation mismatch of the KalmanNet reference (its observation H = R with 1 degree
    about every axis); a rotation about x3 alone is a milder mismatch (measured: the EKF
    at 1/r^2 = 30 dB gets -25.4 dB with x3 only, against the anchor's -18.6)."""
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    Rx = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    Ry = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    Rz = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return Rz @ Ry @ Rx


def lorenz_observe(x: np.ndarray, obs: str = "identity", angle_deg: float = 0.0) -> np.ndarray:
    """h(x) for states x (..., 3) -> (..., 3), without noise (see the module docstring)."""
    if obs == "identity":
        return x.copy()
    if obs == "rotated":
        return x @ rotation(angle_deg).T
    if obs == "spherical":
        x1, x2, x3 = x[..., 0], x[..., 1], x[..., 2]
        rho = np.hypot(x1, x2)
        return np.stack((np.hypot(rho, x3), np.arctan2(x3, rho), np.arctan2(x2, x1)), -1)
    raise ValueError(f"obs must be one of {', '.join(OBSERVATIONS)}, got {obs!r}")


class LorenzStream:
    """n trajectories advanced chunk by chunk; the chunks concatenate to one long run.

    Noise is drawn time-major, so `advance(a)` then `advance(b)` gives exactly
    `advance(a + b)`: the live source and `trajectories` produce the same data.
    """

    def __init__(self, params: LorenzParams, n: int) -> None:
        if n < 1:
            raise ValueError(f"need n >= 1 trajectories, got {n}")
        self.params, self.n = params, n
        rng_x0, rng_w, rng_v = (np.random.default_rng(s) for s in
                                np.random.SeedSequence(params.seed).spawn(3))
        self._rng_w, self._rng_v = rng_w, rng_v
        x0 = np.broadcast_to(np.asarray(params.x0, dtype=np.float64), (n, 3))
        self.x = x0 + params.x0_std * rng_x0.standard_normal((n, 3)) if params.x0_std else x0

    def advance(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The next k samples: states (n, k, 3) and observations (n, k, m), float64."""
        p = self.params
        xs = np.empty((k, self.n, 3))
        w = math.sqrt(p.q2) * self._rng_w.standard_normal((k, self.n, 3)) if p.q2 else None
        x = self.x
        for t in range(k):
            x = lorenz_flow(x, p.step_dt, p.step_J, p.steps_per_sample)
            if w is not None:
                x = x + w[t]
            xs[t] = x
        self.x = x
        ys = lorenz_observe(xs, p.obs, p.angle_deg)
        if p.r2:
            ys += math.sqrt(p.r2) * self._rng_v.standard_normal(ys.shape)
        return xs.transpose(1, 0, 2).copy(), ys.transpose(1, 0, 2).copy()


class LorenzSimulator:
    """Batches of Lorenz trajectories for training and evaluation (numpy, float64)."""

    def __init__(self, params: LorenzParams | None = None) -> None:
        self.params = params or LorenzParams()

    def stream(self, n: int = 1) -> LorenzStream:
        return LorenzStream(self.params, n)

    def trajectories(self, n: int, T: int) -> tuple[np.ndarray, np.ndarray]:
        """n trajectories of T samples: x (n, T, 3), y (n, T, m); deterministic by seed."""
        return self.stream(n).advance(T)


class LorenzSource(SourceBase):
    """Live Source of Lorenz observations: Sample(index, t = index * dt, y_t, {"state": x_t}).

    Paced at params.rate_hz * speed (speed 0: as fast as it can compute); ends with
    SourceEnded after n_samples when given. Samples are computed in chunks before the
    pacer waits, so the computing overlaps the waiting. A sampling-mismatch sample costs
    about 1.5 ms of Python: above about 600 Hz the stream runs late (see module docstring).
    `missing` in [0, 1): the probability that a sample's observation is lost (its value all
    NaN, its truth kept; drawn from the seed), e.g. a sensor that drops readings.
    """

    def __init__(
        self,
        params: LorenzParams | None = None,
        *,
        n_samples: int | None = None,
        speed: float = 1.0,
        uri: str = "sim:lorenz",
        missing: float = 0.0,
    ) -> None:
        if n_samples is not None and n_samples < 0:
            raise SourceError(f"{uri}: n must be >= 0, got {n_samples}")
        if not 0.0 <= missing < 1.0:
            raise SourceError(f"{uri}: missing must be in [0, 1), got {missing}")
        self.missing = float(missing)
        if speed < 0:
            raise SourceError(f"{uri}: speed must be >= 0, got {speed}")
        self.params = params or LorenzParams()
        self.uri, self.n_samples, self.speed = uri, n_samples, speed
        self._chunk = max(1, _CHUNK_STEPS // self.params.steps_per_sample)
        self._stream: LorenzStream | None = None

    def open(self) -> None:
        """Start the stream from the seed (re-opening starts it again)."""
        p = self.params
        self._stream = LorenzStream(p, 1)
        self._lost = np.random.default_rng(np.random.SeedSequence(p.seed).spawn(4)[3])
        self._pacer = Pacer(p.rate_hz, self.speed)
        self._index, self._pos = 0, 0
        self._x = self._y = np.empty((0, 3))
        self._info = SourceInfo(
            uri=self.uri,
            kind="samples",
            shape=(p.m,),
            rate_hz=p.rate_hz,
            meta={"simulator": "lorenz", "params": asdict(p), "model": p.model()},
            truth_shapes={"state": (3,)},
        )

    def read(self, timeout: float = 0.1) -> Sample | None:
        """The next Sample once it is due, or None if it is not due within `timeout`."""
        if self._stream is None:
            raise SourceError(f"{self.uri}: source is not open")
        k = self._index
        if self.n_samples is not None and k >= self.n_samples:
            raise SourceEnded(f"{self.uri}: ended after {self.n_samples} samples")
        if self._pos == len(self._x):
            left = self._chunk if self.n_samples is None else min(self._chunk, self.n_samples - k)
            x, y = self._stream.advance(left)
            self._x, self._y, self._pos = x[0], y[0], 0
        if not self._pacer.wait(k, timeout):
            return None
        i = self._pos
        self._index, self._pos = k + 1, i + 1
        value = self._y[i]
        if self.missing and self._lost.random() < self.missing:
            value = np.full_like(value, np.nan)
        return Sample(index=k, t=k * self.params.dt, value=value,
                      truth={"state": self._x[i]})

    def close(self) -> None:
        self._stream = None


_URI_PARAMS = {"seed", "rate", "r2", "q2", "obs", "angle", "J", "dt", "decimate", "n", "speed", "missing"}


def source_from_uri(parsed) -> LorenzSource:
    """`sim:lorenz?seed=1&rate=500&r2=1&q2=0&obs=rotated&angle=1&J=5&dt=0.02&decimate=2000
    &n=3000&speed=1&missing=0.1`; every parameter optional (defaults: LorenzParams; missing 0)."""
    parsed.check_known(_URI_PARAMS)
    d = LorenzParams()
    decimate = parsed.get("decimate", 0, int)
    n = parsed.get("n", None, int)
    try:
        params = LorenzParams(
            J=parsed.get("J", d.J, int),
            dt=parsed.get("dt", d.dt, float),
            q2=parsed.get("q2", d.q2, float),
            r2=parsed.get("r2", d.r2, float),
            obs=parsed.get("obs", d.obs),
            angle_deg=parsed.get("angle", d.angle_deg, float),
            decimate=decimate or None,
            seed=parsed.get("seed", d.seed, int),
            rate_hz=parsed.get("rate", d.rate_hz, float),
        )
    except ValueError as e:
        raise SourceError(f"{parsed.uri}: {e}") from None
    return LorenzSource(params, n_samples=n, speed=parsed.get("speed", 1.0, float), uri=parsed.uri,
                        missing=parsed.get("missing", 0.0, float))
