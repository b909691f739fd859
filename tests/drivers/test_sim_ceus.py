"""The CEUS simulator: CORONA's in-silico setup (Solomon et al., IEEE TMI 2019) as a Source."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import numpy as np
import pytest

from drivers import SourceEnded, SourceError, open_source
from drivers.base import Frame, Source
from drivers.sim.ceus import CeusParams, CeusSimulator, CeusSource, _gaussian_kernel, windows
from engines.imaging.svd_filter import SVDFilter

SMALL = CeusParams(height=64, width=64, seed=5)


def _complex(x: np.ndarray) -> np.ndarray:
    return x[..., 0, :, :] + 1j * x[..., 1, :, :]


def test_same_seed_gives_identical_frames():
    a, b = CeusSimulator(SMALL).frames(15), CeusSimulator(SMALL).frames(15)
    for key in a:
        assert np.array_equal(a[key], b[key], equal_nan=True), key
    c = CeusSimulator(replace(SMALL, seed=6)).frames(15)
    assert not np.array_equal(a["data"], c["data"])


def test_step_continues_the_same_stream_as_frames():
    batch = CeusSimulator(SMALL).frames(4)
    sim = CeusSimulator(SMALL)
    for i in range(4):
        f = sim.step()
        assert np.array_equal(f["data"], batch["data"][i])


def test_frames_and_truth_match_source_info():
    with CeusSource(SMALL, speed=0) as src:
        info = src.info
        frame = src.read(timeout=1.0)
    assert isinstance(frame, Frame)
    assert info.kind == "frames" and info.shape == (2, 64, 64) and info.rate_hz == 100.0
    assert frame.data.shape == info.shape and frame.data.dtype == np.float32
    assert set(frame.truth) == set(info.truth_shapes)
    for key, shape in info.truth_shapes.items():
        assert frame.truth[key].shape == shape and frame.truth[key].dtype == np.float32
    assert info.truth_shapes["positions"] == (SMALL.max_bubbles, 2)
    assert frame.index == 0 and frame.t == 0.0
    json.dumps(info.meta)  # must be JSON-serializable
    assert info.meta["psf_sigma_mm"] == [0.14, 0.32]
    assert info.meta["pixel_mm"] == 0.12


def test_source_frames_equal_simulator_frames():
    batch = CeusSimulator(SMALL).frames(3)
    with CeusSource(SMALL, speed=0) as src:
        frames = [src.read(timeout=1.0) for _ in range(3)]
    for i, f in enumerate(frames):
        assert f.index == i and f.t == pytest.approx(i / 100.0)
        assert np.array_equal(f.data, batch["data"][i])
        assert np.array_equal(f.truth["bubbles"], batch["bubbles"][i])


def test_anchor_geometry_holds_by_default():
    p = CeusParams()
    assert (p.height, p.width, p.pixel_mm, p.rate_hz) == (128, 128, 0.12, 100.0)
    assert p.sigma_px == pytest.approx((0.14 / 0.12, 0.32 / 0.12))
    assert p.max_bubbles == int(p.density * 128 * 128 * 0.012**2)


def test_data_is_tissue_plus_bubbles_plus_psf_filtered_noise():
    sim = CeusSimulator(SMALL)
    f = sim.frames(30)
    noise = f["data"] - f["tissue"] - f["bubbles"]
    # white noise of std 0.1 per channel through a peak-1 PSF: variance 0.01 * sum(h^2)
    expected = SMALL.noise_std**2 * (_gaussian_kernel(64, 64, SMALL.sigma_px) ** 2).sum()
    assert noise.var() == pytest.approx(expected, rel=0.05)
    assert abs(noise.mean()) < 0.01
    # filtered, not white: neighbours along the wide (lateral) axis are strongly correlated
    n = _complex(noise)
    lag = np.mean(n[:, :, 1:] * n[:, :, :-1].conj()).real / np.mean(np.abs(n) ** 2)
    assert lag == pytest.approx(np.exp(-1 / (4 * SMALL.sigma_px[1] ** 2)), abs=0.03)


def test_tissue_amplitude_and_bubble_amplitude_follow_the_anchor():
    # tissue: scatterers with E|a|^2 = E U(0.6, 1)^2 = 0.6533 through the PSF (averaged
    # over seeds: one speckle field has few independent cells, and a slow gain of +-5%)
    power = [np.mean(np.abs(_complex(CeusSimulator(replace(SMALL, seed=s)).step()["tissue"])) ** 2)
             for s in range(6)]
    sum_h2 = (_gaussian_kernel(64, 64, SMALL.sigma_px) ** 2).sum()
    assert np.mean(power) == pytest.approx(0.6533 * sum_h2, rel=0.1)
    # bubbles: one slot; a bubble well inside the field sums to a * 2 pi sigma_y sigma_x
    p = replace(SMALL, density=1.0 / SMALL.area_cm2 + 1e-9)
    f = CeusSimulator(p).frames(400)
    assert f["positions"].shape[1] == 1
    pos = f["positions"][:, 0]
    inside = np.all((pos > 10) & (pos < 53), axis=1)
    assert inside.sum() > 50
    sy, sx = p.sigma_px
    modulus = np.abs(_complex(f["bubbles"][inside]).sum(axis=(-2, -1))) / (2 * np.pi * sy * sx)
    assert modulus.min() >= 1.5 - 1e-3 and modulus.max() <= 4.5 + 1e-3  # 3 x U(0.5, 1.5)
    assert modulus.mean() == pytest.approx(3.0, rel=0.15)


def test_tissue_of_a_window_is_low_rank():
    sim = CeusSimulator(CeusParams(seed=1))
    for _ in range(3):
        L = _complex(sim.frames(20)["tissue"]).reshape(20, -1)
        energy = np.linalg.svd(L, compute_uv=False) ** 2
        assert energy[:3].sum() / energy.sum() > 0.995
        # ...but it moves: one component alone is not the whole tissue
        assert energy[0] / energy.sum() < 0.9999


def test_svd_filter_recovers_bubbles_much_better_than_raw_data():
    sim = CeusSimulator(CeusParams(seed=2))
    f = sim.frames(20)
    raw = np.mean((f["data"] - f["bubbles"]) ** 2)
    filtered = SVDFilter(k=2, output="all")(f["data"][None])[0]
    mse = np.mean((filtered - f["bubbles"]) ** 2)
    assert mse < raw / 10
    # what is left is mostly the noise, which no clutter filter removes
    noise_var = np.var(f["data"] - f["tissue"] - f["bubbles"])
    assert mse < 3 * noise_var


def test_bubble_image_is_the_psf_at_the_true_positions():
    sim = CeusSimulator(SMALL)
    f = sim.step()
    pos = f["positions"][np.isfinite(f["positions"][:, 0])]
    assert len(pos) > 0
    sy, sx = SMALL.sigma_px
    r, c = np.mgrid[0:64, 0:64]
    # normalised distance of every pixel to its nearest bubble
    d2 = np.min(((r[..., None] - pos[:, 0]) / sy) ** 2 + ((c[..., None] - pos[:, 1]) / sx) ** 2,
                axis=-1)
    mag = np.abs(_complex(f["bubbles"]))
    assert mag[d2 > 6**2].max() < 1e-5 * mag.max()  # nothing far from every bubble
    inside = pos[(pos[:, 0] > 0) & (pos[:, 0] < 63) & (pos[:, 1] > 0) & (pos[:, 1] < 63)]
    near = mag[np.rint(inside[:, 0]).astype(int), np.rint(inside[:, 1]).astype(int)]
    assert np.median(near) > 0.5  # a bubble of modulus 1.5..4.5 shows at its own pixel


def test_bubble_count_stays_within_density_bound_and_bubbles_are_born_and_die():
    p = replace(SMALL, density=130.0)
    sim = CeusSimulator(p)
    alive = np.isfinite(sim.frames(200)["positions"][:, :, 0])  # (frames, slots)
    count = alive.sum(1)
    assert count.max() <= p.max_bubbles == int(130 * p.area_cm2)
    # steady state: a fraction p_birth / (p_birth + p_death) = 1/2 of the slots, a bit
    # less because bubbles also die when they flow out of their vessel
    assert 0.35 * p.max_bubbles < count.mean() <= 0.55 * p.max_bubbles
    births = (~alive[:-1] & alive[1:]).sum(1)
    deaths = (alive[:-1] & ~alive[1:]).sum(1)
    assert births.mean() == pytest.approx(0.3 * (p.max_bubbles - count[:-1]).mean(), rel=0.15)
    assert deaths.mean() >= 0.3 * count[:-1].mean() * 0.85


def test_bubbles_flow_inside_the_vessel_map():
    p = replace(SMALL, vessel_diameter_mm=0.1)
    sim = CeusSimulator(p)
    up = 8
    vmap = sim.vessel_map(up)
    assert vmap.shape == (64 * up, 64 * up) and vmap.dtype == np.float32
    assert 0 < vmap.mean() < 0.2
    pos = sim.frames(20)["positions"].reshape(-1, 2)
    pos = pos[np.isfinite(pos[:, 0])]
    fine = np.rint((pos + 0.5) * up - 0.5).astype(int)
    fine = fine[((fine >= 0) & (fine < 64 * up)).all(1)]
    assert len(fine) > 100
    # a bubble on the lumen wall may round to the fine pixel just outside it
    padded = np.pad(vmap, 1)
    near = np.max([padded[fine[:, 0] + 1 + dy, fine[:, 1] + 1 + dx]
                   for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
    assert near.min() == 1.0
    assert vmap[fine[:, 0], fine[:, 1]].mean() > 0.9
    # and they move: the per-frame step is the flow speed in pixels
    sim2 = CeusSimulator(replace(p, p_death=0.0, p_birth=0.1))
    a, b = sim2.frames(2)["positions"]
    step = np.linalg.norm(b - a, axis=1)
    step = step[np.isfinite(step)]
    assert 0 < np.median(step) < 1.5 * p.flow_mm_s / p.pixel_mm / p.rate_hz


def test_windows_are_cut_from_independent_simulations():
    p = CeusParams(seed=3)
    w = windows(p, n_windows=20, T=20, patch=32)
    assert set(w) == {"D", "L", "S"}
    for x in w.values():
        assert x.shape == (20, 20, 2, 32, 32) and x.dtype == np.float32
    # 16 tiles per 128 x 128 simulation: window 0 is the top-left tile of simulation 0
    first = CeusSimulator(p, seed=[3, 0]).frames(20)
    assert np.array_equal(w["D"][0], first["data"][:, :, :32, :32])
    assert np.array_equal(w["S"][1], first["bubbles"][:, :, :32, 32:64])
    second = CeusSimulator(p, seed=[3, 1]).frames(20)
    assert np.array_equal(w["L"][16], second["tissue"][:, :, :32, :32])
    noise = w["D"] - w["L"] - w["S"]
    assert noise.var() == pytest.approx(0.0977, rel=0.1)


def test_pacing_at_rate_200_reads_20_frames_in_about_a_tenth_of_a_second():
    src = open_source("sim:ceus?rate=200&size=64")
    with src:
        t0 = time.monotonic()
        frames = [src.read(timeout=1.0) for _ in range(20)]
        elapsed = time.monotonic() - t0
    assert all(f is not None for f in frames)
    assert [f.index for f in frames] == list(range(20))
    assert 0.09 <= elapsed < 0.25  # frame 19 is due 19 / 200 = 0.095 s after frame 0


def test_read_returns_none_when_the_next_frame_is_not_due():
    with open_source("sim:ceus?rate=2&size=64") as src:
        assert src.read(timeout=0.5) is not None
        assert src.read(timeout=0.01) is None
        assert src.read(timeout=0.01) is None


def test_open_source_builds_a_ceus_source_from_a_uri():
    src = open_source("sim:ceus?seed=3&size=64")
    assert isinstance(src, CeusSource)
    with src:
        assert isinstance(src, Source)  # the protocol reads `info`, valid once open
        assert src.info.uri == "sim:ceus?seed=3&size=64"
        assert src.info.shape == (2, 64, 64)
        frame = src.read(timeout=1.0)
    assert frame.data.shape == (2, 64, 64)
    p = open_source("sim:ceus?seed=4&height=64&width=96&density=50&rate=50&flow=2").params
    assert (p.seed, p.height, p.width, p.density, p.rate_hz, p.flow_mm_s) == (4, 64, 96, 50, 50, 2)


@pytest.mark.parametrize(
    "uri",
    [
        "sim:ceus?sed=3",  # unknown key
        "sim:ceus?size=abc",  # does not parse
        "sim:ceus?size=4",  # too small
        "sim:ceus?density=-1",
        "sim:ceus?speed=-1",
        "sim:ceus?birth=2",
        "sim:ceus?rate=nan",
        "sim:ceus?n_frames=-3",
    ],
)
def test_unknown_or_bad_uri_parameter_raises_source_error_naming_the_uri(uri):
    with pytest.raises(SourceError, match=uri.replace("?", r"\?")):
        open_source(uri)


def test_n_frames_ends_the_stream_with_source_ended():
    with open_source("sim:ceus?size=64&speed=0&n_frames=3") as src:
        assert [src.read(timeout=1.0).index for _ in range(3)] == [0, 1, 2]
        with pytest.raises(SourceEnded, match="sim:ceus"):
            src.read(timeout=1.0)


def test_read_before_open_raises_and_reopen_restarts():
    src = CeusSource(SMALL, speed=0)
    with pytest.raises(SourceError, match="not open"):
        src.read()
    with src:
        first = src.read(timeout=1.0).data
        src.read(timeout=1.0)
    src.close()  # idempotent
    with src:
        assert np.array_equal(src.read(timeout=1.0).data, first)
