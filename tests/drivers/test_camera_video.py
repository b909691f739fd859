"""Video files and cameras through OpenCV: real files written with cv2.VideoWriter (MJPG)."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from drivers import SourceEnded, SourceError, open_source
from drivers.camera import CameraSource
from drivers.discovery import list_devices
from drivers.video import FrameFormat, VideoSource
from engines.imaging.svd_filter import SVDFilter

FPS, N, H, W = 25.0, 10, 48, 64
LEVEL = 3 / 255  # MJPG is lossy: a flat frame comes back within a few grey levels


def level(i: int) -> int:
    return 10 + 20 * i


def write_avi(path: Path, frames: list[np.ndarray], fps: float = FPS) -> Path:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h), True)
    assert writer.isOpened()
    for f in frames:
        writer.write(f if f.ndim == 3 else cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
    writer.release()
    return path


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    """N flat gray frames, frame i at level(i)."""
    return write_avi(tmp_path / "clip.avi", [np.full((H, W), level(i), np.uint8) for i in range(N)])


def read_all(source, limit: int = 1000, timeout: float = 1.0) -> list:
    items = []
    with pytest.raises(SourceEnded):
        while len(items) < limit:
            item = source.read(timeout)
            if item is not None:
                items.append(item)
    return items


def test_video_gives_every_frame_gray_in_unit_range_with_container_timing(clip):
    with open_source(f"video:{clip}?speed=0") as src:
        assert src.info.kind == "frames"
        assert src.info.shape == (1, H, W)
        assert src.info.rate_hz == FPS
        assert src.info.meta["codec"] == "MJPG"
        frames = read_all(src)
    assert [f.index for f in frames] == list(range(N))
    for k, f in enumerate(frames):
        assert f.data.dtype == np.float32 and f.data.shape == (1, H, W)
        assert f.t == pytest.approx(k / FPS)
        assert abs(f.data.mean() - level(k) / 255) < LEVEL
        assert 0.0 <= f.data.min() and f.data.max() <= 1.0


def test_video_is_paced_by_container_fps_times_speed(clip):
    for speed in (1.0, 2.0):
        with VideoSource(clip, speed=speed) as src:
            frames = read_all(src, timeout=0.05)
        span = frames[-1].t_host - frames[0].t_host
        assert span == pytest.approx((N - 1) / FPS / speed, abs=0.04)


def test_video_read_returns_none_before_a_frame_is_due(clip):
    with VideoSource(clip, speed=1.0) as src:
        assert src.read(0.1) is not None
        t0 = time.monotonic()
        assert src.read(0.0) is None  # the next one is due 40 ms later
        assert time.monotonic() - t0 < 0.02


def test_video_loop_starts_again_with_index_and_time_going_on(clip):
    with open_source(f"video:{clip}?speed=0&loop=1") as src:
        frames = [src.read(1.0) for _ in range(2 * N + 5)]
    assert [f.index for f in frames] == list(range(2 * N + 5))
    assert [f.t for f in frames] == pytest.approx([k / FPS for k in range(2 * N + 5)])
    np.testing.assert_array_equal(frames[N].data, frames[0].data)
    np.testing.assert_array_equal(frames[2 * N + 3].data, frames[3].data)


def test_rate_parameter_overrides_the_container_fps(clip):
    with open_source(f"video:{clip}?speed=0&rate=100") as src:
        assert src.info.rate_hz == 100
        assert src.read(1.0).t == 0 and src.read(1.0).t == pytest.approx(0.01)


def test_size_and_iq_put_the_gray_image_into_i_and_zeros_into_q(clip):
    with open_source(f"video:{clip}?speed=0&size=32&iq=1") as src:
        assert src.info.shape == (2, 32, 32)
        assert src.info.meta["channels"] == ["I", "Q"]
        f = src.read(1.0)
    assert f.data.shape == (2, 32, 32) and f.data.dtype == np.float32
    assert abs(f.data[0].mean() - level(0) / 255) < LEVEL
    assert not f.data[1].any()
    with open_source(f"video:{clip}?speed=0&size=24x40") as src:
        assert src.read(1.0).data.shape == (1, 24, 40)


def test_color_gives_rgb_planes(tmp_path):
    bgr = np.zeros((H, W, 3), np.uint8)
    bgr[..., 2] = 200  # red in OpenCV's BGR order
    path = write_avi(tmp_path / "red.avi", [bgr] * 3)
    with open_source(f"video:{path}?speed=0&color=1") as src:
        assert src.info.meta["channels"] == ["R", "G", "B"]
        f = src.read(1.0)
    assert f.data.shape == (3, H, W)
    r, g, b = f.data.reshape(3, -1).mean(axis=1)
    assert abs(r - 200 / 255) < 0.05 and g < 0.05 and b < 0.05


def test_gray_video_with_iq_runs_the_svd_clutter_filter(tmp_path):
    """A static textured background (clutter) and a moving bright spot (a 'bubble'):
    the SVD filter on iq=1 windows keeps the spot and removes the background."""
    rng = np.random.default_rng(0)
    background = cv2.GaussianBlur(rng.integers(40, 160, (64, 64)).astype(np.uint8), (5, 5), 0)
    frames = []
    for k in range(20):
        f = background.copy()
        cv2.circle(f, (10 + 2 * k, 32), 3, 255, -1)
        frames.append(f)
    path = write_avi(tmp_path / "spot.avi", frames)
    with open_source(f"video:{path}?speed=0&iq=1&size=64") as src:
        window = np.stack([src.read(1.0).data for _ in range(20)])[None]
    out = SVDFilter(k=1, window=20, output="last")(window)  # (1, 1, 2, 64, 64): the newest frame's motion
    magnitude = np.hypot(out[0, 0, 0], out[0, 0, 1])
    row, col = np.unravel_index(np.argmax(magnitude), magnitude.shape)
    assert abs(row - 32) <= 3 and abs(col - (10 + 2 * 19)) <= 3
    raw_contrast = window[0, -1, 0].max() / window[0, -1, 0].mean()
    assert magnitude.max() / magnitude.mean() > 3 * raw_contrast


def test_items_handed_out_are_independent_arrays(clip):
    with open_source(f"video:{clip}?speed=0&loop=1") as src:
        a = src.read(1.0)
        kept = a.data.copy()
        for _ in range(N + 2):
            src.read(1.0)
    np.testing.assert_array_equal(a.data, kept)


def test_missing_video_file_is_a_source_error_naming_it(tmp_path):
    path = tmp_path / "nope.mp4"
    with pytest.raises(SourceError, match="nope.mp4"):
        open_source(f"video:{path}").open()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_video_file_is_a_source_error_naming_it(clip, tmp_path, damage):
    path = tmp_path / f"{damage}.avi"
    raw = clip.read_bytes()
    path.write_bytes(b"this is not a video " * 100 if damage == "garbage" else raw[: len(raw) // 3])
    with pytest.raises(SourceError, match=f"{damage}.avi"):
        open_source(f"video:{path}").open()


def test_video_uri_rejects_unknown_and_bad_parameters(clip):
    with pytest.raises(SourceError, match="unknown parameter"):
        open_source(f"video:{clip}?sped=1")
    with pytest.raises(SourceError, match="size"):
        open_source(f"video:{clip}?size=big")
    with pytest.raises(SourceError, match="exclude"):
        open_source(f"video:{clip}?color=1&iq=1")
    with pytest.raises(SourceError, match="speed"):
        open_source(f"video:{clip}?speed=-1")


def test_frame_format_scales_8_and_16_bit_and_drops_alpha():
    fmt = FrameFormat()
    out = fmt.convert(np.full((4, 5), 65535, np.uint16), (4, 5))
    assert out.dtype == np.float32 and out.shape == (1, 4, 5) and np.all(out == 1.0)
    bgra = np.zeros((4, 5, 4), np.uint8)
    bgra[..., :3] = 255
    np.testing.assert_allclose(fmt.convert(bgra, (4, 5)), 1.0)
    assert fmt.convert(np.zeros((8, 10), np.uint8), (4, 5)).shape == (1, 4, 5)
    with pytest.raises(ValueError, match="unsupported"):
        fmt.convert(np.zeros((4, 5, 2), np.uint8), (4, 5))


# --- cameras: no camera here; a missing one, and the grab thread driven through a file ---


def test_opening_a_missing_camera_is_a_source_error_naming_it():
    with pytest.raises(SourceError, match="camera 9"):
        open_source("camera:9").open()
    with pytest.raises(SourceError, match="/dev/video99"):
        open_source("camera:/dev/video99?width=640&height=480&fps=30&fourcc=MJPG").open()


def test_camera_uri_parameters_are_checked():
    src = open_source("camera:0?width=320&height=240&fps=60&fourcc=YUYV&size=64")
    assert isinstance(src, CameraSource)
    assert (src.device, src.width, src.height, src.fps, src.fourcc) == (0, 320, 240, 60.0, "YUYV")
    assert src.fmt.size == (64, 64)
    with pytest.raises(SourceError, match="fourcc"):
        open_source("camera:0?fourcc=MJPEG")
    with pytest.raises(SourceError, match="unknown parameter"):
        open_source("camera:0?exposure=3")


def test_camera_converts_frames_with_the_video_code(clip):
    with open_source(f"camera:{clip}") as cam, open_source(f"video:{clip}?speed=0") as vid:
        assert cam.info.shape == vid.info.shape == (1, H, W)
        a, b = cam.read(2.0), vid.read(1.0)
    np.testing.assert_array_equal(a.data, b.data)
    assert a.t_host <= time.monotonic()


def test_camera_grab_failure_raises_once_then_reconnects_and_goes_on(clip):
    """The end of a file is a failed grab, exactly as an unplug is for a device."""
    errors, frames = [], []
    with CameraSource(str(clip)) as cam:
        deadline = time.monotonic() + 10
        while len(frames) < N + 3 and time.monotonic() < deadline:
            t0 = time.monotonic()
            try:
                f = cam.read(0.02)
            except SourceError as e:
                errors.append(str(e))
                continue
            assert time.monotonic() - t0 < 0.1  # never blocks past its timeout
            if f is not None:
                frames.append(f)
        assert cam.reconnects >= 1
    assert len(errors) == 1 and str(clip) in errors[0]
    assert [f.index for f in frames] == list(range(N + 3))
    np.testing.assert_array_equal(frames[N].data, frames[0].data)  # the device came back
    assert frames[N].t_host - frames[N - 1].t_host >= 0.09  # after the 0.1 s backoff


def test_camera_close_stops_the_grab_thread(clip):
    cam = CameraSource(str(clip))
    cam.open()
    thread = cam._thread
    cam.close()
    assert not thread.is_alive()
    with pytest.raises(SourceError, match="not open"):
        cam.read(0.01)


def test_list_devices_is_fast_and_never_raises():
    t0 = time.monotonic()
    devices = list_devices()
    assert time.monotonic() - t0 < 3.0
    for d in devices:
        assert {"kind", "uri", "name", "opens", "error"} <= set(d)
        assert d["kind"] in ("camera", "serial")
        assert isinstance(d["opens"], bool)
        assert d["opens"] or d["error"]
