"""The live closed loop of issue 17: keep a moving particle centred by moving the XY stage.

Where actuation lives: a session with a `[control]` section (mbdl_app/config.py, ControlConfig)
gets one StageControlLoop, a consumer of its frame stream's acquisition thread (it runs right
after each frame is read and pushed to the engines' rings: the loop is tiny, microseconds for the
KF, about a millisecond for KalmanNet or the MPC, and running it there means no frame is skipped
and no queue adds delay between a frame and the stage move it causes). Per frame:

    x_t     = centroid of the spot - the field's centre, um (x, y)     (measure)
    z_hat_t = estimator.step(x_t, s_{t-1})                              (per axis: 2 tracks)
    s_t     = controller(z_hat_t)                                       (LQR -K z_hat, or box MPC)
    stage  += v dt - s_t dt^2 / 2,  v -= s_t dt                         (act: core.setXYPosition / sim)

The state of each axis is z = (particle - stage, its rate): the CV plant of engines/control/lqg.py,
whose input s is minus the stage's acceleration, so the same K, KF, KalmanNet (kalmannet-cv:
rows [x_t, s_{t-1}]) and MPC as `mbdl reproduce control` run here. The stage is the source's
actuator (`source.xy_stage()`: sim:particle's simulated stage, or the Micro-Manager core's XY
stage through setXYPosition, drivers/mmcore.py). Estimator and controller can be switched
while running (set_estimator / set_controller: the new one starts from the current estimate).

Cost, live: c_t = mean over the two axes of z_t' Q z_t + s_t' R s_t, with z_t the true relative
state when the frames carry it (sim:particle's truth "offset_um", "velocity_um_s") else the
estimate; J = the running mean of c_t after `burn` frames (reset on a switch).

A frame without a spot is a missing measurement (the estimator predicts through); after MAX_COAST
of them in a row the particle is lost and the stage is held where it is (no runaway on a guess)
until the spot is seen again.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

ESTIMATORS = ("kf", "kf-mismatched", "kalmannet-cv")
CONTROLLERS = ("lqr", "mpc")
Q_COST, R_COST = np.eye(2), np.array([[0.1]])
MISMATCHED_R2 = 0.01
MAX_COAST = 10  # frames without a spot after which the stage stops (held) instead of following a guess


def centroid_offset_px(image: np.ndarray, min_snr: float = 5.0) -> np.ndarray:
    """(dx, dy) of the spot's intensity-weighted centroid from the field's centre, pixels; NaN when
    no spot stands out (its peak under min_snr robust noise stds above the median).

    Pixels above half the peak (over the median background) are weighted, so the noise of the
    far field does not pull the centroid to the centre.
    """
    img = np.asarray(image, dtype=np.float64)
    img = img.reshape(img.shape[-2:]) if img.ndim > 2 else img
    bg = np.median(img)
    d = img - bg
    noise = 1.4826 * np.median(np.abs(d)) + 1e-12
    peak = d.max()
    if peak < min_snr * noise:
        return np.array([np.nan, np.nan])
    w = np.where(d > 0.5 * peak, d, 0.0)
    rows, cols = np.indices(img.shape)
    c_r, c_c = (img.shape[0] - 1) / 2, (img.shape[1] - 1) / 2
    return np.array([(w * cols).sum() / w.sum() - c_c, (w * rows).sum() / w.sum() - c_r])


@dataclass(frozen=True)
class ControlStep:
    """One frame's pass through the loop (all (2,) arrays: x and y axes, um)."""

    index: int
    measured: np.ndarray
    estimate: np.ndarray  # position part of z_hat
    command: np.ndarray  # s_t
    stage: np.ndarray  # stage target sent
    cost: float
    J: float


