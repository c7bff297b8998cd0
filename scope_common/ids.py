"""Node ids. Every id is `;`-separated so that one host's ids never collide with another's.

- host: `<hostID>;<host>`
- process: `<hostID>;<pid>`
- endpoint: `<scope>;<addr>;<port>`, where scope is the host id for addresses that only mean something
  on that host (loopback, docker bridges) and empty otherwise, so the same remote address seen from
  two hosts is one node once their reports are merged.
- container: `<container id>;<container>`; image: `<image id>;<container_image>`.
"""

from __future__ import annotations

from typing import NamedTuple

HOST_TAG = "<host>"
CONTAINER_TAG = "<container>"
IMAGE_TAG = "<container_image>"


def host_id(host: str) -> str:
    return f"{host};{HOST_TAG}"


def process_id(host: str, pid: int | str) -> str:
    return f"{host};{pid}"


def endpoint_id(scope: str, addr: str, port: int | str) -> str:
    return f"{scope};{addr};{port}"


def namespace_scope(host: str, netns: str) -> str:
    """The scope of an address that means something only inside one network namespace of a host
    (loopback in a container's namespace), so two containers' 127.0.0.1:80 are two endpoints."""
    return f"{host}/{netns}"


def scope_host(scope: str) -> str:
    """The host an endpoint scope belongs to ("" for an unscoped address)."""
    return scope.partition("/")[0]


def scoped_address(scope: str, addr: str) -> str:
    """An address with the scope it means something in, as containers' addresses are reported."""
    return f"{scope};{addr}"


def group_id(name: str, tag: str) -> str:
    """The id of a view node that groups others by `name` (tag: `image_name`, `process_name`...)."""
    return f"{name};<{tag}>"


def container_id(container: str) -> str:
    return f"{container};{CONTAINER_TAG}"


def image_id(image: str) -> str:
    return f"{image};{IMAGE_TAG}"


MAX_PORT = 65535


def is_decimal(text: str, max_digits: int) -> bool:
    """Whether `text` is 1 to `max_digits` ASCII digits. `str.isdigit` is not enough: it accepts `²`,
    which `int()` refuses, so a value it let through once broke every view."""
    return 0 < len(text) <= max_digits and text.isascii() and text.isdigit()


def parse_host_id(node_id: str) -> str | None:
    """The host of a host node id, or None when `node_id` is not one."""
    host, sep, tag = node_id.rpartition(";")
    return host if sep and tag == HOST_TAG else None


def parse_process_id(node_id: str) -> tuple[str, int] | None:
    """(host, pid) of a process node id, or None when `node_id` is not one."""
    host, sep, pid = node_id.rpartition(";")
    if not sep or not is_decimal(pid, 10):
        return None
    return host, int(pid)


class Endpoint(NamedTuple):
    scope: str
    addr: str
    port: int


def parse_endpoint_id(node_id: str) -> Endpoint | None:
    """The parts of an endpoint id, or None when `node_id` is not one.

    IPv6 addresses contain no `;`, and scopes (host ids) are not allowed to, so splitting on the
    first and last separator is exact.
    """
    scope, sep, rest = node_id.partition(";")
    addr, sep2, port = rest.rpartition(";")
    if not sep or not sep2 or not is_decimal(port, 5) or int(port) > MAX_PORT:
        return None
    return Endpoint(scope, addr, int(port))


def parse_container_id(node_id: str) -> str | None:
    container, sep, tag = node_id.rpartition(";")
    return container if sep and tag == CONTAINER_TAG else None


def parse_image_id(node_id: str) -> str | None:
    image, sep, tag = node_id.rpartition(";")
    return image if sep and tag == IMAGE_TAG else None


_PARSERS = {
    "host": parse_host_id,
    "process": parse_process_id,
    "endpoint": parse_endpoint_id,
    "container": parse_container_id,
    "container_image": parse_image_id,
}


def is_valid(topology: str, node_id: str) -> bool:
    """Whether `node_id` has the form of its topology's ids. Ids of topologies not named here (a plugin's)
    are free-form."""
    parser = _PARSERS.get(topology)
    return parser is None or parser(node_id) is not None
