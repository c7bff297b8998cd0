"""The controls this project's probe offers: their ids, and the buttons they show as.

A probe decides which controls each node has right now (by the container's state, say) and carries
their ids in its report: `sets[CONTROLS]` on the node, with `latest[CONTROL_PROBE_ID]` naming the probe
that can perform them. How each button looks travels with the report too (`ControlTemplate` in the
topology's templates), so the app needs no Docker knowledge and a probe plugin adds a control by
registering a handler and a template. The app falls back on these rows only for reports that carry no
control templates at all (scope_common/templates.py).
"""

from __future__ import annotations

from scope_common.report import CONTROL_PROBE_ID, CONTROLS, ControlTemplate

__all__ = ["CONTROLS", "CONTROL_PROBE_ID", "CONTROL_TEMPLATES"]

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

#: Every control of this probe by id, ranked in the order their buttons appear.
CONTROL_TEMPLATES: dict[str, ControlTemplate] = {
    c.id: c
    for c in (
        ControlTemplate(1, STOP, "Stop", "stop"),
        ControlTemplate(2, START, "Start", "start"),
        ControlTemplate(3, RESTART, "Restart", "restart"),
        ControlTemplate(4, PAUSE, "Pause", "pause"),
        ControlTemplate(5, UNPAUSE, "Unpause", "unpause"),
        ControlTemplate(6, REMOVE, "Remove", "remove", confirm="Remove this container? It cannot be started again."),
        ControlTemplate(7, EXEC, "Exec shell", "terminal", pipe="tty"),
        ControlTemplate(8, ATTACH, "Attach", "attach", pipe="tty"),
        ControlTemplate(9, LOGS, "Logs", "logs", pipe="log"),
        ControlTemplate(10, HOST_EXEC, "Exec shell", "terminal", pipe="tty"),
    )
}
