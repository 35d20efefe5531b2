"""`inspect` and `image inspect` in docker's/podman's shape: the idioms of docker users' scripts
(`-f '{{.State.Status}}'`, `{{.Config.Env}}`, `{{json .Mounts}}`, `{{.RootFS.Layers}}`, …) on
real containers (one running under its monitor, one exited) and real images, and nothing of
the engine's record lost on the way."""

from __future__ import annotations

import json
import os
import re

import pytest
import yaml

from conftest import needs_root
from ctr.cli import inspect_view

ZERO = "0001-01-01T00:00:00Z"
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def _leaves(v, out):
    if isinstance(v, dict):
        for x in v.values():
            _leaves(x, out)
    elif isinstance(v, list):
        for x in v:
            _leaves(x, out)
    else:
        out.append(v)
    return out


RAW = {  # an engine record as `engine.containers.inspect()` returns it
    "id": "c" * 64, "name": "web", "image": "sha256:" + "a" * 64, "image_name": "bb", "isolation": "process",
    "driver": "overlay", "state": "exited", "created": "2024-05-01T10:00:00.000001Z",
    "started": "2024-05-01T10:00:01.000002Z", "finished": "2024-05-01T10:00:02.000003Z",
    "pid": 4242, "pid_start": 99, "monitor_pid": 4241, "monitor_start": 98, "exit_code": 7,
    "error": "", "auto_remove": True, "emulated": False, "notes": ["a note"],
    "config": {"command": ["sh", "-c", "exit 7"], "env": ["A=1"], "workdir": "/w", "user": "1:2",
               "mounts": [{"source": "/h", "target": "/c", "readonly": True},
                          {"source": "/h2", "target": "/c2", "readonly": False}],
               "interactive": True, "tty": False, "hostname": "box", "memory": 64 << 20, "cpus": 0.5},
    "paths": {"dir": "/root/containers/" + "c" * 64},
    "driver_info": {"summary": "overlayfs", "emulated": False, "cannot_capture": []},
}


def test_container_document_has_dockers_shape():
    d = inspect_view.container(RAW)
    assert (d["Id"], d["Name"], d["Image"], d["ImageName"], d["Driver"]) == (
        "c" * 64, "web", "sha256:" + "a" * 64, "bb", "overlay")
    assert (d["Path"], d["Args"]) == ("sh", ["-c", "exit 7"])
    assert d["State"] == {"Status": "exited", "Running": False, "Paused": False, "Restarting": False,
                          "OOMKilled": False, "Dead": False, "Pid": 0, "ExitCode": 7, "Error": "",
                          "StartedAt": RAW["started"], "FinishedAt": RAW["finished"], "ConmonPid": 0}
    assert list(d["State"])[:11] == ["Status", "Running", "Paused", "Restarting", "OOMKilled", "Dead", "Pid",
                                     "ExitCode", "Error", "StartedAt", "FinishedAt"]  # docker's order: {{.State}}
    assert d["Config"] == {"Hostname": "box", "User": "1:2", "AttachStdin": True, "Tty": False, "OpenStdin": True,
                           "Env": ["A=1"], "Cmd": ["sh", "-c", "exit 7"], "Image": "bb", "WorkingDir": "/w",
                           "Entrypoint": None}
    assert d["HostConfig"] == {"Binds": ["/h:/c:ro", "/h2:/c2"], "AutoRemove": True, "Isolation": "process",
                               "Memory": 64 << 20, "NanoCpus": 500_000_000, "ReadonlyRootfs": False}
    assert d["Mounts"][0] == {"Type": "bind", "Source": "/h", "Destination": "/c", "Mode": "ro", "RW": False,
                              "Propagation": "rprivate"}
    assert d["Mounts"][1]["RW"] is True and d["Mounts"][1]["Mode"] == ""
    assert d["Process"] == {"Pid": 4242, "PidStart": 99, "MonitorPid": 4241, "MonitorStart": 98}
    assert (d["Isolation"], d["Emulated"], d["Notes"]) == ("process", False, ["a note"])
    assert d["StaticDir"] == RAW["paths"]["dir"] and d["DriverInfo"] == RAW["driver_info"]


