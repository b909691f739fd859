"""The SMLM simulator: blinking emitters on filaments, a Gaussian PSF and a camera model."""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace

import numpy as np
import pytest

from drivers import SourceEnded, SourceError, open_source
from drivers.base import Frame, Source
from drivers.recording import RecordingReader, RecordingWriter
from drivers.sim.smlm import (
    SmlmParams,
    SmlmSimulator,
    SmlmSource,
    SmlmStack,
    adu_to_photons,
    filament_from_meta,
    simulate_stack,
)


def one_emitter(**kw) -> SmlmParams:
    """Params whose density gives exactly one emitter."""
    p = SmlmParams(**kw)
    return replace(p, density=p.p_frame / (p.field_nm / 1000) ** 2)


def interior_seed(p: SmlmParams, margin_px: float) -> int:
    """The first seed whose (single) emitter lies margin_px or more inside the field."""
    for seed in range(100):
        xy = SmlmSimulator(p, seed).emitters[0] / p.pixel_nm
        if np.all((xy > margin_px) & (xy < p.size - margin_px)):
            return seed
    raise AssertionError("no interior emitter in 100 seeds")


def dense_centreline(sim: SmlmSimulator, m: int = 20) -> tuple[np.ndarray, float]:
    """Centreline points (all filaments), m per segment of the simulator's chains, and
    the arc length each point stands for."""
    fil = sim._filaments
    a, b = fil.points[fil.seg], fil.points[fil.seg + 1]
    u = np.arange(m)[None, :, None] / m
    step = np.linalg.norm(b - a, axis=1).mean() / m
    return (a[:, None] + u * (b - a)[:, None]).reshape(-1, 2), step


def test_same_seed_gives_identical_frames_and_positions():
    p = SmlmParams(size=32, density=3)
    a, b = simulate_stack(p, 20, seed=7), simulate_stack(p, 20, seed=7)
    assert isinstance(a, SmlmStack) and a.params == p
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.filament, b.filament)
    assert all(np.array_equal(x, y) for x, y in zip(a.positions, b.positions, strict=True))
    c = simulate_stack(p, 20, seed=8)
    assert not np.array_equal(a.frames, c.frames)
    # the seed's sample stream is separate: other light, same filaments
    d = simulate_stack(replace(p, photons=3000, background=5), 2, seed=7)
    assert np.array_equal(a.filament, d.filament)


def test_stack_shapes_dtypes_and_coordinates_follow_the_contract():
    p = SmlmParams(size=32)
    s = simulate_stack(p, 10, seed=1)
    assert s.frames.shape == (10, 32, 32) and s.frames.dtype == np.uint16
    assert s.filament.shape == (256, 256) and s.filament.dtype == np.float32
    assert s.filament.max() == 1.0 and s.filament.min() == 0.0
    assert len(s.positions) == 10
    for xy in s.positions:
        assert xy.dtype == np.float64 and xy.ndim == 2 and xy.shape[1] == 2
        assert np.all((xy >= 0) & (xy < p.field_nm))
    # every emitter sits on a filament: its fine pixel (x -> column) is on the image
    xy = np.concatenate(s.positions)
    fine = np.floor(xy / (p.pixel_nm / 8)).astype(int)
    assert s.filament[fine[:, 1], fine[:, 0]].min() > 0


def test_background_frames_have_the_camera_mean_and_variance():
    # no emitter light: ADU = gain (Poisson(b) + read noise) + offset, rounded
    p = SmlmParams(size=32, photons=0.0, background=20.0, gain=2.0, offset=100.0, read_noise=1.5)
    frames = simulate_stack(p, 100, seed=2).frames.astype(np.float64)
    assert frames.mean() == pytest.approx(p.offset + p.gain * p.background, abs=0.1)
    expected_var = p.gain**2 * (p.background + p.read_noise**2) + 1 / 12
    assert frames.var() == pytest.approx(expected_var, rel=0.03)
    photons = adu_to_photons(frames, p)
    assert photons.dtype == np.float32
    assert photons.mean() == pytest.approx(p.background, abs=0.05)


