"""Controls: the registry of what this probe can do to its nodes, and the dispatch of the apps' requests.

A module that knows a kind of node (Docker containers, the host) registers a handler and a template
(the button: text, icon, confirmation) per control id, and an `offer` function saying which controls
each node has right now. The probe stamps those into every report it publishes (`decorate`): the ids on
the nodes, the templates on their topologies, so the app learns both with the map and needs no
knowledge of Docker. Requests run in a small pool of worker threads: a Docker call that is slow or hangs holds one
worker, never the control channel nor the report loop, and requests past a bound are refused as busy.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from scope_common import rpc
from scope_common.controls import CONTROL_PROBE_ID, CONTROL_TEMPLATES, CONTROLS
from scope_common.report import ControlTemplate, Node, Report, Templates
from scope_probe.pipes import Pipes, Stream
from scope_probe.reporter import Wake

log = logging.getLogger(__name__)

#: Worker threads for controls; requests queued past MAX_PENDING are refused as busy.
WORKERS = 4
MAX_PENDING = 32


class ControlError(Exception):
    """A control that could not be done: `status` is one of the rpc outcomes, the message says why."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a handler did: a value to show, a stream to pipe to the app, a node it removed."""

    value: str = ""
    stream: Stream | None = None
    removed_node: str = ""


#: A handler gets the node id and the request's arguments (a JSON object).
Handler = Callable[[str, Mapping[str, Any]], Outcome]
#: An offer lists (topology, node id, control ids) for the nodes of a report that have controls now.
Offer = Callable[[Report], Iterable[tuple[str, str, tuple[str, ...]]]]


@dataclass(frozen=True, slots=True)
class _Registered:
    handler: Handler
    #: The reporter whose report the control changes (see `register`); "" for none.
    wakes: str
    template: ControlTemplate