def test_nothing_of_the_record_is_lost():
    d = inspect_view.container(RAW)
    have = _leaves(d, [])
    for v in _leaves(RAW, []):
        if v in (None, "", [], False) or isinstance(v, bool):
            continue
        if v == 0.5:  # cpus: as NanoCpus
            assert d["HostConfig"]["NanoCpus"] == 500_000_000
            continue
        assert v in have, v
    # a key the engine adds later is kept, under its CamelCase name (top level and config)
    d = inspect_view.container(dict(RAW, new_fact={"x": 1}, config=dict(RAW["config"], seccomp_profile="p"),
                                    paths=dict(RAW["paths"], log="/l")))
    assert d["NewFact"] == {"x": 1} and d["Config"]["SeccompProfile"] == "p" and d["Paths"] == {"log": "/l"}


def test_never_started_and_unknown_exit():
    created = dict(RAW, state="created", started=None, finished=None, pid=None, pid_start=None,
                   monitor_pid=None, monitor_start=None, exit_code=None)
    d = inspect_view.container(created)
    assert (d["State"]["StartedAt"], d["State"]["FinishedAt"]) == (ZERO, ZERO)  # docker's "never"
    assert (d["State"]["Pid"], d["State"]["ExitCode"]) == (0, 0)
    lost = inspect_view.container(dict(RAW, exit_code=None, error="the process ended without ctr recording its exit"))
    assert lost["State"]["ExitCode"] is None and lost["State"]["Error"]


@pytest.fixture
def two(ctr, busybox_image, tmp_path):
    """`live`: -d sleep (running under its monitor); `done`: exited 3, with a volume, env, limits."""
    (tmp_path / "vol").mkdir()
    ctr.ok("run", "-d", "--name", "live", busybox_image, "sleep", "300")
    r = ctr("run", "--name", "done", "-e", "GREETING=hi", "-w", "/tmp", "-u", "0:0",
            "-v", f"{tmp_path / 'vol'}:/data:ro", "-m", "64m", "--cpus", "0.5", "--hostname", "box",
            busybox_image, "sh", "-c", "exit 3")
    assert r.code == 3, r
    return ctr


def fmt(ctr, template, *refs):
    return ctr.ok("inspect", "-f", template, *refs)


