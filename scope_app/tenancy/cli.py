"""`scope tenants --state-dir DIR [--store URL] add NAME | list [--json] | revoke NAME`: the service's tenants.

Run beside the service (or before its first start): the registry is a file both use (or, with
`--store`, the Redis the service's replicas share, from any machine that reaches it), and the service
sees a change within a second. `add` prints the new tenant's tokens once; only their hashes are kept.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from collections.abc import Sequence

from scope_app.replicas.store import store_arg
from scope_app.tenancy.registry import RegistryError, RegistryUnavailable, new_token, token_hash
from scope_app.tenancy.service import add_state_dir_flag, open_service
from scope_common.config import env_flag
from scope_common.curve import probe_keys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scope tenants", description="Add, list and revoke the tenants of `scope app --multitenant`."
    )
    add_state_dir_flag(parser)
    env_flag(
        parser,
        "--store",
        default="",
        type=store_arg,
        help="Redis URL of the replicas of `scope app --multitenant --store`: the registry is there "
        "(--state-dir then holds only the service's key pair, the same on every replica)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{add,list,revoke}")
    add = commands.add_parser(
        "add",
        help="add a tenant; prints {tenant, probe_token, user_token, service_key} as JSON (the tokens only now)",
    )
    add.add_argument("name", help="the tenant's name: letters, digits, '.', '_' and '-', at most 63")
    listing = commands.add_parser("list", help="the tenants, as a table")
    listing.add_argument("--json", action="store_true", help="a JSON array instead of a table")
    revoke = commands.add_parser("revoke", help="remove a tenant: its tokens stop working, its probes are cut off")
    revoke.add_argument("name")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        service = open_service(args.state_dir, store=args.store or None)
        if args.command == "add":
            probe_token, user_token = new_token(), new_token()
            tenant = service.registry.add(args.name, token_hash(user_token), probe_keys(probe_token).public)
            result = {
                "tenant": tenant.name,
                "probe_token": probe_token,
                "user_token": user_token,
                "service_key": service.keys.public,
            }
            print(json.dumps(result))
        elif args.command == "list":
            tenants = service.registry.list()
            if args.json:
                print(json.dumps([{"tenant": t.name, "created": t.created, "probe_key": t.probe_key} for t in tenants]))
            else:
                width = max([len("TENANT"), *(len(t.name) for t in tenants)])
                print(f"{'TENANT':<{width}}  {'CREATED (UTC)':<19}  PROBE KEY")
                for t in tenants:
                    created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t.created))
                    print(f"{t.name:<{width}}  {created}  {t.probe_key}")
        else:
            service.registry.revoke(args.name)
            print(f"revoked tenant {args.name}: its tokens stop working within a second")
    except (RegistryError, RegistryUnavailable) as exc:
        print(f"scope tenants: {exc}", file=sys.stderr)
        return 1
    except (OSError, sqlite3.Error) as exc:
        print(f"scope tenants: cannot use the state in {args.state_dir}: {exc}", file=sys.stderr)
        return 1
    return 0
