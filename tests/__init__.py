"""scope's test suite (a package so that `tests.fixtures.*` plugins import by name)."""
