"""The attacks of issue 12, sent to a running app alongside a real probe, over real ZeroMQ sockets.

Each hostile sender publishes from a loopback address of its own, as a host elsewhere on the network
would. Meanwhile a watcher reads every view and `/api/report` the whole time: each must answer 200,
and the real probe's host must be in them at every read. Afterwards `/metrics` must account for every
message: each one received was applied or dropped with a reason.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from scope_common import wire
from scope_common.report import Report
from tests.fixtures.hostile import HostileMessages, HostileSender, Watcher, worked_through
from tests.fixtures.scope import App, Scope, ScopeProcess, wait_for

VICTIM = "victim-host"
VICTIM_NODE = f"{VICTIM};<host>"
#: The budget the fuzzing app runs with, and what its memory may reach: an idle app is about 60 MiB,
#: a stored node a few KB, and decoding the largest report a small multiple of its 100,000 nodes.
NODE_BUDGET = 20_000
MAX_RSS = 600 * 1024 * 1024


def dropped(app: App, reason: str) -> float:
    return app.metrics().get(f'scope_app_reports_dropped_total{{reason="{reason}"}}', 0.0)


@pytest.fixture
def watched(scope: Scope) -> Iterator[tuple[App, ScopeProcess, Watcher]]:
    """An app with a small node budget, a real probe, and a watcher reading the app all along."""
    app = scope.app(extra=[f"--max-nodes={NODE_BUDGET}", "--max-nodes-per-source=8000", "--max-probes-per-source=8"])
    probe = scope.probe([app.bus], hostname=VICTIM)
    wait_for(lambda: VICTIM_NODE in app.nodes("hosts"), timeout=15, what="the real probe's host")
    watcher = Watcher(app, VICTIM_NODE)
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    try:
        yield app, probe, watcher
    finally:
        watcher.stop()
        thread.join(30)
    assert watcher.reads > 0
    assert not watcher.failures, watcher.failures[:10]
    assert watcher.max_rss < MAX_RSS, f"the app took {watcher.max_rss / 2**20:.0f} MiB"
    assert "Traceback" not in app.log()


def _victim_id(app: App) -> str:
    (probe,) = app.get("/api/probes")
    assert probe["hostname"] == VICTIM
    victim: str = probe["id"]
    return victim


def test_another_sender_cannot_erase_a_probe(watched: tuple[App, ScopeProcess, Watcher]) -> None:
    """An empty report with the victim's id and the largest sequence number, from another address."""
    app, _, _ = watched
    victim = _victim_id(app)
    sender = HostileSender(app)
    erase = wire.encode(wire.Envelope(victim, VICTIM, 2**63 - 1, time.time(), Report(), full=True))
    try:

        def refused() -> bool:
            sender.send(erase)
            return dropped(app, "foreign_probe_id") >= 20

        wait_for(refused, timeout=20, interval=0.05, what="the erasing reports to be dropped")
    finally:
        sender.close()
    applied = app.metrics()["scope_app_reports_applied_total"]
    wait_for(
        lambda: app.metrics()["scope_app_reports_applied_total"] > applied,
        timeout=10,
        what="the real probe's next report to be applied, not dropped as stale",
    )
    assert VICTIM_NODE in app.nodes("hosts")
    assert [p["id"] for p in app.get("/api/probes")] == [victim]


def test_a_flood_of_made_up_probe_ids_locks_no_new_probe_out(
    watched: tuple[App, ScopeProcess, Watcher], scope: Scope
) -> None:
    """2,100 made-up probe ids from one address; then a restarted probe (a new id) must get in."""
    app, probe, _ = watched
    sender = HostileSender(app)
    try:

        def flooded() -> bool:
            for i in range(2_100):
                sender.send(wire.encode(wire.Envelope(f"made-up-{i}", f"fake-{i}", 1, time.time(), Report())))
            return dropped(app, "too_many_probes_from_source") >= 2_000

        wait_for(flooded, timeout=60, interval=0.5, what="the made-up ids to be refused")
    finally:
        sender.close()
    assert len(app.get("/api/probes")) == 1 + 8, "the real probe and the flooding address's 8"
    old_id = _victim_id_of(app)
    probe.kill()
    scope.probe([app.bus], hostname=VICTIM)
    wait_for(
        lambda: len({p["id"] for p in app.get("/api/probes") if p["hostname"] == VICTIM} - {old_id}) == 1,
        timeout=15,
        what="the restarted probe, with its new id, to be accepted",
    )


def _victim_id_of(app: App) -> str:
    (victim,) = [p["id"] for p in app.get("/api/probes") if p["hostname"] == VICTIM]
    return str(victim)


#: Messages per hostile source in the suite; bench/fuzz.py sends a million.
FUZZ_MESSAGES = 1_000
FUZZ_SOURCES = 3


def test_fuzzed_hostile_messages_alongside_a_real_probe(watched: tuple[App, ScopeProcess, Watcher]) -> None:
    app, _, watcher = watched
    victim = _victim_id(app)
    senders = [(HostileSender(app), HostileMessages(seed, victim)) for seed in range(FUZZ_SOURCES)]
    try:
        for _ in range(FUZZ_MESSAGES):
            for sender, messages in senders:
                sender.send(messages.message())
            time.sleep(0.001)  # a steady stream rather than one burst the bus's queues would mostly drop
    finally:
        for sender, _ in senders:
            sender.close()

    counts = worked_through(app, timeout=60)
    received = counts["scope_app_reports_received_total"]
    applied = counts["scope_app_reports_applied_total"]
    drops = {k: v for k, v in counts.items() if k.startswith("scope_app_reports_dropped_total")}
    assert received > FUZZ_MESSAGES, "most messages reached the app"
    assert received == applied + sum(drops.values()), f"every message is applied or counted as dropped: {drops}"
    for reason in ("malformed", "foreign_probe_id", "unknown_version"):
        assert drops.get(f'scope_app_reports_dropped_total{{reason="{reason}"}}', 0) > 0, reason
    assert any(k.startswith("scope_app_nodes_rejected_total") and v > 0 for k, v in counts.items())
    assert counts["scope_app_stored_nodes"] <= NODE_BUDGET
    assert counts.get('scope_app_task_restarts_total{task="bus"}', 0) == 0
    assert VICTIM_NODE in app.nodes("hosts")
    assert watcher.reads > 0
