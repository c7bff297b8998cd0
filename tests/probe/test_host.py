"""The host node: facts, metrics with their history, and the networks the host is on."""

from __future__ import annotations

import ipaddress
import os
import time

import psutil

from scope_common import ids
from scope_common.report import (
    CPU_USAGE,
    HOST_NODE_ID,
    HOSTNAME,
    KERNEL_VERSION,
    LOAD1,
    LOCAL_NETWORKS,
    MAX_SAMPLES,
    MEMORY_USAGE,
    OS,
    UPTIME,
    Node,
)
from scope_probe.addresses import AddressScopes
from scope_probe.host import HostReporter
from scope_probe.reporter import ProbeContext
from tests.fixtures.netns import Netns

HOST = "host-under-test"


def _reporter() -> HostReporter:
    return HostReporter(ProbeContext(host_id=HOST, probe_id="test"), AddressScopes(HOST))


def _host_node(reporter: HostReporter, now: float) -> Node:
    nodes = reporter.report(now).nodes("host")
    assert list(nodes) == [ids.host_id(HOST)]
    return nodes[ids.host_id(HOST)]


def test_host_node_carries_the_hosts_facts() -> None:
    node = _host_node(_reporter(), time.time())
    assert node.get(HOSTNAME) == HOST
    assert node.get(HOST_NODE_ID) == f"{HOST};<host>"
    assert node.get(OS) == "linux"
    assert node.get(KERNEL_VERSION) == os.uname().release
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    assert abs(int(node.get(UPTIME) or "-1") - uptime) < 5
    assert node.get("cpu_count") == str(os.cpu_count())


def test_metrics_are_plausible_and_keep_a_bounded_history() -> None:
    reporter = _reporter()
    start = time.time()
    node = _host_node(reporter, start)
    for key in (CPU_USAGE, MEMORY_USAGE, LOAD1):
        assert len(node.metrics[key].samples) == 1, key

    memory = node.metrics[MEMORY_USAGE]
    total = psutil.virtual_memory().total
    assert memory.max == total
    assert memory.last is not None and 0 < memory.last.value < total
    cpu = node.metrics[CPU_USAGE]
    assert cpu.max == 100.0 and cpu.last is not None and 0 <= cpu.last.value <= 100
    load = node.metrics[LOAD1]
    # Scaled to the number of cores, or to the load itself when it is higher.
    assert load.last is not None and abs(load.last.value - os.getloadavg()[0]) < 1.0
    assert load.max == max(float(os.cpu_count() or 1), load.last.value)

    for i in range(1, MAX_SAMPLES + 5):
        node = _host_node(reporter, start + i)
        for key in (CPU_USAGE, MEMORY_USAGE, LOAD1):
            samples = node.metrics[key].samples
            assert len(samples) == min(i + 1, MAX_SAMPLES), (key, i)
            assert [s.timestamp for s in samples] == [start + j for j in range(max(0, i + 1 - MAX_SAMPLES), i + 1)]


def test_local_networks_include_a_new_bridge(netns: Netns) -> None:
    netns.create()
    node = _host_node(_reporter(), time.time())
    networks = node.sets[LOCAL_NETWORKS]
    assert f"{netns.gateway}/24" in networks
    assert not any(ipaddress.ip_interface(n).ip.is_loopback for n in networks)
    # Another host's address on that bridge is not this host's.
    assert not any(n.startswith(f"{netns.hosts[0].ip}/") for n in networks)
