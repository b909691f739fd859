"""The session's views: imaging grids, track overlays, metrics."""
