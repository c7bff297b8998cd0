"""The controls a node can offer, defined once for the probe (which offers them) and the app (which lists them).

A probe decides which controls each node has right now (by the container's state, say) and carries
their ids in its report: `sets[CONTROLS]` on the node, with `latest[CONTROL_PROBE_ID]` naming the probe
that can perform them. The app needs no Docker knowledge: it looks the ids up here for the label and
icon it shows, and a future probe plugin adds controls by adding rows to this table.
"""

from __future__ import annotations

from dataclasses import dataclass

from scope_common.report import Report

#: Well-known node fields. The set holds control ids; the latest value is the id of the probe to ask.
CONTROLS = "controls"
CONTROL_PROBE_ID = "control_probe_id"


@dataclass(frozen=True, slots=True)
class Control:
    """One action on a node. `pipe` controls answer with a byte stream (a shell, logs)."""

    id: str
    human: str
    icon: str
    #: A question the UI asks before it acts; empty for controls that are easily undone.
    confirm: str = ""
    pipe: bool = False
    #: The stream is a terminal (the UI opens a terminal, not a log pane).
    tty: bool = False

    def json(self, probe_id: str, node_id: str) -> dict[str, str]:
        """The row of NodeDetails `controls` (docs/design.md)."""
        row = {"probeId": probe_id, "nodeId": node_id, "id": self.id, "human": self.human, "icon": self.icon}
        if self.confirm:
            row["confirm"] = self.confirm
        if self.pipe:
            row["pipe"] = "tty" if self.tty else "log"
        return row


STOP = "docker_stop_container"
START = "docker_start_container"
RESTART = "docker_restart_container"
PAUSE = "docker_pause_container"
UNPAUSE = "docker_unpause_container"
REMOVE = "docker_remove_container"
EXEC = "docker_exec_container"
ATTACH = "docker_attach_container"
LOGS = "docker_logs_container"
HOST_EXEC = "host_exec"

CONTROL_TABLE: dict[str, Control] = {
    c.id: c
    for c in (
        Control(STOP, "Stop", "stop"),
        Control(START, "Start", "start"),
        Control(RESTART, "Restart", "restart"),
        Control(PAUSE, "Pause", "pause"),
        Control(UNPAUSE, "Unpause", "unpause"),
        Control(REMOVE, "Remove", "remove", confirm="Remove this container? It cannot be started again."),
        Control(EXEC, "Exec shell", "terminal", pipe=True, tty=True),
        Control(ATTACH, "Attach", "attach", pipe=True, tty=True),
        Control(LOGS, "Logs", "logs", pipe=True),
        Control(HOST_EXEC, "Exec shell", "terminal", pipe=True, tty=True),
    )
}

#: The order buttons appear in, whatever order a report lists the ids in (sets are sorted by id).
_ORDER = {control_id: index for index, control_id in enumerate(CONTROL_TABLE)}


def controls_json(probe_id: str, node_id: str, control_ids: tuple[str, ...]) -> list[dict[str, str]]:
    """NodeDetails rows for the ids a node carries; ids this app does not know (a newer probe's) are left out."""
    known = sorted((i for i in control_ids if i in CONTROL_TABLE), key=_ORDER.__getitem__)
    return [CONTROL_TABLE[i].json(probe_id, node_id) for i in known]


def offered(report: Report, node_id: str) -> tuple[str, tuple[str, ...]] | None:
    """(probe id, control ids) of the node `node_id` in `report`, whatever its topology; None when it has none."""
    for topology in report.topologies.values():
        node = topology.nodes.get(node_id)
        if node is not None:
            probe_id = node.get(CONTROL_PROBE_ID)
            control_ids = node.sets.get(CONTROLS, ())
            return (probe_id, control_ids) if probe_id and control_ids else None
    return None


def node_controls(report: Report, node_id: str) -> list[dict[str, str]]:
    """NodeDetails `controls` of the node `node_id` in the merged `report`."""
    found = offered(report, node_id)
    return controls_json(found[0], node_id, found[1]) if found else []