class StageControlLoop:
    """The loop of the module docstring. `stage`: an actuator with position_um() and move_um(x, y).

    Parameters: dt (s per frame), q2, r2 (the plant the KF assumes), pixel_um, s_max (the MPC's
    box on |s|), burn (frames before J starts counting). `history` keeps the last steps for views.
    Thread-safety: on_frame runs on the acquisition thread; set_estimator / set_controller and
    the read-only properties may be called from any thread.
    """

    def __init__(self, stage, *, dt: float, pixel_um: float, q2: float = 1.0, r2: float = 1.0,
                 estimator: str = "kf", controller: str = "lqr", s_max: float = 5.0, burn: int = 10,
                 history: int = 2000) -> None:
        from engines.control.lqg import constant_velocity_plant, kalman_gain, lqg_cost, lqr_gain

        if not dt > 0 or not pixel_um > 0:
            raise ValueError(f"control loop needs dt > 0 and pixel_um > 0, got dt={dt}, pixel_um={pixel_um}")
        self.stage, self.dt, self.pixel_um, self.burn = stage, float(dt), float(pixel_um), int(burn)
        self.plant = constant_velocity_plant(dt, q2, r2)
        self.K, _ = lqr_gain(self.plant.A, self.plant.B, Q_COST, R_COST)
        L, _ = kalman_gain(self.plant.A, self.plant.C, self.plant.V, self.plant.W)
        self.J_oracle = lqg_cost(self.plant, self.K, L, Q_COST, R_COST)  # the KF with the true noise
        self.s_max = float(s_max)
        self._lock = threading.Lock()
        self.history: deque[ControlStep] = deque(maxlen=history)
        self._v = np.zeros(2)  # the stage's velocity, um/s (the controller integrates it)
        self._pos: np.ndarray | None = None  # the stage position last commanded
        self._missing = 0  # consecutive frames without a spot
        self._s = np.zeros((2, 1))
        self._z_hat = np.zeros((2, 2))
        self._estimator = self._controller = None
        self.estimator_name = self.controller_name = ""
        self.set_estimator(estimator)
        self.set_controller(controller)

    # ---- choices --------------------------------------------------------------------------
    def _build_estimator(self, name: str):
        from engines.control.lqg import KalmanEstimator

        if name == "kf":
            return KalmanEstimator(self.plant)
        if name == "kf-mismatched":
            return KalmanEstimator(self.plant.with_noise(W=[[MISMATCHED_R2]]))
        if name == "kalmannet-cv":
            import engines
            from engines.control.kalmannet_cv import TrackerEstimator

            return TrackerEstimator(engines.load("kalmannet-cv", backend="torch"))
        raise ValueError(f"unknown estimator {name!r}; one of {', '.join(ESTIMATORS)}")

    def _build_controller(self, name: str):
        from engines.control.closed_loop import LinearController
        from engines.control.mpc import BoxMPC

        if name == "lqr":
            return LinearController(self.K)
        if name == "mpc":
            return BoxMPC(self.plant.A, self.plant.B, Q_COST, R_COST, horizon=10, lo=-self.s_max,
                          hi=self.s_max, iters=60)
        raise ValueError(f"unknown controller {name!r}; one of {', '.join(CONTROLLERS)}")

    def set_estimator(self, name: str) -> None:
        """Switch the estimator (ValueError naming the choices for an unknown one); J restarts."""
        est = self._build_estimator(name)
        with self._lock:
            est.reset(2, self._z_hat.copy())
            self._estimator, self.estimator_name = est, name
            self._restart_cost()

    def set_controller(self, name: str) -> None:
        """Switch the controller (ValueError naming the choices for an unknown one); J restarts."""
        ctrl = self._build_controller(name)
        with self._lock:
            self._controller, self.controller_name = ctrl, name
            self._restart_cost()

    def _restart_cost(self) -> None:
        self._sum, self._count, self._seen = 0.0, 0, 0

    @property
    def J(self) -> float:
        """The running mean cost since the last switch (after burn-in); NaN before any."""
        with self._lock:
            return self._sum / self._count if self._count else float("nan")

    # ---- the loop ---------------------------------------------------------------------------
    def on_frame(self, frame) -> ControlStep | None:
        """One pass (module docstring) for a Frame; None for items that are not frames."""
        data = getattr(frame, "data", None)
        if data is None or np.ndim(data) < 2:
            return None
        measured = centroid_offset_px(data) * self.pixel_um
        with self._lock:
            est, ctrl = self._estimator, self._controller
            if np.all(np.isfinite(measured)):
                x, self._missing = measured[:, None], 0
            else:  # no spot: feed the prediction (the update changes nothing)
                x = (self._z_hat @ self.plant.A.T + self._s @ self.plant.B.T)[:, :1]
                self._missing += 1
            z_hat = np.asarray(est.step(x, self._s), dtype=float)
            s = np.asarray(ctrl(z_hat), dtype=float).reshape(2, 1)
            if self._missing > MAX_COAST:  # lost: hold the stage rather than chase a prediction
                s, self._v = np.zeros((2, 1)), np.zeros(2)
            a = -s[:, 0]  # the stage's acceleration
            if self._pos is None:  # integrate our own commands (a real stage may lag behind them)
                self._pos = np.array(self.stage.position_um(), dtype=float)
            target = self._pos + self._v * self.dt + a * self.dt**2 / 2
            truth = getattr(frame, "truth", {}) or {}
            if "offset_um" in truth and "velocity_um_s" in truth:  # the true relative state
                z = np.stack((np.asarray(truth["offset_um"], dtype=float),
                              np.asarray(truth["velocity_um_s"], dtype=float) - self._v), 1)
            else:
                z = z_hat
            cost_z = float(np.einsum("ni,ij,nj->", z, Q_COST, z))
            cost = (cost_z + float(R_COST[0, 0] * np.sum(s * s))) / 2
            self._v, self._pos = self._v + a * self.dt, target
            self._seen += 1
            if self._seen > self.burn:
                self._sum, self._count = self._sum + cost, self._count + 1
            self._z_hat, self._s = z_hat, s
            J = self._sum / self._count if self._count else float("nan")
        self.stage.move_um(float(target[0]), float(target[1]))
        step = ControlStep(getattr(frame, "index", 0), measured, z_hat[:, 0].copy(), s[:, 0].copy(), target,
                           cost, J)
        self.history.append(step)
        return step