@needs_root
def test_docker_idioms_on_a_running_and_an_exited_container(two):
    ctr = two
    ids = ctr.ok("ps", "-a", "-q", "--no-trunc").split()
    done_id, live_id = ids  # newest first
    assert fmt(ctr, "{{.State.Status}}", "live", "done") == "running\nexited\n"
    assert fmt(ctr, "{{.State.ExitCode}}", "live", "done") == "0\n3\n"
    assert fmt(ctr, "{{.State.Running}}", "live", "done") == "true\nfalse\n"
    pid, gone = fmt(ctr, "{{.State.Pid}}", "live", "done").split()
    assert gone == "0" and int(pid) > 0
    assert open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[:2] == [b"sleep", b"300"]
    assert fmt(ctr, "{{.Id}}", "live", "done") == f"{live_id}\n{done_id}\n"
    assert fmt(ctr, "{{.Name}}", "live", "done") == "live\ndone\n"  # podman's form: no leading /
    env = fmt(ctr, "{{.Config.Env}}", "done").strip()
    assert env.startswith("[") and env.endswith("]") and "GREETING=hi" in env[1:-1].split(" ")
    assert fmt(ctr, "{{.Config.Cmd}}", "live", "done") == "[sleep 300]\n[sh -c exit 3]\n"
    mounts = json.loads(fmt(ctr, "{{json .Mounts}}", "done"))
    assert len(mounts) == 1 and mounts[0]["Type"] == "bind" and mounts[0]["Destination"] == "/data"
    assert mounts[0]["RW"] is False and mounts[0]["Source"].endswith("/vol")
    assert fmt(ctr, "{{json .Mounts}}", "live") == "[]\n"
    assert fmt(ctr, "{{.HostConfig.AutoRemove}} {{.HostConfig.Memory}} {{.HostConfig.NanoCpus}}", "done") == \
        "false 67108864 500000000\n"
    created = fmt(ctr, "{{.Created}}", "live", "done").split()
    assert all(ISO.match(c) for c in created) and created[0] < created[1]
    # nested fields, any case, whole objects
    assert fmt(ctr, "{{.config.workingdir}} {{.Config.User}} {{.Config.Hostname}}", "done") == "/tmp 0:0 box\n"
    state = json.loads(fmt(ctr, "{{json .State}}", "live"))
    assert state["Status"] == "running" and state["Pid"] == int(pid) and state["FinishedAt"] == ZERO
    assert state["ConmonPid"] > 0 and state["ConmonPid"] != state["Pid"]  # the monitor
    # {{.State}}: Go's struct form, docker's field order
    assert re.fullmatch(rf"\{{running true false false false false {pid} 0  \S+Z {re.escape(ZERO)} \d+\}}\n",
                        fmt(ctr, "{{.State}}", "live"))
    assert fmt(ctr, "{{.State}}", "done").startswith("{exited false false false false false 0 3  ")


@needs_root
def test_json_and_yaml_print_the_same_documents(two):
    ctr = two
    docs = json.loads(ctr.ok("inspect", "live", "done"))
    assert [d["Name"] for d in docs] == ["live", "done"]
    assert yaml.safe_load(ctr.ok("inspect", "--format", "yaml", "live", "done")) == docs
    assert json.loads(ctr.ok("inspect", "--format", "json", "done")) == docs[1:]
    assert json.loads(fmt(ctr, "{{json .}}", "done")) == docs[1]
    live, done = docs
    assert live["Process"]["Pid"] == live["State"]["Pid"] and live["Process"]["MonitorPid"] == live["State"]["ConmonPid"]
    assert done["Process"]["Pid"] > 0 and done["State"]["Pid"] == 0  # the record keeps the pid it ran as
    assert done["Image"].startswith("sha256:") and done["ImageName"] == done["Config"]["Image"] == "bb"
    assert done["StaticDir"] == str(ctr.root / "containers" / done["Id"]) and os.path.isdir(done["StaticDir"])
    assert done["Isolation"] == "process" and done["Emulated"] is False and "summary" in done["DriverInfo"]


@needs_root
def test_unknown_field_and_bad_reference_errors_stay(two):
    ctr = two
    r = ctr("inspect", "-f", "{{.State.Nope}}", "done")
    assert r.code == 2 and r.out == ""
    assert r.err.startswith("Error: template: no field 'Nope'\nHint: fields: ")
    assert "ExitCode" in r.err
    r = ctr("inspect", "-f", "{{.Name}}", "done", "nope")
    assert r.code == 1 and r.out == "done\n" and r.err.count("Error:") == 1


