"""Where the context x comes from: devices, recordings and physics simulators.

Imports numpy, scipy, cv2, serial, h5py, tifffile; never torch, engines, mbdl_app or Qt.
"""

from drivers.base import Frame, Sample, Source, SourceInfo
from drivers.errors import DriverError, FormatError, SourceEnded, SourceError
from drivers.uri import open_source, parse_uri

__all__ = [
    "DriverError",
    "FormatError",
    "Frame",
    "Sample",
    "Source",
    "SourceEnded",
    "SourceError",
    "SourceInfo",
    "open_source",
    "parse_uri",
]
