"""The comms detectors without torch (issue 18): the numpy trellis recursion around the ONNX graph.

The recursion (engines/comms/sum_product.py: scaled linear-domain messages, the block split into
chunks) against the textbook log-domain recursion written in torch here (forward-backward with
logsumexp; Viterbi with max and a traceback); the shipped detectors bcjrnet-isi, viterbinet-isi and
sbrnn-isi on ONNX Runtime in a process whose import system refuses torch (as a runtime install
without the torch extra) against their torch engines on a fixed sim:isi stream; online adaptation
(lfg-adaptive) in numpy (engines/comms/adaptive_numpy.py) against the torch one; and the shipped
comms session without torch, every detector in it running.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import engines
from drivers.sim.isi import IsiParams, IsiSimulator
from engines.comms.adaptive_numpy import NumpyFactors
from engines.comms.learned_factor_graph import LearnedFactors
from engines.comms.sum_product import Trellis, decisions, forward_backward, soft_symbols, symbol_error_rate

ROOT = Path(__file__).resolve().parents[3]
SHIPPED = ("bcjrnet-isi", "viterbinet-isi", "sbrnn-isi")
NO_TORCH = 'import sys\nsys.modules["torch"] = None\n'  # `import torch` then raises ModuleNotFoundError


def run_without_torch(code: str, timeout: float = 180) -> dict:
    proc = subprocess.run([sys.executable, "-c", NO_TORCH + textwrap.dedent(code)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- the numpy recursion against the log-domain recursion in torch -----------------------------------
def random_problem(seed: int, N: int = 3, B: int = 137, memory: int = 4):
    """Random log factors (N, B, S) and random transitions T(c | c') on the trellis (rows sum to 1)."""
    rng = np.random.default_rng(seed)
    trellis = Trellis(memory)
    log_f = 3.0 * rng.standard_normal((N, B, trellis.states))
    T = np.where(trellis.allowed(), rng.uniform(0.05, 1.0, (trellis.states,) * 2), 0.0)
    with np.errstate(divide="ignore"):
        log_T = np.log(T / T.sum(1, keepdims=True))
    return trellis, log_f, log_T


def torch_bcjr(log_f: torch.Tensor, log_T: torch.Tensor, newest: torch.Tensor):
    """P(s_i = a1 | y) (N, B) and the last forward message log alpha_{B-1} (N, S), log domain,
    one step per symbol: alpha_i = f_i + lse_c' (alpha_{i-1}(c') + T(c', c)), alpha_{-1} = 0."""
    N, B, S = log_f.shape
    alpha, beta = torch.empty_like(log_f), torch.zeros_like(log_f)
    a = torch.zeros(N, S, dtype=log_f.dtype)
    for i in range(B):
        alpha[:, i] = a = log_f[:, i] + torch.logsumexp(a[:, :, None] + log_T, dim=1)
    for i in range(B - 2, -1, -1):
        beta[:, i] = torch.logsumexp(log_T + log_f[:, i + 1, None, :] + beta[:, i + 1, None, :], dim=2)
    gamma = alpha + beta
    log_post = gamma - torch.logsumexp(gamma, -1, keepdim=True)
    return torch.exp(log_post[..., newest]).sum(-1), alpha[:, -1]


def torch_viterbi(log_f: torch.Tensor, log_T: torch.Tensor, newest: torch.Tensor) -> torch.Tensor:
    """The bits of the MAP state sequence (N, B): max-sum forward with back pointers, then traceback."""
    N, B, S = log_f.shape
    delta = torch.zeros(N, S, dtype=log_f.dtype)
    back = torch.empty(N, B, S, dtype=torch.long)
    for i in range(B):
        delta, back[:, i] = (delta[:, :, None] + log_T).max(dim=1)
        delta = delta + log_f[:, i]
    state = delta.argmax(-1)
    path = torch.empty(N, B, dtype=torch.long)
    for i in range(B - 1, -1, -1):
        path[:, i] = state
        state = back[torch.arange(N), i, state]
    return newest.long()[path]


# 137 steps: 12 chunks of 12 (7 padded steps), 28 of 5 (3 padded), one step per chunk, sequential
@pytest.mark.parametrize("chunk", [None, 5, 1, 137])
@pytest.mark.parametrize("seed", [0, 1])
def test_sum_product_posteriors_equal_the_log_domain_bcjr_in_torch(seed, chunk):
    trellis, log_f, log_T = random_problem(seed)
    newest = torch.from_numpy(trellis.newest.astype(bool))
    p_ref, log_alpha = torch_bcjr(torch.from_numpy(log_f), torch.from_numpy(log_T), newest)
    llr, alpha = forward_backward(log_f, trellis, log_T, None, "sum", chunk)
    p = soft_symbols(llr, (0.0, 1.0))  # P(s_i = a1 | y)
    assert np.abs(p - p_ref.numpy()).max() < 1e-5
    assert 0.02 < p.mean() < 0.98 and np.abs(p - 0.5).max() > 0.45  # informative, not trivial
    ref = np.exp(log_alpha.numpy() - log_alpha.numpy().max(-1, keepdims=True))
    np.testing.assert_allclose(alpha, ref, rtol=1e-6, atol=1e-12)  # the message carried to the next block


@pytest.mark.parametrize("chunk", [None, 5, 137])
@pytest.mark.parametrize("seed", [2, 3, 4])
def test_max_product_decisions_are_the_viterbi_traceback_in_torch(seed, chunk):
    """With a non-uniform T (a learned one) the padded steps of the chunked recursion once biased the
    block's last decisions (seed 3: symbols 133 and 134); the backward message now starts at B - 1."""
    trellis, log_f, log_T = random_problem(seed)
    bits = torch_viterbi(torch.from_numpy(log_f), torch.from_numpy(log_T),
                         torch.from_numpy(trellis.newest)).numpy()
    llr, _ = forward_backward(log_f, trellis, log_T, None, "max", chunk)
    ours = decisions(soft_symbols(llr, trellis.alphabet), trellis.alphabet) == trellis.alphabet[1]
    assert np.array_equal(ours, bits.astype(bool))


# ---- the shipped detectors on ONNX Runtime with torch blocked ----------------------------------------
STREAM = dict(gamma=0.2, snr_db=8.0, block=500, seed=23)
N_BLOCKS = 8  # 4,000 symbols, detected block by block as the live session does

DETECT_WITHOUT_TORCH = f"""
    import json
    import numpy as np
    import engines
    from drivers.sim.isi import IsiParams, IsiSimulator

    y, _, _ = IsiSimulator(IsiParams(**{STREAM!r})).blocks({N_BLOCKS})
    out = {{}}
    for name in {SHIPPED!r}:
        d = engines.load(name)
        d.reset(1)
        soft = np.concatenate([d.step(y[k:k + 1]).mean for k in range({N_BLOCKS})])
        out[name] = {{"backend": d.info.backend, "type": type(d).__name__, "soft": soft.tolist()}}
    out["torch_loaded"] = sys.modules.get("torch") is not None
    print(json.dumps(out))
"""


def test_shipped_detectors_on_onnxruntime_without_torch_decide_as_their_torch_engines():
    out = run_without_torch(DETECT_WITHOUT_TORCH)
    assert out["torch_loaded"] is False
    y, s, _ = IsiSimulator(IsiParams(**STREAM)).blocks(N_BLOCKS)
    for name in SHIPPED:
        assert out[name]["backend"] == "onnxruntime", name
        assert out[name]["type"] == ("SlidingDetector" if name == "sbrnn-isi" else "TrellisDetector")
        reference = engines.load(name, backend="torch")
        reference.reset(1)
        soft_t = np.concatenate([reference.step(y[k:k + 1]).mean for k in range(N_BLOCKS)])
        soft_o = np.asarray(out[name]["soft"])
        alphabet = reference.alphabet
        assert np.array_equal(decisions(soft_o, alphabet), decisions(soft_t, alphabet)), name
        assert symbol_error_rate(soft_o, s, alphabet) == symbol_error_rate(soft_t, s, alphabet) < 0.05, name
        assert np.abs(soft_o - soft_t).max() < 1e-4, name


# ---- online adaptation (lfg-adaptive) in numpy ------------------------------------------------------
def test_the_numpy_factor_node_and_its_cross_entropy_gradients_are_the_torch_modules():
    module = LearnedFactors(4)
    module.load_state_dict(engines.load("bcjrnet-isi", backend="torch").module.state_dict())
    twin = NumpyFactors({k: v.numpy() for k, v in module.state_dict().items()})
    y, s, _ = IsiSimulator(IsiParams(**STREAM)).blocks(2)
    with torch.no_grad():
        expected = module(torch.from_numpy(y).float()).double().numpy()
    np.testing.assert_allclose(twin.log_likelihood(y), expected, rtol=1e-5, atol=1e-5)
    labels = Trellis(4).states_of(s[0])
    samples = torch.from_numpy(y[0, 3:]).float()[None]
    loss = torch.nn.functional.cross_entropy(module.logits(samples)[0], torch.from_numpy(labels))
    loss.backward()
    ours, grads = twin.gradients(y[0, 3:], labels)
    assert ours == pytest.approx(loss.item(), rel=1e-5)
    for g, p in zip(grads, [*module.weights, *module.biases], strict=True):
        np.testing.assert_allclose(g, p.grad[0].numpy().reshape(g.shape), rtol=1e-4, atol=1e-6)


def test_numpy_online_adaptation_decides_as_the_torch_one_on_a_drifting_channel():
    params = IsiParams(gamma=0.2, snr_db=8.0, block=500, seed=2, vary=1, pilots=51)
    y, s, _ = IsiSimulator(params).blocks(12)
    soft = {}
    for backend in ("torch", "numpy"):
        d = engines.load("lfg-adaptive", backend=backend, pilots=params.model()["pilots"])
        assert d.info.backend == backend
        d.reset(1)
        soft[backend] = np.concatenate([d.step(y[k:k + 1]).mean for k in range(len(y))])
        assert d.adaptations == len(y)
    assert np.array_equal(decisions(soft["numpy"], (-1.0, 1.0)), decisions(soft["torch"], (-1.0, 1.0)))
    assert np.abs(soft["numpy"] - soft["torch"]).max() < 1e-4


COMMS_SESSION = """
    import json, time
    from mbdl_app.config import load_config
    from mbdl_app.session.session import Session

    session = Session(load_config("comms"))
    session.start()
    time.sleep(3.0)
    session.stop()
    st = session.status()
    print(json.dumps({"skipped": session.skipped,
                      "backends": {k: e.info.backend for k, e in session.engines.items()},
                      "results": {k: e["results"] for k, e in st.engines.items()},
                      "ser": {k: e["ser_overall"] for k, e in st.engines.items()},
                      "torch_loaded": sys.modules.get("torch") is not None}))
"""


@pytest.mark.slow
def test_the_comms_session_runs_without_torch_every_detector():
    out = run_without_torch(COMMS_SESSION)
    assert out["torch_loaded"] is False
    assert out["skipped"] == {}
    assert out["backends"] == {"viterbi": "numpy", "bcjr": "numpy", "bcjr-csi-uncertain": "numpy",
                               "viterbinet-isi": "onnxruntime", "bcjrnet-isi": "onnxruntime",
                               "sbrnn-isi": "onnxruntime", "bcjrnet-frozen": "onnxruntime",
                               "lfg-adaptive": "numpy", "bcjr-drift": "numpy"}
    for label in out["backends"]:
        assert out["results"][label] > 0 and 0 <= out["ser"][label] < 0.2, (label, out)
