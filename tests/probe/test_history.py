"""Metric history: what the probe reports of a metric is its recorded samples, canonical as any other."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from scope_common.report import Metric, Sample
from scope_probe.history import MetricHistory

_samples = st.lists(st.tuples(st.integers(0, 50).map(float), st.floats(-1e6, 1e6)), max_size=30)


@given(_samples, st.floats(0, 1e6), st.booleans())
def test_the_metric_is_the_canonical_one_of_its_last_samples(
    samples: list[tuple[float, float]], top: float, ordered: bool
) -> None:
    """In time order (the usual case, taken without sorting) or not (a clock that went back)."""
    if ordered:
        samples = [(float(t), v) for t, (_, v) in enumerate(samples)]
    history = MetricHistory()
    for timestamp, value in samples:
        history.record("n", "cpu", timestamp, value)
    kept = [Sample(t, v) for t, v in samples[-20:]]
    expected = Metric.from_samples(kept, top) if kept else None
    assert history.metric("n", "cpu", top) == expected
