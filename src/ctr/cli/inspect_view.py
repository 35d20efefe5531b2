"""`inspect`'s documents in docker's and podman's shape, built from the engine's records.

The engine decides and keeps its own keys; this module only renames and nests them the way
docker's ContainerJSON / ImageInspect and podman's InspectContainerData do, so that
`ctr inspect -f '{{.State.Status}}'` and friends work as in docker users' scripts. Nothing the
record carries is dropped: a fact docker has no place for keeps its own CamelCase key, and a
key this module does not know yet is kept under its CamelCase name (docs/cli.md, "inspect").
"""

from __future__ import annotations

from typing import Any

ZERO_TIME = "0001-01-01T00:00:00Z"  # docker's and podman's "never" (StartedAt, FinishedAt)


def camel(key: str) -> str:
    """`auto_remove` → `AutoRemove`."""
    return "".join(p[:1].upper() + p[1:] for p in key.split("_"))


def _rest(d: dict, into: dict) -> dict:
    """Whatever of `d` was not consumed, kept under CamelCase keys (`into` is returned)."""
    for k, v in d.items():
        into.setdefault(camel(k), v)
    return into


def container(raw: dict[str, Any]) -> dict[str, Any]:
    """A container as docker/podman `inspect` show it, from `engine.containers.inspect()`."""
    r = dict(raw)
    cfg = dict(r.pop("config", None) or {})
    status = r.pop("state", "")
    running = status == "running"
    paused = bool(r.pop("paused", False))
    if paused:
        status = "paused"  # docker's: Status paused, Running and Paused both true
    command = list(cfg.pop("command", None) or [])
    pid, monitor = r.pop("pid", None), r.pop("monitor_pid", None)
    exit_code = r.pop("exit_code", None)
    if exit_code is None and status != "exited":
        exit_code = 0  # docker's ExitCode before the container has exited
    mounts = cfg.pop("mounts", None) or []
    interactive = bool(cfg.pop("interactive", False))
    memory, cpus = cfg.pop("memory", None), cfg.pop("cpus", None)
    isolation = r.pop("isolation", "")
    paths = dict(r.pop("paths", None) or {})

    doc: dict[str, Any] = {
        "Id": r.pop("id", ""),
        "Created": r.pop("created", None),
        "Path": command[0] if command else "",
        "Args": command[1:],
        "State": {
            "Status": status,
            "Running": running,
            "Paused": paused,
            "Restarting": False,
            "OOMKilled": False,
            "Dead": False,
            "Pid": pid if running and pid else 0,
            "ExitCode": exit_code,
            "Error": r.pop("error", ""),
            "StartedAt": r.pop("started", None) or ZERO_TIME,
            "FinishedAt": r.pop("finished", None) or ZERO_TIME,
            "ConmonPid": monitor if running and monitor else 0,  # podman's: ctr's monitor (run -d)
        },
        "Image": r.pop("image", ""),
        "ImageName": r.pop("image_name", ""),
        "Name": r.pop("name", ""),
        "Driver": r.pop("driver", ""),
        "Mounts": [{"Type": "bind", "Source": m.get("source"), "Destination": m.get("target"),
                    "Mode": "ro" if m.get("readonly") else "", "RW": not m.get("readonly"),
                    "Propagation": "rprivate"} for m in mounts],
        "Config": {
            "Hostname": cfg.pop("hostname", ""),
            "User": cfg.pop("user", ""),
            "AttachStdin": interactive,
            "Tty": bool(cfg.pop("tty", False)),
            "OpenStdin": interactive,
            "Env": list(cfg.pop("env", None) or []),
            "Cmd": command,  # as run: the image's entrypoint, if any, comes first
            "Image": raw.get("image_name", ""),
            "WorkingDir": cfg.pop("workdir", ""),
            "Entrypoint": None,
        },
        "HostConfig": {
            "Binds": [f"{m.get('source')}:{m.get('target')}" + (":ro" if m.get("readonly") else "")
                      for m in mounts],
            "AutoRemove": bool(r.pop("auto_remove", False)),
            "ReadonlyRootfs": bool(cfg.pop("read_only", False)),
            "Isolation": isolation,
            "Memory": memory or 0,
            "NanoCpus": round(cpus * 1e9) if cpus else 0,
        },
        # ctr's own facts
        "Isolation": isolation,
        "Emulated": bool(r.pop("emulated", False)),
        "Notes": list(r.pop("notes", None) or []),
        "Process": {"Pid": pid, "PidStart": r.pop("pid_start", None),
                    "MonitorPid": monitor, "MonitorStart": r.pop("monitor_start", None)},
        "StaticDir": paths.pop("dir", ""),
        "DriverInfo": r.pop("driver_info", {}),  # the driver's own report, as it wrote it
    }
    _rest(cfg, doc["Config"])
    if paths:
        doc["Paths"] = paths
    return _rest(r, doc)


def vm(raw: dict[str, Any]) -> dict[str, Any]:
    """A VM with the keys `vm ls --format json` uses (Hyper-V's `State` values, `Path` as
    Get-VM's: the VM's directory), from `engine.vms.inspect()`."""
    r = dict(raw)
    paths = dict(r.pop("paths", None) or {})
    doc: dict[str, Any] = {
        "Name": r.pop("name", ""),
        "Id": r.pop("id", ""),
        "State": r.pop("state", ""),
        "Driver": r.pop("driver", ""),
        "Emulated": bool(r.pop("emulated", False)),
        "Image": r.pop("image_name", ""),
        "ImageID": r.pop("image", ""),
        "CPUs": r.pop("cpus", 0),
        "Memory": r.pop("memory", 0),
        "DiskSize": r.pop("disk_size", 0),
        "DiskUsed": r.pop("disk_used", 0),  # when the disk was made
        "DiskUsage": r.pop("disk_usage", 0),  # now
        "Created": r.pop("created", None),
        "StartedAt": r.pop("started", None),  # the last start, kept while Off (vm ls shows null)
        "StoppedAt": r.pop("stopped", None),
        "Pid": r.pop("pid", None) or 0,
        "PidStart": r.pop("pid_start", None),
        "Accel": r.pop("accel", ""),
        "Kernel": r.pop("kernel_release", ""),
        "KernelImage": r.pop("kernel", ""),
        "GuestKernel": r.pop("guest_kernel", ""),
        "Error": r.pop("error", ""),
        "Env": list(r.pop("env", None) or []),
        "WorkingDir": r.pop("workdir", ""),
        "Checkpoints": [_rest(c, {}) for c in r.pop("checkpoints", None) or []],
        "Path": paths.pop("dir", ""),
        "DriverInfo": r.pop("driver_info", {}),  # the driver's own report, as it wrote it
    }
    if paths:
        doc["Paths"] = paths
    return _rest(r, doc)


def image(img: Any) -> dict[str, Any]:
    """An image as docker/podman `image inspect` show it, from an engine image record."""
    cfg = img.config
    return {
        "Id": img.id,
        "RepoTags": list(img.names),
        "Parent": img.parent,
        "Comment": img.comment,
        "Created": img.created or None,
        "Author": img.author,
        "Config": {"Env": list(cfg.env), "Cmd": list(cfg.cmd), "Entrypoint": list(cfg.entrypoint),
                   "WorkingDir": cfg.workdir, "User": cfg.user},
        "Size": img.size,
        "RootFS": {"Type": "layers", "Layers": list(img.layers)},
        # ctr's own facts
        "Builtin": img.builtin,
        "Source": img.source,
    }
