"""Compressed-sensing measurements, live: the sparse-coding benchmark as a stream of samples.

Each sample is one measurement of a fresh sparse code (seed Ex. 10 / 17; the benchmark of the
shipped lista-cs, alista-cs, ... artifacts, mbdl_app/training/recipes/sparse.py):

    x = H s + w,   s_j = b_j g_j,  b_j ~ Bernoulli(p),  g_j ~ N(0, 1),
    w ~ N(0, std(H s)^2 10^(-SNR/10) I)   (no w without `snr`)

Sample(k, t = k / rate, value = x (m,) float64, truth = {"code": s (n,)}), so a session scores
a sparse-coding engine against the true code. H must be the operator the engine was trained
on: `operator` names a shipped artifact (e.g. `lista-cs`, whose weights.safetensors stores H
under "operator"), an artifact folder, or an .npy file of H (m, n). numpy only (drivers never
import engines); the same seed gives the same stream.

    sim:cs?operator=lista-cs&p=0.1&snr=40&rate=50&seed=1&n=1000&speed=1
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from drivers.base import Pacer, Sample, SourceBase, SourceInfo, check_pacing
from drivers.errors import SourceEnded, SourceError
from drivers.uri import ParsedURI

OPERATOR_KEY = "operator"  # where an artifact's weights store H (engines.artifacts.OPERATOR_KEY)
WEIGHTS = "weights.safetensors"


def load_operator(spec: str, uri: str = "sim:cs") -> tuple[np.ndarray, str]:
    """(H (m, n) float64, where it came from) for `spec`: a shipped artifact's name, an artifact
    folder, or an .npy file. SourceError naming the URI and the operator on failure."""
    path = Path(spec)
    if not path.exists() and len(path.parts) == 1:
        import exported_models

        shipped = {d.name: d for d in exported_models.artifact_dirs()}
        if spec not in shipped:
            raise SourceError(f"{uri}: operator={spec!r} is no file, folder or shipped artifact "
                              f"(shipped: {', '.join(sorted(shipped))})")
        path = shipped[spec]
    try:
        if path.is_dir():
            from safetensors.numpy import load_file

            weights = load_file(path / WEIGHTS)
            if OPERATOR_KEY not in weights:
                raise SourceError(f"{uri}: {path / WEIGHTS} stores no {OPERATOR_KEY!r} "
                                  "(the sensing matrix H)")
            H = weights[OPERATOR_KEY]
        else:
            H = np.load(path, allow_pickle=False)
    except SourceError:
        raise
    except Exception as e:  # OSError, a malformed .npy or safetensors file
        raise SourceError(f"{uri}: cannot read operator {str(path)!r} ({e})") from None
    H = np.asarray(H, dtype=np.float64)
    if H.ndim != 2 or not np.isfinite(H).all():
        raise SourceError(f"{uri}: operator {str(path)!r} must be a finite (m, n) matrix, "
                          f"got shape {H.shape}")
    return H, str(path)


class CsStream:
    """The measurements one by one; the same seed gives the same stream."""

    def __init__(self, H: np.ndarray, p: float, snr_db: float | None, seed: int) -> None:
        self.H, self.p, self.snr_db = H, p, snr_db
        self._rng = np.random.default_rng(seed)
        self.k = 0

    def advance(self) -> tuple[np.ndarray, np.ndarray]:
        """The next (x (m,), s (n,))."""
        n = self.H.shape[1]
        s = self._rng.standard_normal(n) * (self._rng.random(n) < self.p)
        x = self.H @ s  # H s
        if self.snr_db is not None:
            x = x + x.std() * 10.0 ** (-self.snr_db / 20) * self._rng.standard_normal(x.shape[0])
        self.k += 1
        return x, s


class CsSource(SourceBase):
    """Live Source of measurements x = H s + w, paced at `rate_hz` * speed (0: flat out);
    ends with SourceEnded after n_samples when given."""

    def __init__(self, H: np.ndarray, *, p: float = 0.1, snr_db: float | None = None, seed: int = 1,
                 rate_hz: float = 50.0, n_samples: int | None = None, speed: float = 1.0,
                 operator: str = "", uri: str = "sim:cs") -> None:
        check_pacing(uri, speed, rate_hz)
        if not 0 < p <= 1:
            raise SourceError(f"{uri}: p must be in (0, 1], got {p}")
        if n_samples is not None and n_samples < 0:
            raise SourceError(f"{uri}: n must be >= 0 samples, got {n_samples}")
        self.H, self.p, self.snr_db, self.seed = H, float(p), snr_db, int(seed)
        self.rate_hz, self.n_samples, self.speed = float(rate_hz), n_samples, speed
        self.operator, self.uri = operator, uri
        self._stream: CsStream | None = None

    def open(self) -> None:
        """Start the stream from the seed (re-opening starts it again)."""
        m, n = self.H.shape
        self._stream = CsStream(self.H, self.p, self.snr_db, self.seed)
        self._pacer = Pacer(self.rate_hz, self.speed)
        self._next: tuple[np.ndarray, np.ndarray] | None = None
        self._info = SourceInfo(
            uri=self.uri, kind="samples", shape=(m,), rate_hz=self.rate_hz,
            meta={"simulator": "cs", "operator": self.operator, "m": m, "n": n, "p": self.p,
                  "snr_db": self.snr_db, "seed": self.seed},
            truth_shapes={"code": (n,)},
        )

    def read(self, timeout: float = 0.1) -> Sample | None:
        """The next measurement once it is due, or None if it is not due within `timeout`."""
        if self._stream is None:
            raise SourceError(f"{self.uri}: source is not open")
        k = self._stream.k if self._next is None else self._stream.k - 1
        if self.n_samples is not None and k >= self.n_samples:
            raise SourceEnded(f"{self.uri}: ended after {self.n_samples} samples")
        if self._next is None:  # computed before waiting, so the work overlaps the wait
            self._next = self._stream.advance()
        if not self._pacer.wait(k, timeout):
            return None
        (x, s), self._next = self._next, None
        return Sample(index=k, t=k / self.rate_hz, value=x, truth={"code": s})

    def close(self) -> None:
        self._stream = None


_URI_PARAMS = {"operator", "p", "snr", "seed", "rate", "n", "speed"}


def source_from_uri(parsed: ParsedURI) -> CsSource:
    """`sim:cs?operator=lista-cs&p=0.1&snr=40&seed=1&rate=50&n=1000&speed=1`; `operator` is
    required (the H the engine was trained on), the rest optional (rate in samples/s)."""
    parsed.check_known(_URI_PARAMS)
    spec = parsed.params.get("operator")
    if not spec:
        raise SourceError(f"{parsed.uri}: needs operator=ARTIFACT|FOLDER|FILE.npy (the sensing matrix H, "
                          "e.g. operator=lista-cs)")
    H, where = load_operator(spec, parsed.uri)
    snr = parsed.get("snr", None, float)
    if snr is not None and not math.isfinite(snr):
        raise SourceError(f"{parsed.uri}: snr must be a finite number of dB, got {snr}")
    return CsSource(H, p=parsed.get("p", 0.1, float), snr_db=snr, seed=parsed.get("seed", 1, int),
                    rate_hz=parsed.get("rate", 50.0, float), n_samples=parsed.get("n", None, int),
                    speed=parsed.get("speed", 1.0, float), operator=where, uri=parsed.uri)
