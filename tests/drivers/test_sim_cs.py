"""sim:cs: compressed-sensing measurements x = H s + w of sparse codes, with H a shipped model's."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

import exported_models
from drivers.errors import SourceEnded, SourceError
from drivers.uri import open_source

LISTA = exported_models.ROOT / "lista-cs"


def read_all(uri: str) -> list:
    out = []
    with open_source(uri) as src:
        while True:
            try:
                s = src.read(1.0)
            except SourceEnded:
                return out
            if s is not None:
                out.append(s)


def test_measurements_are_h_times_a_sparse_code_with_the_shipped_models_operator():
    H = load_file(LISTA / "weights.safetensors")["operator"].astype(np.float64)
    samples = read_all("sim:cs?operator=lista-cs&n=200&speed=0&seed=3")
    assert [s.index for s in samples] == list(range(200))
    codes = np.stack([s.truth["code"] for s in samples])
    np.testing.assert_allclose(np.stack([s.value for s in samples]), codes @ H.T, rtol=1e-12, atol=1e-12)
    assert codes.shape == (200, 500) and abs((codes != 0).mean() - 0.1) < 0.01  # Bernoulli(0.1)
    with open_source("sim:cs?operator=lista-cs") as src:
        assert src.info.kind == "samples" and src.info.shape == (250,)
        assert src.info.truth_shapes == {"code": (500,)}


def test_the_same_seed_gives_the_same_stream_and_snr_sets_the_noise(tmp_path):
    a = read_all("sim:cs?operator=lista-cs&n=5&speed=0&seed=1")
    b = read_all("sim:cs?operator=lista-cs&n=5&speed=0&seed=1")
    assert all(np.array_equal(x.value, y.value) for x, y in zip(a, b, strict=True))
    H = load_file(LISTA / "weights.safetensors")["operator"].astype(np.float64)
    np.save(tmp_path / "H.npy", H)
    noisy = read_all(f"sim:cs?operator={tmp_path / 'H.npy'}&n=300&speed=0&snr=20")
    w = np.stack([s.value - H @ s.truth["code"] for s in noisy])
    signal = np.stack([H @ s.truth["code"] for s in noisy])
    snr = 10 * np.log10((signal**2).mean() / (w**2).mean())
    assert abs(snr - 20) < 0.5


@pytest.mark.parametrize("uri,message", [
    ("sim:cs", "needs operator="),
    ("sim:cs?operator=no-such-model", "no file, folder or shipped artifact"),
    ("sim:cs?operator=kalmannet-lorenz", "stores no 'operator'"),
    ("sim:cs?operator=lista-cs&p=0", "p must be in"),
    ("sim:cs?operator=lista-cs&rate=0", "rate must be"),
    ("sim:cs?operator=lista-cs&bogus=1", "unknown parameter"),
])
def test_bad_uris_are_one_line_errors_naming_the_uri(uri, message):
    with pytest.raises(SourceError, match=message) as e:
        open_source(uri)
    assert str(e.value).startswith(uri) and "\n" not in str(e.value)
