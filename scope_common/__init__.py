"""Shared model and wire format of scope: imported by both the probe and the app, imports neither."""

from __future__ import annotations

__version__ = "0.1.0"
