"""The `scope` command: probe and app together on this host, or either alone."""

from __future__ import annotations