def isolated_emitter_photons(photons: float, n_frames: int, **kw):
    """Background-free photon images around one always-ON interior emitter, and its position."""
    p = one_emitter(size=24, photons=photons, mean_on=1e9, mean_off=1.0, **kw)
    seed = interior_seed(p, 7)
    sim = SmlmSimulator(p, seed)
    frames = np.stack([sim.next_frame()[0] for _ in range(n_frames)])
    assert np.all(sim.on_time == 1.0)
    return adu_to_photons(frames, p) - p.background, sim.emitters[0], p


def test_isolated_emitter_gives_photons_times_gain_in_adu():
    images, xy, p = isolated_emitter_photons(2000.0, 100)
    c, r = (xy / p.pixel_nm).astype(int)
    win = images[:, r - 6 : r + 7, c - 6 : c + 7]  # +-6 px = +-6 sigma: all the light
    total = win.sum(axis=(1, 2))
    assert total.mean() == pytest.approx(p.photons, rel=0.02)
    # shot noise: Poisson(photons + background photons in the window)
    assert total.std() == pytest.approx(math.sqrt(p.photons + 169 * (p.background + 2.25)),
                                        rel=0.25)


def test_psf_width_of_a_summed_isolated_emitter_matches_sigma():
    images, xy, p = isolated_emitter_photons(5000.0, 100)
    img = images.sum(0).astype(np.float64)
    centres = (np.arange(p.size) + 0.5) * p.pixel_nm
    c, r = (xy / p.pixel_nm).astype(int)
    sl = slice(r - 5, r + 6), slice(c - 5, c + 6)
    w = img[sl]
    X, Y = np.meshgrid(centres[sl[1]], centres[sl[0]])
    var = [(w * (X - xy[0]) ** 2).sum() / w.sum(), (w * (Y - xy[1]) ** 2).sum() / w.sum()]
    # a pixel-integrated Gaussian sampled at pixel centres has variance sigma^2 + pixel^2 / 12
    sigma = np.sqrt(np.array(var) - p.pixel_nm**2 / 12)
    assert p.psf_sigma_nm == pytest.approx(0.21 * 660 / 1.4)
    np.testing.assert_allclose(sigma, p.psf_sigma_nm, rtol=0.1)


def test_blinking_has_the_duty_cycle_and_exponential_dwell_times():
    p = SmlmParams(size=32, density=4.0, mean_on=2.0, mean_off=20.0)
    sim = SmlmSimulator(p, 3)
    assert sim.n_emitters == p.n_emitters > 100
    T = 1500
    on = np.empty((T, sim.n_emitters))
    K = np.empty(T)
    for t in range(T):
        K[t] = len(sim.next_frame()[1])
        on[t] = sim.on_time
    assert on.mean() == pytest.approx(p.mean_on / (p.mean_on + p.mean_off), rel=0.05)
    # density = emitters that emit in a frame, per um^2
    assert K.mean() / (p.field_nm / 1000) ** 2 == pytest.approx(p.density, rel=0.05)
    # memoryless dwell times: ON all through frame t -> ON all through t + 1 with
    # probability exp(-1 / mean_on); likewise OFF with exp(-1 / mean_off)
    full_on, full_off = on == 1.0, on == 0.0
    stay_on = (full_on[:-1] & full_on[1:]).sum() / full_on[:-1].sum()
    stay_off = (full_off[:-1] & full_off[1:]).sum() / full_off[:-1].sum()
    assert stay_on == pytest.approx(math.exp(-1 / p.mean_on), abs=0.02)
    assert stay_off == pytest.approx(math.exp(-1 / p.mean_off), abs=0.005)
    # partial frames: an emitter switching within a frame emits a fraction of the photons
    assert ((on > 0) & (on < 1)).any()


