"""Imaging engines: clutter suppression, sparse recovery and super-resolution."""
