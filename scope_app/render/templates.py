"""Node details made from the templates the report carries: metadata rows, metric rows, control buttons.

The app knows no Docker, host or process fields: each topology's templates (scope_common/report.py,
`Templates`) say which of a node's fields show, under what label and in what order, and how each
control's button looks. A field no template names is not shown: a row needs a label and a place only
the probe that sent the field can give, and showing every raw key would put plumbing
(`docker_container_ips_with_scopes`, `control_probe_id`) and whatever a faulty probe sends into every
panel. A kind of template a topology's reports carry none of falls back on this project's own
(scope_common/templates.py), so reports of a probe from before templates still show as they did.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass

from scope_common.report import (
    CONTROL_PROBE_ID,
    CONTROLS,
    DATETIME,
    DURATION,
    FROM_PARENT,
    FROM_PREFIX,
    FROM_SETS,
    NO_TEMPLATES,
    ControlTemplate,
    MetadataTemplate,
    Metric,
    Node,
    Report,
    Templates,
)
from scope_common.templates import FALLBACK_TEMPLATES

#: A metadata row: (id, label, value).
Row = tuple[str, str, str]

#: Per topology, the report's templates last seen and what they resolved to: the same object while they
#: stay the same, so that the views' node caches (`cached_node`) compare them by identity.
_resolved: dict[str, tuple[Templates, Templates]] = {}


def topology_templates(report: Report, topology: str) -> Templates:
    """The templates `topology`'s nodes are shown with: the report's, kind by kind, or the fallback for
    a kind the report carries none of."""
    carried = report.templates(topology)
    known = _resolved.get(topology)
    if known is not None and known[0] is carried:
        return known[1]
    fallback = FALLBACK_TEMPLATES.get(topology, NO_TEMPLATES)
    resolved = Templates(
        carried.metadata or fallback.metadata,
        carried.metrics or fallback.metrics,
        carried.controls or fallback.controls,
    )
    _resolved[topology] = (carried, resolved)
    return resolved


def metadata_rows(templates: Templates, node: Node, parents: Mapping[str, str]) -> tuple[list[Row], list[Row]]:
    """(summary rows, details-only rows) of `node`, by priority; rows without a value are left out.
    `parents`: the labels of the node's parents by topology, for FROM_PARENT rows."""
    summary: list[Row] = []
    detail: list[Row] = []
    for template in sorted(templates.metadata.values(), key=lambda t: (t.priority, t.id)):
        rows = detail if template.detail else summary
        if template.source == FROM_PREFIX:
            prefix = template.key
            for key, (_, value) in sorted(node.latest.items()):
                if key.startswith(prefix) and value:
                    rest = key[len(prefix) :]
                    rows.append((template.id + rest, f"{template.label} {rest}", _shown(template, value)))
            continue
        if template.source == FROM_PARENT:
            value = parents.get(template.key, "")
        elif template.source == FROM_SETS:
            value = ", ".join(node.sets.get(template.key, ()))
        else:
            value = node.get(template.key) or ""
        if value:
            rows.append((template.id, template.label, _shown(template, value)))
    return summary, detail


def _shown(template: MetadataTemplate, value: str) -> str:
    if template.datatype == DATETIME:
        value = _time(value)
    elif template.datatype == DURATION:
        # Decoding takes duration templates only for fields it checks are whole numbers.
        value = str(datetime.timedelta(seconds=int(value)))
    return value[: template.truncate] if template.truncate else value


def _time(value: str) -> str:
    """An ISO time for a Unix timestamp; anything else as it came."""
    try:
        return datetime.datetime.fromtimestamp(float(value), datetime.UTC).isoformat(timespec="seconds")
    except (ValueError, OverflowError, OSError):
        return value


def shown_metrics(templates: Templates, node: Node) -> dict[str, Metric]:
    """The node's metrics that have a template, by the templates' priority."""
    ordered = sorted(templates.metrics.values(), key=lambda t: (t.priority, t.key))
    return {t.key: metric for t in ordered if (metric := node.metrics.get(t.key)) is not None}


@dataclass(frozen=True, slots=True)
class Offered:
    """The controls a node of the merged report offers, and the buttons its topology has."""

    probe_id: str
    control_ids: tuple[str, ...]
    templates: Mapping[str, ControlTemplate]


def offered(report: Report, node_id: str) -> Offered | None:
    """What the node `node_id` offers, whatever its topology; None when it has no controls."""
    for name, topology in report.topologies.items():
        node = topology.nodes.get(node_id)
        if node is not None:
            probe_id = node.get(CONTROL_PROBE_ID)
            control_ids = node.sets.get(CONTROLS, ())
            if not probe_id or not control_ids:
                return None
            return Offered(probe_id, control_ids, topology_templates(report, name).controls)
    return None


def node_controls(report: Report, node_id: str) -> list[dict[str, str]]:
    """NodeDetails `controls` of the node `node_id` (docs/design.md), by rank: the controls it offers
    that its topology has a button for (one a newer probe offers without a template is left out)."""
    found = offered(report, node_id)
    if found is None:
        return []
    buttons = sorted(
        (t for control_id in found.control_ids if (t := found.templates.get(control_id)) is not None),
        key=lambda t: (t.rank, t.id),
    )
    return [_control_json(t, found.probe_id, node_id) for t in buttons]


def _control_json(template: ControlTemplate, probe_id: str, node_id: str) -> dict[str, str]:
    row = {"probeId": probe_id, "nodeId": node_id, "id": template.id, "human": template.human, "icon": template.icon}
    if template.confirm:
        row["confirm"] = template.confirm
    if template.pipe:
        row["pipe"] = template.pipe
    return row
