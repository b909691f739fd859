"""ResultBus: paced playback of an engine that publishes its results in bursts (blocks)."""

import numpy as np

from mbdl_app.session.bus import EngineStats, Result, ResultBus


def _block(bus, first, t0, t_end):
    """One block of 20 frames acquired 10 ms apart from t0, all finished at t_end."""
    for i in range(20):
        bus.publish(Result("corona", "ceus", first + i, (first + i) / 100, np.zeros((1, 2, 4, 4)),
                           t0 + i / 100, t_end - 0.1, t_end))


def test_paced_plays_a_blocks_frames_at_the_source_rate_behind_by_the_latency():
    bus = ResultBus()
    bus.register(EngineStats("corona", "ceus"), history=4)
    bus.keep("corona", 44)
    assert bus.paced("corona", now=1.0) is None
    _block(bus, 0, 0.0, 0.40)  # end-to-end 0.21 .. 0.40 s: delay ~0.39 s
    assert bus.latest("corona").index == 19  # what a plain view would show: the block's last frame
    shown = [bus.paced("corona", now=t).index for t in (0.40, 0.45, 0.50, 0.55, 0.60)]
    assert shown == sorted(shown) and shown[0] <= 1 and shown[-1] == 19  # advances, never jumps back
    assert 4 <= shown[1] <= 7 and 9 <= shown[2] <= 12  # ~one frame per 10 ms
    _block(bus, 20, 0.20, 0.60)
    assert bus.paced("corona", now=0.70).index in (29, 30)  # delay 0.40: acquired by 0.30 -> frame 30
    assert len(bus.history("corona")) == 40  # kept two blocks
