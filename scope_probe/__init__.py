"""The probe: one per host, gathers what the host runs and publishes it to every app."""

from __future__ import annotations