def control_loop(config, streams: dict) -> StageControlLoop | None:
    """The session's loop for its `[control]` section (None without one), registered as a consumer of
    the controlled stream; SessionError naming the problem when the source has no XY stage."""
    if config is None:
        return None
    from mbdl_app.errors import SessionError

    name = config.source or next((n for n, s in streams.items() if s.info.kind == "frames"), None)
    if name not in streams or streams[name].info.kind != "frames":
        raise SessionError(f"control: source {config.source!r} is not a frame stream of this session")
    stream = streams[name]
    xy_stage = getattr(stream.source, "xy_stage", None)
    if xy_stage is None:
        raise SessionError(f"control: source {name!r} ({stream.info.uri}) has no XY stage to move")
    meta = stream.info.meta
    pixel_um = config.pixel_um or meta.get("pixel_um") or (meta.get("pixel_size_um") or [None])[0]
    if not pixel_um:
        raise SessionError(f"control: source {name!r} does not say its pixel size; set control.pixel_um")
    dt = config.dt or (1.0 / stream.info.rate_hz if stream.info.rate_hz else None)
    if not dt:
        raise SessionError(f"control: source {name!r} has no nominal rate; set control.dt")
    loop = StageControlLoop(xy_stage(), dt=dt, pixel_um=float(pixel_um), q2=config.q2, r2=config.r2,
                            estimator=config.estimator, controller=config.controller, s_max=config.s_max)
    stream.consumers.append(loop.on_frame)
    return loop
