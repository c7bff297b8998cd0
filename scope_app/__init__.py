"""The app: receives every probe's reports, merges them, and serves the map."""

from __future__ import annotations
