import threading
import time

import numpy as np
import pytest

from drivers.base import Frame, Sample
from mbdl_app.session.rings import FrameRing, SampleQueue


def _frame(i):
    return Frame(index=i, t=i / 100, data=np.full((1, 2, 2), i, np.float32))


def test_frame_ring_returns_the_newest_full_window_oldest_first():
    ring = FrameRing(window=3, shape=(1, 2, 2))
    out = ring.new_window()
    for i in range(2):
        ring.push(_frame(i))
    assert ring.take(0, out, timeout=0.01) is None  # not full yet
    for i in range(2, 7):
        ring.push(_frame(i))
    count, frames = ring.take(0, out, timeout=0.01)
    assert count == 7 and [f.index for f in frames] == [4, 5, 6]
    assert out[:, 0, 0, 0].tolist() == [4, 5, 6]
    assert ring.take(count, out, timeout=0.01) is None  # nothing newer


def test_frame_ring_with_a_hop_gives_windows_aligned_to_the_stream():
    ring = FrameRing(window=3, shape=(1, 2, 2), hop=3)
    out = ring.new_window()
    for i in range(3):
        ring.push(_frame(i))
    end, frames = ring.take(0, out, timeout=0.01)  # the first full window
    assert end == 3 and [f.index for f in frames] == [0, 1, 2]
    for i in range(3, 5):
        ring.push(_frame(i))
    assert ring.take(end, out, timeout=0.01) is None  # 2 new < hop
    ring.push(_frame(5))
    end, frames = ring.take(end, out, timeout=0.01)
    assert end == 6 and [f.index for f in frames] == [3, 4, 5]
    assert out[:, 0, 0, 0].tolist() == [3, 4, 5]
    for i in range(6, 14):  # a worker that fell behind gets the newest ALIGNED block
        ring.push(_frame(i))
    end, frames = ring.take(end, out, timeout=0.01)
    assert end == 12 and out[:, 0, 0, 0].tolist() == [9, 10, 11]
    ring.push(_frame(14))
    end, frames = ring.take(end, out, timeout=0.01)
    assert end == 15 and [f.index for f in frames] == [12, 13, 14]


def test_frame_ring_rejects_a_hop_beyond_its_window():
    with pytest.raises(ValueError, match="hop 4"):
        FrameRing(window=3, shape=(1,), hop=4)


def test_frame_ring_latest_wins_and_never_blocks_the_producer():
    ring = FrameRing(window=4, shape=(1, 2, 2))
    t0 = time.perf_counter()
    for i in range(1000):  # no consumer at all
        ring.push(_frame(i))
    assert time.perf_counter() - t0 < 1.0
    out = ring.new_window()
    count, frames = ring.take(0, out, timeout=0.01)
    assert frames[-1].index == 999 and out[:, 0, 0, 0].tolist() == [996, 997, 998, 999]


def test_frame_ring_close_wakes_a_waiting_worker():
    ring = FrameRing(window=2, shape=(1, 2, 2))
    got = []
    th = threading.Thread(target=lambda: got.append(ring.take(0, ring.new_window(), 5.0)))
    th.start()
    time.sleep(0.05)
    ring.close()
    th.join(1.0)
    assert not th.is_alive() and got == [None]


def test_sample_queue_keeps_order_and_counts_overflow_drops():
    q = SampleQueue(capacity=5)
    for i in range(8):
        q.push(Sample(index=i, t=i, value=np.zeros(3)))
    got = q.drain(timeout=0.01)
    assert [s.index for s in got] == [3, 4, 5, 6, 7]
    assert q.dropped == 3
    assert q.drain(timeout=0.01) == []


def test_frame_ring_with_a_backlog_takes_a_burst_in_order_then_jumps_when_too_far_behind():
    ring = FrameRing(window=1, shape=(1, 2, 2), hop=1, backlog=4)
    out = ring.new_window()
    ring.push(_frame(0))
    end, _ = ring.take(0, out, timeout=0.01)
    for i in range(1, 5):  # a burst of 4: all taken, in order
        ring.push(_frame(i))
    got = []
    while (r := ring.take(end, out, timeout=0.01)) is not None:
        end, frames = r
        got.append(frames[-1].index)
    assert got == [1, 2, 3, 4]
    for i in range(5, 15):  # 10 behind > backlog 4: jump to the newest
        ring.push(_frame(i))
    end, frames = ring.take(end, out, timeout=0.01)
    assert frames[-1].index == 14 and out[0, 0, 0, 0] == 14