@needs_root
def test_image_inspect_idioms(ctr, busybox_image):
    ctr.ok("run", "--name", "c", busybox_image, "sh", "-c", "echo x > /x")
    ctr.ok("commit", "c", "app:1", "-m", "a message", "-a", "Jane", "-c", 'ENTRYPOINT ["sh", "-c"]',
           "-c", 'CMD ["echo hi"]', "-c", "ENV MODE=prod", "-c", "WORKDIR /srv", "-c", "USER 65534")
    (img,) = json.loads(ctr.ok("image", "inspect", "app:1"))
    (base,) = json.loads(ctr.ok("image", "inspect", busybox_image))
    assert img["RepoTags"] == ["app:1"] and img["Parent"] == base["Id"]
    assert (img["Author"], img["Comment"]) == ("Jane", "a message")
    assert img["Config"] == {"Env": img["Config"]["Env"], "Cmd": ["echo hi"], "Entrypoint": ["sh", "-c"],
                             "WorkingDir": "/srv", "User": "65534"} and "MODE=prod" in img["Config"]["Env"]
    assert img["RootFS"]["Type"] == "layers" and img["RootFS"]["Layers"][0] == base["RootFS"]["Layers"][0]
    assert len(img["RootFS"]["Layers"]) == 2 and isinstance(img["Size"], int) and img["Size"] > 0
    out = ctr.ok("image", "inspect", "-f", "{{.Id}} {{.RepoTags}} {{.Config.Cmd}} {{.RootFS.Layers}} {{.Size}}",
                 "app:1")
    assert out == f"{img['Id']} [app:1] [echo hi] [{' '.join(img['RootFS']['Layers'])}] {img['Size']}\n"
    assert ISO.match(ctr.ok("image", "inspect", "-f", "{{.Created}}", "app:1").strip())
    assert yaml.safe_load(ctr.ok("image", "inspect", "--format", "yaml", "app:1")) == [img]
    r = ctr("image", "inspect", "-f", "{{.Names}}", "app:1")
    assert r.code == 2 and r.err.startswith("Error: template: no field 'Names'\nHint: fields: ")
    assert ctr.ok("image", "inspect", "-f", "{{.Builtin}} {{.RepoTags}} {{.RootFS.Layers}}", "host") == \
        "true [host] []\n"


def test_vm_document_uses_vm_ls_keys():
    raw = {"name": "v1", "id": "d" * 64, "driver": "sandbox", "image": "sha256:" + "a" * 64, "image_name": "bb",
           "cpus": 2, "memory": 1 << 30, "disk_size": 64 << 20, "env": ["PATH=/bin"], "workdir": "/",
           "kernel": "/k/vmlinuz", "kernel_release": "6.1.0", "state": "Off", "created": "2024-05-01T10:00:00Z",
           "started": "2024-05-01T10:00:01Z", "stopped": "2024-05-01T10:00:02Z", "pid": None, "pid_start": None,
           "accel": "", "guest_kernel": "", "emulated": True, "disk_used": 1000, "error": "",
           "checkpoints": [{"name": "s1", "created": "2024-05-01T10:00:03Z", "size": 0, "method": "reflink"}],
           "paths": {"dir": "/root/vms/v1"}, "disk_usage": 2000, "driver_info": {"summary": "s", "emulated": True}}
    d = inspect_view.vm(raw)
    assert (d["Name"], d["Id"], d["State"], d["Driver"], d["Emulated"]) == ("v1", "d" * 64, "Off", "sandbox", True)
    assert (d["Image"], d["ImageID"], d["CPUs"], d["Memory"], d["DiskSize"]) == (
        "bb", raw["image"], 2, 1 << 30, 64 << 20)
    assert (d["DiskUsed"], d["DiskUsage"], d["Pid"], d["Kernel"], d["KernelImage"]) == (1000, 2000, 0, "6.1.0", "/k/vmlinuz")
    assert (d["StartedAt"], d["StoppedAt"], d["Path"]) == (raw["started"], raw["stopped"], "/root/vms/v1")
    assert d["Checkpoints"] == [{"Name": "s1", "Created": "2024-05-01T10:00:03Z", "Size": 0, "Method": "reflink"}]
    assert d["DriverInfo"] == raw["driver_info"] and (d["Env"], d["WorkingDir"]) == (["PATH=/bin"], "/")
    assert all(k[0].isupper() for k in d)  # CamelCase throughout, as vm ls
    assert inspect_view.vm(dict(raw, later_fact=1))["LaterFact"] == 1
