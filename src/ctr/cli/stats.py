"""`ctr stats`: docker's live table of what containers use (the engine samples, this formats)."""

from __future__ import annotations

import sys
import time
from typing import List, Optional

import typer

from ctr.cli.common import FORMAT_HELP, container_completer, ctx

HEADERS = {"ID": "CONTAINER ID", "Container": "CONTAINER", "Name": "NAME", "CPUPerc": "CPU %",
           "MemUsage": "MEM USAGE / LIMIT", "MemPerc": "MEM %", "NetIO": "NET I/O", "BlockIO": "BLOCK I/O",
           "PIDs": "PIDS"}
COLUMNS = ("ID", "Name", "CPUPerc", "MemUsage", "MemPerc", "NetIO", "BlockIO", "PIDs")
NO_STREAM_WINDOW = 0.5  # seconds --no-stream measures CPU over (at most)


def stats(
    containers: Optional[List[str]] = typer.Argument(None, help="Containers: id, name or unique id prefix "
                                                     "(default: every running one)",
                                                     autocompletion=container_completer("running")),
    all: bool = typer.Option(False, "--all", "-a", help="Show every container (default: the running ones)"),
    no_stream: bool = typer.Option(False, "--no-stream", help="Print one sample and exit"),
    no_trunc: bool = typer.Option(False, "--no-trunc", help="Do not truncate ids"),
    format: str = typer.Option("table", "--format", help=FORMAT_HELP + " ('{{.Name}} {{.CPUPerc}}')"),
    interval: float = typer.Option(1.0, "--interval", "-i", help="Seconds between samples; CPU % is measured over each"),
) -> None:
    """Show what containers use: CPU, memory, network and block I/O, tasks (a live table until
    interrupted, or one sample with --no-stream)."""
    from ctr import output
    from ctr.cli.common import check_format
    from ctr.engine import containers as ce
    from ctr.engine import stats as es
    from ctr.errors import InvalidArgument, NotFound

    check_format(format)
    if not interval > 0:
        raise InvalidArgument(f"--interval must be more than 0 seconds, not {interval:g}")
    refs = list(containers or [])
    ids = [ce.get_container(ctx(), r).id for r in refs]  # every name checked before anything is shown

    def current():
        if ids:
            found = []
            for cid in ids:
                try:
                    found.append(ce.reconcile(ctx(), ce.get_container(ctx(), cid)))
                except NotFound:
                    pass  # removed meanwhile: no longer shown
            return found
        return ce.list_containers(ctx(), all=all)  # (reconciled: a dead one is not running)

    before = {u.id: u for u in es.sample(ctx(), current())}
    clear = not no_stream and sys.stdout.isatty()
    while True:
        time.sleep(min(interval, NO_STREAM_WINDOW) if no_stream else interval)
        now = es.sample(ctx(), current())
        items = [_item(es, u, before.get(u.id), no_trunc) for u in now]
        rows = [[it[k] for k in COLUMNS] for it in items]
        if clear:
            sys.stdout.write("\033[2J\033[H")
        output.emit(format, items, [HEADERS[k] for k in COLUMNS], rows, view_headers=HEADERS)
        sys.stdout.flush()
        if no_stream:
            return
        before = {u.id: u for u in now}


def _item(es, u, before, no_trunc: bool) -> dict:
    """docker's fields as it shows them, and the numbers behind them."""
    from ctr.models import short
    from ctr.output import binary_size, human_size

    cpu = es.cpu_percent(before, u) if before is not None else 0.0
    mem = es.memory_percent(u)
    if not u.running:
        net = "0B / 0B"
    elif u.net_rx is None:
        net = "--"
    else:
        net = f"{human_size(u.net_rx)} / {human_size(u.net_tx)}"
    return {
        "ID": u.id if no_trunc else short(u.id), "Container": u.name or short(u.id), "Name": u.name,
        "CPUPerc": f"{cpu:.2f}%", "MemUsage": f"{binary_size(u.memory)} / {binary_size(u.memory_limit)}",
        "MemPerc": f"{mem:.2f}%", "NetIO": net,
        "BlockIO": f"{human_size(u.block_read)} / {human_size(u.block_write)}",
        "PIDs": "--" if u.tasks is None else str(u.tasks),
        "CPUPercent": round(cpu, 2), "MemUsageBytes": u.memory, "MemLimitBytes": u.memory_limit,
        "NetRxBytes": u.net_rx, "NetTxBytes": u.net_tx, "BlockReadBytes": u.block_read,
        "BlockWriteBytes": u.block_write, "Tasks": u.tasks,
    }
