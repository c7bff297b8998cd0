"""Root conftest: registers the shared fixture plugins (one module per line; add new ones to the list)."""

from __future__ import annotations

pytest_plugins = [
    "tests.fixtures.browser",
    "tests.fixtures.dns",
    "tests.fixtures.docker",
    "tests.fixtures.dockerd",
    "tests.fixtures.netns",
    "tests.fixtures.redis",
    "tests.fixtures.scope",
    "tests.fixtures.service",
]