def test_filaments_are_25_nm_wide_on_the_fine_image():
    p = SmlmParams(size=32, n_filaments=1)
    sim = SmlmSimulator(p, 4)
    img = sim.filament_image(8)
    fine_nm = p.pixel_nm / 8
    line, step = dense_centreline(sim)
    length_in_field = step * np.all((line >= 0) & (line < p.field_nm), axis=1).sum()
    assert length_in_field > p.field_nm  # it crosses the field
    # tube area / length = width (coverage 1 = a whole fine pixel, at 8x no rescaling)
    width = img.sum() * fine_nm**2 / length_in_field
    assert width == pytest.approx(p.filament_width_nm, rel=0.03)
    # and every emitter lies within half the width of the centreline
    d = np.min(np.linalg.norm(sim.emitters[:, None] - line[None, ::4], axis=2), axis=1)
    assert d.max() <= p.filament_width_nm / 2 + 1.0
    assert d.mean() == pytest.approx(p.filament_width_nm / 4, rel=0.15)  # uniform across


def test_bright_emitters_clip_at_65535_instead_of_wrapping():
    p = one_emitter(size=16, photons=1e7, mean_on=1e9, mean_off=1.0)
    frame, xy = SmlmSimulator(p, interior_seed(p, 4)).next_frame()
    assert frame.dtype == np.uint16 and len(xy) == 1
    c, r = (xy[0] / p.pixel_nm).astype(int)
    assert frame[r, c] == 65535
    assert frame.min() >= p.offset  # no pixel wrapped round to a small value


