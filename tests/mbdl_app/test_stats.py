import numpy as np
import pytest

from mbdl_app.session.stats import LatencyHistogram, MeanSquare, RateMeter


def test_latency_histogram_percentiles_match_numpy_to_one_percent():
    rng = np.random.default_rng(0)
    x = rng.lognormal(mean=np.log(2e-3), sigma=0.7, size=20000)
    h = LatencyHistogram()
    for v in x:
        h.add(float(v))
    for q in (50, 95, 99):
        assert h.percentile(q) == pytest.approx(np.percentile(x, q), rel=0.015)
    assert h.n == len(x) and h.max == pytest.approx(x.max())


def test_latency_histogram_memory_is_constant():
    h = LatencyHistogram()
    n_bins = h.counts.size
    for v in np.geomspace(1e-7, 1e4, 5000):
        h.add(float(v))
    assert h.counts.size == n_bins and h.counts.sum() == 5000
    assert np.isnan(LatencyHistogram().percentile(50))


def test_rate_meter_measures_events_per_second_in_its_window():
    r = RateMeter(window=2.0)
    for k in range(101):
        r.tick(10.0 + k * 0.01)  # 100 Hz for one second
    assert r.rate(now=11.0) == pytest.approx(100.0, rel=1e-6)
    assert r.rate(now=20.0) == 0.0  # everything fell out of the window


def test_mean_square_reports_db_of_the_mean_not_mean_of_db():
    m = MeanSquare(recent=2)
    for v in (1.0, 0.01, 0.01):
        m.add(v)
    assert m.overall_db() == pytest.approx(10 * np.log10(1.02 / 3))
    assert m.recent_db() == pytest.approx(-20.0)
