"""A symbol stream through a channel with memory: the learned-factor-graph benchmark, as data.

Channel (seed Fig. 9; Shlezinger, Farsad, Eldar, Goldsmith, "Learned factor graphs for
inference from stationary time sequences", IEEE TSP 2022; ViterbiNet, IEEE TWC 2020):

    y_i = sum_{l=1..L} h_l s_{i-l+1} + w_i,   h_l = exp(-gamma (l - 1)),   w_i ~ N(0, sigma^2)
    sigma^2 = 10^(-SNR/10),  s_i in {-1, +1} (BPSK), i.i.d. uniform;  L = `memory` (4).

Poisson variant (`channel="poisson"`, on-off keying s_i in {0, 1}):

    y_i ~ Poisson(sqrt(SNR) sum_l h_l s_{i-l+1} + 1),   SNR = 10^(SNR_dB/10).

`taps` replaces the exponential profile with given taps (e.g. 1,0,0,0: no ISI).

Blocks. The stream is continuous (a block's first symbols see the previous block's last
L - 1 through the channel) and comes in blocks of B = `block` symbols: one Sample is
value = y (B,) float64, truth = {"symbols": s (B,), "taps": h (L,) of that block}. The
taps are constant within a block and may change between blocks:

- `vary`: time-varying taps, h_l(k) = h_l (0.8 + 0.2 cos(2 pi k / p_l)) for block k with
  periods p = (51, 39, 33, 21) blocks (ViterbiNet's time-varying channel; periods cycle
  for L > 4). The model a detector gets (meta["model"]) holds the taps of block 0.
- `perturb` = sigma_e^2: each block's taps are h_l (1 + sigma_e n_l), n_l ~ N(0, 1) drawn
  per block: a data set from "a set of different channels" (seed Fig. 9's CSI
  uncertainty: ANCHORS.md, sigma_e^2 = 0.1 per 500-symbol frame).
- `pilots` = P: the first P symbols of every block are the fixed pilot sequence
  `pilot_symbols(P)`, a repeated de Bruijn cycle (known to the receiver;
  meta["model"]["pilots"] lists them). P = 2^L k + L - 1 (51 for L = 4) visits every
  channel state exactly k times.

Rate: `rate_hz` blocks per second, so B * rate_hz symbols per second (defaults 500 x 20 =
10,000 symbols/s). The simulation's clock: block k at t = k / rate_hz. Same seed, same
stream, whatever the blocks asked for at a time (`IsiStream.advance(a)` then `advance(b)`
equals `advance(a + b)`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from drivers.base import Pacer, Sample, SourceBase, SourceInfo, check_pacing
from drivers.errors import SourceEnded, SourceError
from drivers.uri import ParsedURI

CHANNELS = ("awgn", "poisson")
ALPHABETS = {"awgn": (-1.0, 1.0), "poisson": (0.0, 1.0)}
PERIODS = (51, 39, 33, 21)  # blocks per period of each tap of the time-varying channel


def exponential_taps(memory: int, gamma: float) -> np.ndarray:
    """h_l = exp(-gamma (l - 1)), l = 1..memory (seed Fig. 9's channel profile)."""
    return np.exp(-gamma * np.arange(memory, dtype=np.float64))


def de_bruijn(memory: int) -> list[int]:
    """The binary de Bruijn cycle of order `memory`: 2^memory bits in which every window of
    `memory` bits (read cyclically) occurs exactly once (the standard Lyndon-word construction)."""
    a, out = [0] * (2 * memory + 1), []

    def extend(t: int, p: int) -> None:
        if t > memory:
            if memory % p == 0:
                out.extend(a[1:p + 1])
            return
        a[t] = a[t - p]
        extend(t + 1, p)
        for j in range(a[t - p] + 1, 2):
            a[t] = j
            extend(t + 1, t)

    extend(1, 1)
    return out


def pilot_symbols(n: int, channel: str = "awgn", memory: int = 4) -> np.ndarray:
    """The fixed pilot sequence: the de Bruijn cycle of order `memory`, repeated, as n symbols of
    the channel's alphabet (float64). Its windows of `memory` symbols visit every trellis state
    equally often (once per 2^memory windows), so a classifier re-trained on pilots sees every
    state, in the proportions it was trained on."""
    bits = np.resize(np.asarray(de_bruijn(memory)), n)
    return np.asarray(ALPHABETS[channel])[bits]


@dataclass(frozen=True, slots=True)
class IsiParams:
    """One channel setup and its live pacing (see the module docstring).

    memory: L, the channel length in symbols; gamma: decay of the exponential taps;
    taps: explicit taps (length L) instead; snr_db: SNR in dB; channel: "awgn" or "poisson";
    vary: time-varying taps; perturb: sigma_e^2 of the per-block tap perturbation;
    block: symbols per Sample; pilots: known symbols at the start of each block;
    seed: the only source of randomness; rate_hz: blocks per second.
    Raises ValueError on an invalid value.
    """

    memory: int = 4
    gamma: float = 0.2
    taps: tuple[float, ...] | None = None
    snr_db: float = 8.0
    channel: str = "awgn"
    vary: bool = False
    perturb: float = 0.0
    block: int = 500
    pilots: int = 0
    seed: int = 0
    rate_hz: float = 20.0

    def __post_init__(self) -> None:
        if not 1 <= self.memory <= 8:
            raise ValueError(f"memory must be within 1..8 symbols, got {self.memory}")
        if not (self.gamma >= 0 and math.isfinite(self.gamma)):
            raise ValueError(f"gamma must be a finite number >= 0, got {self.gamma}")
        if self.taps is not None and (len(self.taps) != self.memory
                                      or not all(math.isfinite(h) for h in self.taps)):
            raise ValueError(f"taps must be {self.memory} finite numbers (the memory), got {self.taps}")
        if not math.isfinite(self.snr_db):
            raise ValueError(f"snr_db must be finite, got {self.snr_db}")
        if self.channel not in CHANNELS:
            raise ValueError(f"channel must be one of {', '.join(CHANNELS)}, got {self.channel!r}")
        if not (self.perturb >= 0 and math.isfinite(self.perturb)):
            raise ValueError(f"perturb must be a finite number >= 0, got {self.perturb}")
        if self.block < 1:
            raise ValueError(f"block must be >= 1 symbols, got {self.block}")
        if not 0 <= self.pilots <= self.block:
            raise ValueError(f"pilots must be within 0..{self.block} (the block), got {self.pilots}")
        if not (self.rate_hz > 0 and math.isfinite(self.rate_hz)):
            raise ValueError(f"rate must be a finite number > 0 (blocks/s), got {self.rate_hz}")

    @property
    def alphabet(self) -> tuple[float, float]:
        return ALPHABETS[self.channel]

    @property
    def sigma2(self) -> float:
        """The AWGN variance sigma^2 = 10^(-SNR/10)."""
        return 10.0 ** (-self.snr_db / 10.0)

    def nominal_taps(self) -> np.ndarray:
        """The taps of block 0 before any perturbation: `taps`, else exp(-gamma (l - 1))."""
        if self.taps is not None:
            return np.asarray(self.taps, dtype=np.float64)
        return exponential_taps(self.memory, self.gamma)

    def taps_at(self, k: int | np.ndarray) -> np.ndarray:
        """The unperturbed taps of block(s) k: (L,) or (len(k), L)."""
        h = self.nominal_taps()
        if not self.vary:
            return np.broadcast_to(h, (*np.shape(k), self.memory)).copy()
        p = np.resize(np.asarray(PERIODS, dtype=np.float64), self.memory)
        k = np.asarray(k, dtype=np.float64)[..., None]
        return h * (0.8 + 0.2 * np.cos(2 * np.pi * k / p))

    def model(self) -> dict:
        """What a detector needs, named like the parameters of `engines.load("bcjr")`."""
        return {
            "memory": self.memory,
            "taps": self.taps_at(0).tolist(),
            "snr_db": self.snr_db,
            "channel": self.channel,
            "block": self.block,
            "pilots": pilot_symbols(self.pilots, self.channel, self.memory).tolist(),
        }


class IsiStream:
    """The symbol stream block by block; the blocks concatenate to one transmission.

    Randomness is drawn per block in a fixed order (symbols, tap perturbation, noise), so
    the stream does not depend on how many blocks are asked for at a time.
    """

    def __init__(self, params: IsiParams) -> None:
        self.params = params
        seeds = np.random.SeedSequence(params.seed).spawn(2)
        rng_history, self._rng = (np.random.default_rng(s) for s in seeds)
        alphabet = np.asarray(params.alphabet)
        self._pilots = pilot_symbols(params.pilots, params.channel, params.memory)
        # the L - 1 symbols sent before block 0: the channel's state when the stream starts
        self._history = alphabet[rng_history.integers(0, 2, params.memory - 1)]
        self.k = 0

    def advance(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The next n blocks: y (n, B), symbols s (n, B), taps h (n, L), float64."""
        p = self.params
        L, B = p.memory, p.block
        alphabet = np.asarray(p.alphabet)
        y, s, h = np.empty((n, B)), np.empty((n, B)), p.taps_at(np.arange(self.k, self.k + n))
        for j in range(n):
            s[j] = alphabet[self._rng.integers(0, 2, B)]
            s[j, :p.pilots] = self._pilots
            if p.perturb:
                h[j] *= 1.0 + math.sqrt(p.perturb) * self._rng.standard_normal(L)
            x = np.concatenate((self._history, s[j]))
            # (h * s)_i = sum_l h_l s_{i-l+1}: a valid-mode convolution over history + block
            mu = np.convolve(x, h[j], mode="valid")
            if p.channel == "awgn":
                y[j] = mu + math.sqrt(p.sigma2) * self._rng.standard_normal(B)
            else:
                y[j] = self._rng.poisson(np.maximum(math.sqrt(10 ** (p.snr_db / 10)) * mu + 1.0, 0.0))
            self._history = x[len(x) - (L - 1):] if L > 1 else x[:0]
        self.k += n
        return y, s, h


class IsiSimulator:
    """Data sets of the channel: consecutive blocks of one stream (numpy, float64)."""

    def __init__(self, params: IsiParams | None = None) -> None:
        self.params = params or IsiParams()

    def blocks(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """n consecutive blocks: y (n, B), s (n, B), taps (n, L); deterministic by seed."""
        return IsiStream(self.params).advance(n)

    def symbols(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """y (n,) and s (n,): the first n symbols of the stream (its blocks joined)."""
        y, s, _ = IsiStream(self.params).advance(-(-n // self.params.block))
        return y.reshape(-1)[:n], s.reshape(-1)[:n]


class IsiSource(SourceBase):
    """Live Source of received blocks: Sample(k, t = k / rate, y (B,), {"symbols", "taps"}).

    Paced at params.rate_hz * speed blocks per second (speed 0: as fast as it can
    compute, about 50k blocks/s of 500 symbols); ends with SourceEnded after n_blocks.
    """

    def __init__(self, params: IsiParams | None = None, *, n_blocks: int | None = None,
                 speed: float = 1.0, uri: str = "sim:isi") -> None:
        self.params = params or IsiParams()
        check_pacing(uri, speed)
        if n_blocks is not None and n_blocks < 0:
            raise SourceError(f"{uri}: n must be >= 0 blocks, got {n_blocks}")
        self.uri, self.n_blocks, self.speed = uri, n_blocks, speed
        self._stream: IsiStream | None = None

    def open(self) -> None:
        """Start the stream from the seed (re-opening starts it again)."""
        p = self.params
        self._stream = IsiStream(p)
        self._pacer = Pacer(p.rate_hz, self.speed)
        self._next: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._info = SourceInfo(
            uri=self.uri,
            kind="samples",
            shape=(p.block,),
            rate_hz=p.rate_hz,
            meta={"simulator": "isi", "params": asdict(p), "model": p.model(),
                  "alphabet": list(p.alphabet), "symbol_rate_hz": p.block * p.rate_hz},
            truth_shapes={"symbols": (p.block,), "taps": (p.memory,)},
        )

    def read(self, timeout: float = 0.1) -> Sample | None:
        """The next block once it is due, or None if it is not due within `timeout`."""
        if self._stream is None:
            raise SourceError(f"{self.uri}: source is not open")
        k = self._stream.k if self._next is None else self._stream.k - 1
        if self.n_blocks is not None and k >= self.n_blocks:
            raise SourceEnded(f"{self.uri}: ended after {self.n_blocks} blocks")
        if self._next is None:  # computed before waiting, so the work overlaps the wait
            y, s, h = self._stream.advance(1)
            self._next = (y[0], s[0], h[0])
        if not self._pacer.wait(k, timeout):
            return None
        (y, s, h), self._next = self._next, None
        return Sample(index=k, t=k / self.params.rate_hz, value=y, truth={"symbols": s, "taps": h})

    def close(self) -> None:
        self._stream = None


_URI_PARAMS = {"seed", "rate", "gamma", "snr", "memory", "taps", "channel", "vary", "perturb",
               "block", "pilots", "n", "speed"}


def _taps(parsed: ParsedURI) -> tuple[float, ...] | None:
    raw = parsed.params.get("taps")
    if raw is None:
        return None
    try:
        return tuple(float(v) for v in raw.split(","))
    except ValueError:
        raise SourceError(f"{parsed.uri}: parameter taps={raw!r} is not a comma-separated list of "
                          "numbers") from None


def source_from_uri(parsed: ParsedURI) -> IsiSource:
    """`sim:isi?gamma=0.2&snr=8&memory=4&taps=1,0,0,0&channel=awgn|poisson&vary=1&perturb=0.1
    &block=500&pilots=100&seed=1&rate=20&n=1000&speed=1`; every parameter optional (defaults:
    IsiParams; rate in blocks/s, n in blocks). SourceError naming the URI on a bad value."""
    parsed.check_known(_URI_PARAMS)
    d = IsiParams()
    taps = _taps(parsed)
    try:
        params = IsiParams(
            memory=parsed.get("memory", len(taps) if taps else d.memory, int),
            gamma=parsed.get("gamma", d.gamma, float),
            taps=taps,
            snr_db=parsed.get("snr", d.snr_db, float),
            channel=parsed.get("channel", d.channel),
            vary=parsed.get("vary", d.vary, bool),
            perturb=parsed.get("perturb", d.perturb, float),
            block=parsed.get("block", d.block, int),
            pilots=parsed.get("pilots", d.pilots, int),
            seed=parsed.get("seed", d.seed, int),
            rate_hz=parsed.get("rate", d.rate_hz, float),
        )
    except ValueError as e:
        raise SourceError(f"{parsed.uri}: {e}") from None
    return IsiSource(params, n_blocks=parsed.get("n", None, int), speed=parsed.get("speed", 1.0, float),
                     uri=parsed.uri)