def test_invalid_params_raise_value_error_naming_the_field():
    for bad in ({"size": 4}, {"na": 0.0}, {"photons": -1.0}, {"mean_off": 0.0},
                {"density": float("nan")}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SmlmParams(**bad)


def test_a_64_pixel_frame_costs_well_under_two_milliseconds_of_cpu():
    sim = SmlmSimulator(SmlmParams(size=64, density=1.0), 5)
    for _ in range(20):
        sim.next_frame()
    t0 = time.process_time()
    for _ in range(300):
        sim.next_frame()
    per_frame = (time.process_time() - t0) / 300
    assert per_frame < 2e-3  # ~0.3 ms on the 2-core dev box


def test_source_frames_hold_the_simulated_adu_exactly_with_positions_in_emitter_slots():
    p = SmlmParams(size=32, density=2.0)
    stack = simulate_stack(p, 5, seed=9)
    with open_source("sim:smlm?seed=9&size=32&density=2&speed=0") as src:
        assert isinstance(src, SmlmSource) and isinstance(src, Source)
        info = src.info
        frames = [src.read(timeout=1.0) for _ in range(5)]
        fine = src.filament_image()
    N = p.n_emitters
    assert info.kind == "frames" and info.shape == (1, 32, 32) and info.rate_hz == 100.0
    assert info.truth_shapes == {"positions": (N, 2), "photons": (N,)}
    assert info.meta["units"] == "adu" and info.meta["pixel_nm"] == 100.0
    assert info.meta["psf_sigma_nm"] == pytest.approx(99.0)
    json.dumps(info.meta)  # JSON-serializable, as the recorder needs
    for k, f in enumerate(frames):
        assert isinstance(f, Frame) and f.index == k and f.t == pytest.approx(k / 100)
        assert f.data.dtype == np.float32 and f.data.shape == (1, 32, 32)
        np.testing.assert_array_equal(f.data[0], stack.frames[k])  # uint16 values, exact
        emitting = np.isfinite(f.truth["positions"][:, 0])
        np.testing.assert_allclose(f.truth["positions"][emitting], stack.positions[k], atol=1e-3)
        assert np.array_equal(emitting, f.truth["photons"] > 0)
        assert f.truth["photons"].max() <= p.photons
    assert np.array_equal(fine, stack.filament)
    np.testing.assert_array_equal(filament_from_meta(info.meta), stack.filament)


def test_recorded_smlm_stream_keeps_its_truth_and_rebuilds_its_filament(tmp_path):
    path = tmp_path / "smlm.h5"
    with SmlmSource(SmlmParams(size=16, density=3.0), seed=2, speed=0, upsample=4) as src:
        items = [src.read(timeout=1.0) for _ in range(4)]
        fine = src.filament_image()
        with RecordingWriter(path, {"smlm": src.info}) as w:
            w.append_items("smlm", items)
    with RecordingReader(path) as r:
        meta = r.info("smlm").meta
        arrays = r.arrays("smlm")
    np.testing.assert_array_equal(arrays["truth/positions"][3], items[3].truth["positions"])
    np.testing.assert_array_equal(arrays["data"][0], items[0].data)
    assert fine.shape == (64, 64)
    np.testing.assert_array_equal(filament_from_meta(meta), fine)


def test_source_is_paced_at_its_rate():
    with open_source("sim:smlm?rate=100&size=64&density=2") as src:
        t0 = time.monotonic()
        frames = [src.read(timeout=1.0) for _ in range(30)]
        elapsed = time.monotonic() - t0
        assert src.read(timeout=0.001) is None  # frame 30 is not due yet
    assert [f.index for f in frames] == list(range(30))
    assert 0.28 <= elapsed < 0.40  # frame 29 is due 0.29 s after frame 0
    assert frames[-1].t_host - frames[0].t_host == pytest.approx(0.29, abs=0.05)


def test_uri_parameters_reach_the_params():
    src = open_source("sim:smlm?seed=4&size=40&pixel=80&na=1.3&wavelength=600&filaments=3"
                      "&width=30&density=2.5&mean_on=3&mean_off=50&photons=800&background=10"
                      "&read_noise=2&gain=1.5&offset=90&rate=50&persistence=5000&upsample=4")
    assert src.seed == 4 and src.upsample == 4
    assert src.params == SmlmParams(size=40, pixel_nm=80, na=1.3, wavelength_nm=600,
                                    n_filaments=3, filament_width_nm=30, density=2.5,
                                    mean_on=3, mean_off=50, photons=800, background=10,
                                    read_noise=2, gain=1.5, offset=90, rate=50,
                                    persistence_nm=5000)


@pytest.mark.parametrize("uri", [
    "sim:smlm?sed=3",  # unknown key
    "sim:smlm?size=abc",  # does not parse
    "sim:smlm?size=4",  # too small
    "sim:smlm?photons=-1",
    "sim:smlm?speed=-1",
    "sim:smlm?rate=nan",
    "sim:smlm?n_frames=-3",
    "sim:smlm?upsample=0",
])
def test_unknown_or_bad_uri_parameter_raises_source_error_naming_the_uri(uri):
    with pytest.raises(SourceError, match=uri.replace("?", r"\?")):
        open_source(uri)


def test_n_frames_ends_the_stream_and_reopen_restarts():
    src = open_source("sim:smlm?size=16&speed=0&n_frames=2")
    with pytest.raises(SourceError, match="not open"):
        src.read()
    with src:
        first = src.read(timeout=1.0).data
        src.read(timeout=1.0)
        with pytest.raises(SourceEnded, match="sim:smlm"):
            src.read(timeout=1.0)
    with src:
        np.testing.assert_array_equal(src.read(timeout=1.0).data, first)


def test_frames_are_the_same_whether_or_not_the_psf_integrals_are_cached(monkeypatch):
    import drivers.sim.smlm as smlm

    p = SmlmParams(size=24, density=3.0)
    cached = SmlmSimulator(p, 6)
    monkeypatch.setattr(smlm, "_PSF_CACHE_BYTES", 0)  # as for a large field
    per_frame = SmlmSimulator(p, 6)
    assert cached._psf_cache is not None and per_frame._psf_cache is None
    for _ in range(5):
        a, b = cached.next_frame(), per_frame.next_frame()
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
