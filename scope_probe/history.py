"""Recent samples of a reporter's metrics, so that each report carries a sparkline's worth."""

from __future__ import annotations

import itertools
from collections import deque

from scope_common.report import MAX_SAMPLES, Metric, Sample


class MetricHistory:
    """The last MAX_SAMPLES samples of each (node, metric), forgetting nodes not seen in a while.

    The app keeps only the latest report of each probe, so history lives here, bounded: a node's
    samples are dropped by `forget_except` once the node is gone.
    """

    def __init__(self, size: int = MAX_SAMPLES) -> None:
        self._size = size
        self._samples: dict[tuple[str, str], deque[Sample]] = {}

    def add(self, node_id: str, metric: str, timestamp: float, value: float, max_value: float) -> Metric:
        """Record a sample and return the metric with its history."""
        self.record(node_id, metric, timestamp, value)
        found = self.metric(node_id, metric, max_value)
        assert found is not None  # just recorded
        return found

    def record(self, node_id: str, metric: str, timestamp: float, value: float) -> None:
        samples = self._samples.get((node_id, metric))
        if samples is None:
            samples = self._samples[(node_id, metric)] = deque(maxlen=self._size)
        samples.append(Sample(timestamp, value))

    def metric(self, node_id: str, metric: str, max_value: float) -> Metric | None:
        """The metric with its recorded history, or None before its first sample."""
        samples = self._samples.get((node_id, metric))
        if not samples:
            return None
        ordered = tuple(samples)
        if any(a.timestamp >= b.timestamp for a, b in itertools.pairwise(ordered)):
            return Metric.from_samples(ordered, max_value)  # the clock went back: sort them out
        # Recorded in time order, as nearly always: what from_samples makes, without sorting each tick.
        values = [s.value for s in ordered]
        return Metric(ordered[-MAX_SAMPLES:], min(0.0, *values[-MAX_SAMPLES:]), max(max_value, *values[-MAX_SAMPLES:]))

    def forget(self, node_id: str) -> None:
        """Drop one node's history (a restarted container starts a new one)."""
        for key in [k for k in self._samples if k[0] == node_id]:
            del self._samples[key]

    def forget_except(self, node_ids: set[str]) -> None:
        """Drop the history of every node not in `node_ids`."""
        for key in [k for k in self._samples if k[0] not in node_ids]:
            del self._samples[key]
