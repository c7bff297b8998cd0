"""The templates this project's probe sends: how containers, hosts and processes are shown.

They travel in every report (each topology's `Templates`), so the app renders node details from the
report alone. The app also falls back on them for a topology whose reports carry no templates of a
kind at all: a probe from before templates, during a rolling upgrade, or a report built by hand. As
soon as any probe sends templates of a kind for a topology, those alone are used.
"""

from __future__ import annotations

from scope_common.controls import CONTROL_TEMPLATES, HOST_EXEC
from scope_common.report import (
    CMDLINE,
    CONTAINER,
    CONTAINER_COMMAND,
    CONTAINER_CREATED,
    CONTAINER_ID,
    CONTAINER_IPS,
    CONTAINER_NETWORKS,
    CONTAINER_PORTS,
    CONTAINER_RESTART_COUNT,
    CONTAINER_STATE_HUMAN,
    CPU_USAGE,
    DATETIME,
    DURATION,
    FROM_PARENT,
    FROM_PREFIX,
    FROM_SETS,
    HOST,
    HOSTNAME,
    IMAGE_NAME,
    KERNEL_VERSION,
    LABEL_PREFIX,
    LOAD1,
    LOCAL_NETWORKS,
    MEMORY_USAGE,
    OPEN_FILES,
    OS,
    PID,
    PPID,
    PROCESS,
    THREADS,
    UPTIME,
    MetadataTemplate,
    MetricTemplate,
    Templates,
)

CPU = MetricTemplate(1, CPU_USAGE, "cpu", "CPU", "percent")
MEMORY = MetricTemplate(2, MEMORY_USAGE, "memory", "Memory", "filesize")

CONTAINER_TEMPLATES = Templates.build(
    metadata=(
        MetadataTemplate(1, "image", "Image", IMAGE_NAME),
        MetadataTemplate(2, "state", "State", CONTAINER_STATE_HUMAN),
        MetadataTemplate(3, "host", "Host", HOST, source=FROM_PARENT),
        MetadataTemplate(4, "id", "ID", CONTAINER_ID, truncate=12),
        MetadataTemplate(5, "command", "Command", CONTAINER_COMMAND),
        MetadataTemplate(6, "created", "Created", CONTAINER_CREATED, datatype=DATETIME),
        MetadataTemplate(7, "ips", "IPs", CONTAINER_IPS, source=FROM_SETS),
        MetadataTemplate(8, "ports", "Ports", CONTAINER_PORTS, source=FROM_SETS),
        MetadataTemplate(9, "networks", "Networks", CONTAINER_NETWORKS, source=FROM_SETS),
        MetadataTemplate(10, "restart_count", "Restart count", CONTAINER_RESTART_COUNT),
        MetadataTemplate(11, "label_", "Label", LABEL_PREFIX, source=FROM_PREFIX),
    ),
    metrics=(CPU, MEMORY),
)

HOST_TEMPLATES = Templates.build(
    metadata=(
        MetadataTemplate(1, "host", "Host", HOSTNAME),
        MetadataTemplate(2, "os", "OS", OS),
        MetadataTemplate(3, "kernel_version", "Kernel", KERNEL_VERSION),
        MetadataTemplate(4, "uptime", "Uptime", UPTIME, datatype=DURATION),
        MetadataTemplate(5, "local_networks", "Networks", LOCAL_NETWORKS, source=FROM_SETS),
    ),
    metrics=(CPU, MEMORY, MetricTemplate(3, LOAD1, "load1", "Load1")),
)

PROCESS_TEMPLATES = Templates.build(
    metadata=(
        MetadataTemplate(1, "pid", "PID", PID),
        MetadataTemplate(2, "host", "Host", HOST, source=FROM_PARENT),
        MetadataTemplate(3, "container", "Container", CONTAINER, source=FROM_PARENT),
        MetadataTemplate(4, "ppid", "Parent PID", PPID, detail=True),
        MetadataTemplate(5, "cmdline", "Command", CMDLINE, detail=True),
        MetadataTemplate(6, "threads", "Threads", THREADS, detail=True),
        MetadataTemplate(7, "open_files", "Open files", OPEN_FILES, detail=True),
    ),
    metrics=(CPU, MEMORY),
)

#: What the app shows of a kind of template a topology's reports carry none of (see the module's doc).
FALLBACK_TEMPLATES: dict[str, Templates] = {
    CONTAINER: Templates(
        CONTAINER_TEMPLATES.metadata,
        CONTAINER_TEMPLATES.metrics,
        {i: c for i, c in CONTROL_TEMPLATES.items() if i != HOST_EXEC},
    ),
    HOST: Templates(HOST_TEMPLATES.metadata, HOST_TEMPLATES.metrics, {HOST_EXEC: CONTROL_TEMPLATES[HOST_EXEC]}),
    PROCESS: PROCESS_TEMPLATES,
}
