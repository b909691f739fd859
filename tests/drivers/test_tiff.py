"""TIFF, OME-TIFF and ImageJ stacks: real files written with tifffile, read back exactly."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from drivers import SourceEnded, SourceError, open_source
from drivers.tiff import TiffSource

T, C, H, W = 6, 3, 10, 12


@pytest.fixture
def stack() -> np.ndarray:
    """(T, C, H, W) uint16 with every value distinct."""
    return (np.arange(T * C * H * W, dtype=np.uint32).reshape(T, C, H, W) * 7 % 65521
            ).astype(np.uint16)


def read_all(src, timeout: float = 1.0) -> list:
    items = []
    with pytest.raises(SourceEnded):
        while len(items) < 10_000:
            item = src.read(timeout)
            if item is not None:
                items.append(item)
    return items


def test_plain_tyx_stack_is_memory_mapped_and_read_back_exactly(tmp_path, stack):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, stack[:, 0])
    with open_source(f"tiff:{path}?speed=0") as src:
        assert src.memmapped and src.info.meta["memmapped"]
        assert src.info.shape == (1, H, W)
        assert src.info.rate_hz == 0 and src.info.meta["rate_source"] == "unknown"
        assert "pixel_size_um" not in src.info.meta
        frames = read_all(src)
    assert [f.index for f in frames] == list(range(T))
    assert [f.t for f in frames] == list(range(T))  # no rate: t counts frames
    for k, f in enumerate(frames):
        assert f.data.dtype == np.float32 and f.data.shape == (1, H, W)
        np.testing.assert_array_equal(f.data[0], stack[k, 0])


def test_ome_tiff_gives_channels_pixel_size_and_frame_rate(tmp_path, stack):
    path = tmp_path / "stack.ome.tif"
    tifffile.imwrite(path, stack, ome=True, metadata={
        "axes": "TCYX", "PhysicalSizeX": 0.108, "PhysicalSizeY": 0.11, "TimeIncrement": 0.05})
    with open_source(f"tiff:{path}?speed=0") as src:
        assert src.memmapped
        assert src.info.shape == (C, H, W)
        assert src.info.meta["pixel_size_um"] == pytest.approx([0.11, 0.108])
        assert src.info.meta["format"] == "ome"
        assert src.info.rate_hz == pytest.approx(20.0)
        frames = read_all(src)
    np.testing.assert_array_equal(np.stack([f.data for f in frames]), stack)
    assert [f.t for f in frames] == pytest.approx([k * 0.05 for k in range(T)])


def test_ome_pixel_size_units_are_converted_to_micrometres(tmp_path, stack):
    path = tmp_path / "nm.ome.tif"
    tifffile.imwrite(path, stack[:, 0], ome=True, metadata={
        "axes": "TYX", "PhysicalSizeX": 160.0, "PhysicalSizeXUnit": "nm",
        "PhysicalSizeY": 0.16, "PhysicalSizeYUnit": "µm"})
    with TiffSource(path) as src:
        assert src.info.meta["pixel_size_um"] == pytest.approx([0.16, 0.16])


def test_imagej_hyperstack_gives_pixel_size_from_resolution_and_unit(tmp_path, stack):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, stack, imagej=True, resolution=(1 / 0.25, 1 / 0.2),
                     metadata={"axes": "TCYX", "unit": "um", "finterval": 0.1})
    with open_source(f"tiff:{path}?speed=0") as src:
        assert src.memmapped and src.info.meta["format"] == "imagej"
        assert src.info.meta["pixel_size_um"] == pytest.approx([0.2, 0.25])
        assert src.info.rate_hz == pytest.approx(10.0)
        np.testing.assert_array_equal(np.stack([f.data for f in read_all(src)]), stack)


def test_resolution_tags_in_centimetres_give_pixel_size(tmp_path, stack):
    path = tmp_path / "res.tif"
    tifffile.imwrite(path, stack[:, 0], resolution=(1e4 / 0.5, 1e4 / 0.5),
                     resolutionunit="CENTIMETER")
    with TiffSource(path) as src:
        assert src.info.meta["pixel_size_um"] == pytest.approx([0.5, 0.5])


@pytest.mark.parametrize("axes", ["TCYX", "CTYX"])
def test_compressed_stack_is_read_page_by_page_exactly(tmp_path, stack, axes):
    path = tmp_path / f"zlib-{axes}.ome.tif"
    data = stack if axes == "TCYX" else stack.transpose(1, 0, 2, 3)
    tifffile.imwrite(path, data, compression="zlib", ome=True, metadata={"axes": axes})
    with TiffSource(path, speed=0) as src:
        assert not src.memmapped
        assert src.info.shape == (C, H, W)
        np.testing.assert_array_equal(np.stack([f.data for f in read_all(src)]), stack)


def test_rgb_samples_become_channels(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 255, (4, H, W, 3), dtype=np.uint8)
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, rgb, photometric="rgb")
    with TiffSource(path, speed=0) as src:
        assert src.info.shape == (3, H, W)
        np.testing.assert_array_equal(np.stack([f.data for f in read_all(src)]),
                                      rgb.transpose(0, 3, 1, 2))


def test_float_data_and_a_single_image_read_back_exactly(tmp_path):
    image = np.random.default_rng(2).normal(size=(H, W)).astype(np.float32)
    path = tmp_path / "one.tif"
    tifffile.imwrite(path, image)
    with TiffSource(path, speed=0) as src:
        frames = read_all(src)
    assert len(frames) == 1
    np.testing.assert_array_equal(frames[0].data[0], image)


def test_rate_paces_the_stack_and_overrides_the_file(tmp_path, stack):
    path = tmp_path / "paced.ome.tif"
    tifffile.imwrite(path, stack[:, 0], ome=True, metadata={"axes": "TYX", "TimeIncrement": 1.0})
    with open_source(f"tiff:{path}?rate=50&speed=1") as src:
        assert src.info.rate_hz == 50 and src.info.meta["rate_source"] == "uri"
        frames = read_all(src, timeout=0.05)
    assert frames[-1].t == pytest.approx((T - 1) / 50)
    assert frames[-1].t_host - frames[0].t_host == pytest.approx((T - 1) / 50, abs=0.03)


def test_loop_goes_on_with_index_and_time(tmp_path, stack):
    path = tmp_path / "loop.tif"
    tifffile.imwrite(path, stack[:, 0])
    with open_source(f"tiff:{path}?rate=100&speed=0&loop=1") as src:
        frames = [src.read(1.0) for _ in range(2 * T + 1)]
    assert [f.index for f in frames] == list(range(2 * T + 1))
    assert frames[-1].t == pytest.approx(2 * T / 100)
    np.testing.assert_array_equal(frames[T].data, frames[0].data)


def test_frames_are_private_writable_copies_of_the_mapped_file(tmp_path, stack):
    path = tmp_path / "mm.tif"
    tifffile.imwrite(path, stack[:, 0])
    with TiffSource(path, speed=0) as src:
        f = src.read(1.0)
        assert f.data.flags.writeable and f.data.flags.owndata
        f.data[:] = -1  # a consumer scribbling on its item changes nothing else
        assert src.frame_data(0)[0, 0, 0] == stack[0, 0, 0, 0]
    np.testing.assert_array_equal(tifffile.imread(path), stack[:, 0])


def test_missing_tiff_is_a_source_error_naming_it(tmp_path):
    with pytest.raises(SourceError, match="absent.tif"):
        open_source(f"tiff:{tmp_path / 'absent.tif'}").open()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "truncated-zlib"])
def test_corrupt_tiff_is_a_source_error_naming_it(tmp_path, stack, damage):
    path = tmp_path / f"{damage}.tif"
    if damage == "garbage":
        path.write_bytes(b"II*\x00" + b"\xff" * 64)
    else:
        tifffile.imwrite(path, stack, photometric="minisblack",
                         compression="zlib" if "zlib" in damage else None)
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(SourceError, match=f"{damage}.tif"):  # at open or at a frame
        with TiffSource(path, speed=0) as src:
            read_all(src)


def test_tiff_uri_rejects_unknown_and_bad_parameters(tmp_path):
    with pytest.raises(SourceError, match="unknown parameter"):
        open_source("tiff:x.tif?fps=3")
    with pytest.raises(SourceError, match="rate"):
        open_source("tiff:x.tif?rate=0")
    with pytest.raises(SourceError, match="no file"):
        open_source("tiff:")


def test_open_reads_the_header_only(tmp_path):
    big = np.zeros((400, 256, 256), np.uint16)  # 50 MB
    path = Path(tmp_path / "big.tif")
    tifffile.imwrite(path, big)
    t0 = time.monotonic()
    with TiffSource(path, speed=0) as src:
        src.read(1.0)
        assert src.memmapped
    assert time.monotonic() - t0 < 0.5


@pytest.mark.parametrize(("name", "data", "problem"), [
    ("complex", np.ones((4, H, W), np.complex64), "samples are complex64, not integers or floats"),
    ("bool", np.ones((4, H, W), bool), "samples are bool"),
    ("line", np.arange(100, dtype=np.uint16), "1-D data .* without Y and X"),
    ("five-d", np.zeros((2, 3, 5, H, W), np.uint16), "3 unnamed axes longer than 1"),
])
def test_wrong_dtype_or_rank_is_a_one_line_source_error_naming_the_file(tmp_path, name, data,
                                                                         problem):
    path = tmp_path / f"{name}.tif"
    tifffile.imwrite(path, data, photometric="minisblack" if data.ndim > 1 else None)
    with pytest.raises(SourceError, match=f"{name}.tif.*{problem}") as e:
        TiffSource(path, speed=0).open()
    assert "\n" not in str(e.value)


def test_singleton_axes_of_a_five_d_array_are_squeezed_into_a_readable_stack(tmp_path, stack):
    path = tmp_path / "squeezable.tif"
    tifffile.imwrite(path, stack[:, :1, None])  # (T, 1, 1, H, W): one axis longer than 1
    with TiffSource(path, speed=0) as src:
        assert src.info.shape == (1, H, W)
        np.testing.assert_array_equal(np.stack([f.data[0] for f in read_all(src)]), stack[:, 0])


def test_a_frame_holding_nan_is_a_source_error_and_the_stream_goes_on_past_it(tmp_path):
    data = np.random.default_rng(3).normal(size=(4, H, W)).astype(np.float32)
    data[2, 3, 4] = np.nan
    data[2, 0, 0] = np.inf
    path = tmp_path / "nan.tif"
    tifffile.imwrite(path, data, photometric="minisblack")
    with TiffSource(path, speed=0) as src:
        assert [src.read(1.0).index for _ in range(2)] == [0, 1]
        with pytest.raises(SourceError, match="frame 2 of .*nan.tif holds 1 NaN and 1 infinite"):
            src.read(1.0)
        f = src.read(1.0)  # the session reads on after a SourceError
        assert f.index == 3
        np.testing.assert_array_equal(f.data[0], data[3])
        with pytest.raises(SourceEnded):
            src.read(1.0)