class Controls:
    """Every control this probe offers, and the workers that perform them."""

    def __init__(self, probe_id: str, pipes: Pipes) -> None:
        self.probe_id = probe_id
        self.pipes = pipes
        self._handlers: dict[str, _Registered] = {}
        self._offers: list[Offer] = []
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="control")
        self._pending = 0
        self._lock = threading.Lock()
        self._expedite: Wake | None = None
        # Requests by (control, status), for /metrics; controls this probe lacks are counted as "other",
        # so that made-up names cannot grow the table.
        self._calls: dict[tuple[str, str], int] = {}
        #: The stamp of the probe id on nodes: fixed, so the field does not change from one report to the
        #: next, and the probe's start, so that after a restart the new probe wins the merge with reports
        #: the app still holds from the old one.
        self._stamp = time.time()

    def register(
        self, control_id: str, handler: Handler, *, wakes: str, template: ControlTemplate | None = None
    ) -> None:
        """Perform `control_id` with `handler`; its button is `template` (this project's controls have
        theirs in scope_common/controls.py). `wakes` is the reporter whose report it changes ("" for
        none: a shell), whose changes are then published as soon as it sees them (see Probe.expedite).

        Not a refresh of our own right after the answer: the Docker mirror has the change only once the
        engine's event is in, so that report would show the state from before, and its publish would hold
        the mirror's own wake back by the probe's wake gap: the map would follow a second late."""
        self._handlers[control_id] = _Registered(handler, wakes, template or CONTROL_TEMPLATES[control_id])

    def add_offer(self, offer: Offer) -> None:
        self._offers.append(offer)

    def start(self, expedite: Wake) -> None:
        """`expedite`: publish a reporter's changes as soon as it sees them, for a while."""
        self._expedite = expedite

    def stop(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.pipes.close_all()

    def decorate(self, report: Report) -> Report:
        """`report` with every offered control on its node, and the buttons of all this probe's controls
        on each topology that has nodes offering some. All of them, not only those offered now: the app
        accepts a control for a node when its topology has the button (the map may be a second behind
        the node's state: a container stopped a moment ago can be removed), and the templates stay the
        same from one report to the next, so deltas need not carry them. The report is one the probe
        has just merged for publishing (its topologies are its own), so nodes and templates are
        replaced in place."""
        offering: set[str] = set()
        for offer in self._offers:
            for topology, node_id, control_ids in offer(report):
                if control_ids:
                    offering.add(topology)
                    report.add(
                        Node.build(
                            node_id,
                            topology,
                            timestamp=self._stamp,
                            latest={CONTROL_PROBE_ID: self.probe_id},
                            sets={CONTROLS: control_ids},
                        )
                    )
        buttons = Templates.build(controls=(registered.template for registered in self._handlers.values()))
        for topology in offering:
            report.topology(topology).templates = report.topology(topology).templates.merge(buttons)
        return report

    def handle(self, app: str, request: rpc.Message, reply: Callable[[rpc.Message], None]) -> None:
        """Perform `request` from `app` on a worker and `reply` with the outcome. Never blocks."""
        with self._lock:
            busy = self._pending >= MAX_PENDING
            if not busy:
                self._pending += 1
        if busy:
            self._count(request, rpc.BUSY)
            reply(_response(request, rpc.BUSY, error=f"{MAX_PENDING} controls are in progress already"))
            return
        try:
            self._pool.submit(self._run, app, request, reply)
        except RuntimeError:  # shutting down
            with self._lock:
                self._pending -= 1

    def _run(self, app: str, request: rpc.Message, reply: Callable[[rpc.Message], None]) -> None:
        # Before (events may come while the engine works: a stop's kill and die) and after (the engine's
        # event follows its answer): a slow control outlasts one expedite.
        self._expedite_for(request)
        try:
            response = self._perform(app, request)
            self._count(request, response.text("status"))
            reply(response)
        finally:
            with self._lock:
                self._pending -= 1
        self._expedite_for(request)

    def _expedite_for(self, request: rpc.Message) -> None:
        registered = self._handlers.get(request.text("control"))
        if registered is not None and registered.wakes and self._expedite is not None:
            self._expedite(registered.wakes)

    def calls(self) -> dict[tuple[str, str], int]:
        """Requests handled so far by (control, status)."""
        with self._lock:
            return dict(self._calls)

    def _count(self, request: rpc.Message, status: str) -> None:
        control = request.text("control")
        key = (control if control in self._handlers else "other", status)
        with self._lock:
            self._calls[key] = self._calls.get(key, 0) + 1

    def _perform(self, app: str, request: rpc.Message) -> rpc.Message:
        control_id, node_id = request.text("control"), request.text("node")
        registered = self._handlers.get(control_id)
        if registered is None:
            return _response(request, rpc.UNKNOWN_CONTROL, error=f"this probe has no control {control_id[:60]!r}")
        try:
            args = json.loads(request.text("args") or "{}")
            if not isinstance(args, dict):
                raise ControlError(rpc.FAILED, "the arguments must be a JSON object")
            outcome = registered.handler(node_id, args)
        except ControlError as exc:
            log.info("control %s on %s: %s", control_id, node_id, exc)
            return _response(request, exc.status, error=str(exc))
        except json.JSONDecodeError:
            return _response(request, rpc.FAILED, error="the arguments are not JSON")
        except Exception as exc:
            log.exception("control %s on %s failed", control_id, node_id)
            return _response(request, rpc.FAILED, error=f"{type(exc).__name__}: {exc}"[: rpc.MAX_TEXT])
        pipe = ""
        if outcome.stream is not None:
            try:
                pipe = self.pipes.open(app, outcome.stream)
            except Exception as exc:
                return _response(request, rpc.BUSY, error=str(exc))
        return _response(request, rpc.OK, value=outcome.value, pipe=pipe, removed_node=outcome.removed_node)


def _response(
    request: rpc.Message, status: str, *, value: str = "", error: str = "", pipe: str = "", removed_node: str = ""
) -> rpc.Message:
    return rpc.Message.make(
        rpc.RESPONSE,
        id=request.number("id"),
        status=status,
        value=value[: rpc.MAX_TEXT],
        error=error[: rpc.MAX_TEXT],
        pipe=pipe,
        removed_node=removed_node,
    )
