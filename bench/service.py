"""The multi-tenant service under load: many probes across many tenants, over CURVE, and one tenant's
containers view read all along.

    python -m bench.service [--probes 200] [--tenants 20] [--seconds 60] [--interval 3] [--senders 2]

Starts `scope app --multitenant` with a fresh state directory and `--tenants` tenants, then
bench/fleet_probes.py processes whose `--probes` fake probes (bench.fleet's replay of a real report)
feed it, probe i as tenant i modulo `--tenants`, each over its own encrypted connection. After a
warm-up it measures, over `--seconds`:

- reports the service ingests a second and how many it refused (the operator's `/metrics`, as a
  monitoring system reads them: no tenant's view is asked for but tenant 0's);
- the latency of tenant 0's containers view (`GET /api/topology/containers` with its user token, in a
  loop, one request at a time): median, 95th percentile, worst;
- the service's CPU (median % of one core) and its largest RSS.

Figures on a shared machine are noisy: run it a few times and take the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from bench.fleet import REPO, Sampler, start_senders
from scope_app.tenancy.registry import new_token, token_hash
from scope_app.tenancy.service import open_service
from scope_common.curve import probe_keys
from tests.fixtures.scope import App, scrape_metrics
from tests.fixtures.waiting import wait_for


def get(app: App, token: str, path: str) -> Any:
    request = urllib.request.Request(app.url + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def totals(app: App, metrics_token: str) -> tuple[float, Counter[str], float]:
    """(reports applied, reports refused by reason, probes) over every tenant, from the operator's `/metrics`."""
    request = urllib.request.Request(app.url + "/metrics", headers={"Authorization": f"Bearer {metrics_token}"})
    metrics = scrape_metrics(request)
    refused: Counter[str] = Counter()
    for name, value in metrics.items():
        if name.startswith("scope_app_reports_dropped_total{"):
            refused[name.split('"')[1]] += int(value)
    probes = sum(value for name, value in metrics.items() if name.startswith("scope_app_tenant_probes{"))
    return metrics["scope_app_reports_applied_total"], refused, probes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=20.0)
    parser.add_argument("--interval", type=float, default=3.0, help="each probe publishes this often")
    parser.add_argument("--senders", type=int, default=2, help="fake-probe processes")
    parser.add_argument("--profile", choices=["real", "synthetic"], default="real")
    parser.add_argument("--containers", type=int, default=20, help="containers per probe")
    args = parser.parse_args()

    state = Path(tempfile.mkdtemp(prefix="scope-bench-service-"))
    service = open_service(state)
    probe_tokens, user_tokens = [], []
    for n in range(args.tenants):
        probe_token, user_token = new_token(), new_token()
        service.registry.add(f"tenant-{n}", token_hash(user_token), probe_keys(probe_token).public)
        probe_tokens.append(probe_token)
        user_tokens.append(user_token)
    tokens_file = state / "probe-tokens.json"
    tokens_file.write_text(json.dumps(probe_tokens))
    per_tenant = -(-args.probes // args.tenants)
    metrics_token = new_token()
    app = App(
        window=f"{max(30.0, 4 * args.interval):g}s",
        extra=[
            "--multitenant",
            f"--state-dir={state}",
            f"--tenant-max-probes={per_tenant}",
            f"--tenant-max-bytes-per-second={64 * 1024 * 1024}",
        ],
        env={"SCOPE_METRICS_TOKEN": metrics_token},
    )
    senders = start_senders(
        args,
        args.probes,
        [app.bus],
        str(REPO),
        extra=[f"--service-tokens={tokens_file}", f"--service-key={service.keys.public}"],
    )
    sampler = Sampler(app.pid)
    sampler.start()
    latencies: list[float] = []
    stop = threading.Event()
    try:
        wait_for(lambda: len(senders.ready) == args.senders, timeout=300, what="the fake probes")
        wait_for(
            lambda: totals(app, metrics_token)[2] == args.probes, timeout=120, interval=1.0, what="every probe heard"
        )
        time.sleep(args.warmup)

        def read_containers() -> None:
            while not stop.is_set():
                started = time.perf_counter()
                get(app, user_tokens[0], "/api/topology/containers")
                latencies.append(time.perf_counter() - started)

        reader = threading.Thread(target=read_containers, daemon=True)
        start_at = time.monotonic()
        before = totals(app, metrics_token)
        reader.start()
        time.sleep(args.seconds)
        stop.set()
        reader.join()
        after = totals(app, metrics_token)
        elapsed = time.monotonic() - start_at
        sent, behind, _ = senders.sent_between(start_at, start_at + elapsed)
        cpu = sampler.cpu(start_at, start_at + elapsed, 5.0)
        containers = len(get(app, user_tokens[0], "/api/topology/containers")["nodes"])
        ordered = sorted(latencies)
        print(f"service: {args.probes} probes across {args.tenants} tenants (CURVE), every {args.interval:g} s")
        print(f"  probes sent               {sent:8.1f} reports/s (worst lag behind schedule {behind:.2f} s)")
        print(f"  ingested (applied)        {(after[0] - before[0]) / elapsed:8.1f} reports/s")
        refused = after[1] - before[1]
        print(f"  refused meanwhile         {sum(refused.values()):8d} {dict(refused)}")
        print(f"  service CPU               {cpu if cpu is not None else float('nan'):8.1f} % of a core (median)")
        print(f"  service RSS               {sampler.rss():8.1f} MiB (largest)")
        print(
            f"  tenant-0 containers view  {len(ordered)} requests, {containers} nodes: "
            f"median {statistics.median(ordered) * 1000:.1f} ms, "
            f"p95 {ordered[int(len(ordered) * 0.95)] * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms"
        )
    finally:
        stop.set()
        sampler.done.set()
        senders.stop()
        app.terminate()


if __name__ == "__main__":
    main()
