"""Records are plain classes (models.Record), not dataclasses: what they write and print must
be what the dataclasses wrote — the same keys, in the same order, with the same values — and
records written by the dataclasses must read back unchanged.

OLD holds `to_dict()` of the records below as the dataclass build of ctr (fe719bf) wrote them,
and OLD_REPR their reprs."""

from __future__ import annotations

import copy
import json
import pickle
import re

import pytest

from ctr import models
from ctr.changes import Change, Entry, finish, load_manifest, dump_manifest
from ctr.config import Config
from ctr.drivers.base import Availability
from ctr.engine.containers import RemoveResult, RunOptions
from ctr.launch import Launch, MountOp, base_mounts
from ctr.models import VM, Checkpoint, Container, Image, ImageConfig, Mount, RunConfig
from ctr.store.records import read_json, write_json

T = "2024-05-01T10:00:00.123456Z"
CASES = {
 "Container": Container(id="a"*64, name="web", image="sha256:" + "b"*64, image_name="bb:latest", isolation="process",
      driver="overlay", config=RunConfig(command=["sh", "-c", "echo hi"], env=["PATH=/bin", "A=1"], workdir="/w", user="1:2",
      mounts=[Mount("/src", "/dst", True), Mount(source="/s2", target="/d2")], interactive=True, tty=True, hostname="h",
      memory=1 << 30, cpus=1.5, labels={"ci": "1", "job": ""}), state="exited", created=T, started=T, finished=T, pid=42, pid_start=12345,
      monitor_pid=43, monitor_start=12346, exit_code=3, error="boom", auto_remove=True, emulated=True, notes=["n1"]),
 "Container-defaults": Container(id="c"*64, name="n", image="sha256:" + "d"*64, image_name="host", isolation="hyperv",
      driver="sandbox", config=RunConfig(command=["true"]), created=T),
 "Image": Image(id="sha256:" + "e"*64, names=["bb:latest", "bb:1"], layers=["sha256:" + "f"*64],
      config=ImageConfig(env=["A=1"], cmd=["sh"], entrypoint=["/init"], workdir="/", user="u"), created=T, size=1234,
      source="/tmp/x.tar", builtin=False, parent="sha256:" + "1"*64, author="me", comment="msg"),
 "Image-defaults": Image(id="sha256:" + "2"*64, names=[], layers=[], created=T),
 "VM": VM(name="vm1", id="3"*64, driver="qemu", image="sha256:" + "4"*64, image_name="bb", cpus=2, memory=1 << 29,
      disk_size=1 << 30, env=["PATH=/bin"], workdir="/root", kernel="/k", kernel_release="6.1", state="Running",
      created=T, started=T, stopped=None, pid=7, pid_start=8, accel="tcg", guest_kernel="6.1.0", emulated=False,
      disk_used=4096, error="", checkpoints=[Checkpoint("s1", created=T, size=10, method="copy"), Checkpoint(name="s2", created=T)]),
 "VM-defaults": VM(name="v", id="5"*64, driver="sandbox", image="sha256:" + "6"*64, image_name="bb", cpus=1,
      memory=1, disk_size=2, created=T),
}

OLD = json.loads("""{
 "Container": {"id": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "name": "web", "image": "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "image_name": "bb:latest", "isolation": "process", "driver": "overlay", "config": {"command": ["sh", "-c", "echo hi"], "env": ["PATH=/bin", "A=1"], "workdir": "/w", "user": "1:2", "mounts": [{"source": "/src", "target": "/dst", "readonly": true}, {"source": "/s2", "target": "/d2", "readonly": false}], "interactive": true, "tty": true, "hostname": "h", "memory": 1073741824, "cpus": 1.5, "labels": {"ci": "1", "job": ""}}, "state": "exited", "created": "2024-05-01T10:00:00.123456Z", "started": "2024-05-01T10:00:00.123456Z", "finished": "2024-05-01T10:00:00.123456Z", "pid": 42, "pid_start": 12345, "monitor_pid": 43, "monitor_start": 12346, "exit_code": 3, "error": "boom", "auto_remove": true, "emulated": true, "notes": ["n1"]},
 "Container-defaults": {"id": "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc", "name": "n", "image": "sha256:dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd", "image_name": "host", "isolation": "hyperv", "driver": "sandbox", "config": {"command": ["true"], "env": [], "workdir": "", "user": "", "mounts": [], "interactive": false, "tty": false, "hostname": "", "memory": null, "cpus": null}, "state": "created", "created": "2024-05-01T10:00:00.123456Z", "started": null, "finished": null, "pid": null, "pid_start": null, "monitor_pid": null, "monitor_start": null, "exit_code": null, "error": "", "auto_remove": false, "emulated": false, "notes": []},
 "Image": {"id": "sha256:eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee", "names": ["bb:latest", "bb:1"], "layers": ["sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"], "config": {"env": ["A=1"], "cmd": ["sh"], "entrypoint": ["/init"], "workdir": "/", "user": "u"}, "created": "2024-05-01T10:00:00.123456Z", "size": 1234, "source": "/tmp/x.tar", "builtin": false, "parent": "sha256:1111111111111111111111111111111111111111111111111111111111111111", "author": "me", "comment": "msg"},
 "Image-defaults": {"id": "sha256:2222222222222222222222222222222222222222222222222222222222222222", "names": [], "layers": [], "config": {"env": [], "cmd": [], "entrypoint": [], "workdir": "", "user": ""}, "created": "2024-05-01T10:00:00.123456Z", "size": 0, "source": "", "builtin": false, "parent": "", "author": "", "comment": ""},
 "VM": {"name": "vm1", "id": "3333333333333333333333333333333333333333333333333333333333333333", "driver": "qemu", "image": "sha256:4444444444444444444444444444444444444444444444444444444444444444", "image_name": "bb", "cpus": 2, "memory": 536870912, "disk_size": 1073741824, "env": ["PATH=/bin"], "workdir": "/root", "kernel": "/k", "kernel_release": "6.1", "state": "Running", "created": "2024-05-01T10:00:00.123456Z", "started": "2024-05-01T10:00:00.123456Z", "stopped": null, "pid": 7, "pid_start": 8, "accel": "tcg", "guest_kernel": "6.1.0", "emulated": false, "disk_used": 4096, "error": "", "checkpoints": [{"name": "s1", "created": "2024-05-01T10:00:00.123456Z", "size": 10, "method": "copy"}, {"name": "s2", "created": "2024-05-01T10:00:00.123456Z", "size": 0, "method": ""}]},
 "VM-defaults": {"name": "v", "id": "5555555555555555555555555555555555555555555555555555555555555555", "driver": "sandbox", "image": "sha256:6666666666666666666666666666666666666666666666666666666666666666", "image_name": "bb", "cpus": 1, "memory": 1, "disk_size": 2, "env": [], "workdir": "/", "kernel": "", "kernel_release": "", "state": "Off", "created": "2024-05-01T10:00:00.123456Z", "started": null, "stopped": null, "pid": null, "pid_start": null, "accel": "", "guest_kernel": "", "emulated": false, "disk_used": 0, "error": "", "checkpoints": []}
}""")

OLD_REPR = {
    "Container": "Container(id='aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', name='web', image='sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb', image_name='bb:latest', isolation='process', driver='overlay', config=RunConfig(command=['sh', '-c', 'echo hi'], env=['PATH=/bin', 'A=1'], workdir='/w', user='1:2', mounts=[Mount(source='/src', target='/dst', readonly=True), Mount(source='/s2', target='/d2', readonly=False)], interactive=True, tty=True, hostname='h', memory=1073741824, cpus=1.5, labels={'ci': '1', 'job': ''}, read_only=False), state='exited', created='2024-05-01T10:00:00.123456Z', started='2024-05-01T10:00:00.123456Z', finished='2024-05-01T10:00:00.123456Z', pid=42, pid_start=12345, monitor_pid=43, monitor_start=12346, exit_code=3, error='boom', auto_remove=True, emulated=True, notes=['n1'])",
    "Container-defaults": "Container(id='cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc', name='n', image='sha256:dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd', image_name='host', isolation='hyperv', driver='sandbox', config=RunConfig(command=['true'], env=[], workdir='', user='', mounts=[], interactive=False, tty=False, hostname='', memory=None, cpus=None, labels={}, read_only=False), state='created', created='2024-05-01T10:00:00.123456Z', started=None, finished=None, pid=None, pid_start=None, monitor_pid=None, monitor_start=None, exit_code=None, error='', auto_remove=False, emulated=False, notes=[])",
    "Image": "Image(id='sha256:eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee', names=['bb:latest', 'bb:1'], layers=['sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff'], config=ImageConfig(env=['A=1'], cmd=['sh'], entrypoint=['/init'], workdir='/', user='u'), created='2024-05-01T10:00:00.123456Z', size=1234, source='/tmp/x.tar', builtin=False, parent='sha256:1111111111111111111111111111111111111111111111111111111111111111', author='me', comment='msg')",
    "Image-defaults": "Image(id='sha256:2222222222222222222222222222222222222222222222222222222222222222', names=[], layers=[], config=ImageConfig(env=[], cmd=[], entrypoint=[], workdir='', user=''), created='2024-05-01T10:00:00.123456Z', size=0, source='', builtin=False, parent='', author='', comment='')",
    "VM": "VM(name='vm1', id='3333333333333333333333333333333333333333333333333333333333333333', driver='qemu', image='sha256:4444444444444444444444444444444444444444444444444444444444444444', image_name='bb', cpus=2, memory=536870912, disk_size=1073741824, env=['PATH=/bin'], workdir='/root', kernel='/k', kernel_release='6.1', state='Running', created='2024-05-01T10:00:00.123456Z', started='2024-05-01T10:00:00.123456Z', stopped=None, pid=7, pid_start=8, accel='tcg', guest_kernel='6.1.0', emulated=False, disk_used=4096, error='', checkpoints=[Checkpoint(name='s1', created='2024-05-01T10:00:00.123456Z', size=10, method='copy'), Checkpoint(name='s2', created='2024-05-01T10:00:00.123456Z', size=0, method='')])",
    "VM-defaults": "VM(name='v', id='5555555555555555555555555555555555555555555555555555555555555555', driver='sandbox', image='sha256:6666666666666666666666666666666666666666666666666666666666666666', image_name='bb', cpus=1, memory=1, disk_size=2, env=[], workdir='/', kernel='', kernel_release='', state='Off', created='2024-05-01T10:00:00.123456Z', started=None, stopped=None, pid=None, pid_start=None, accel='', guest_kernel='', emulated=False, disk_used=0, error='', checkpoints=[])",
}

CLASSES = {"Container": Container, "Image": Image, "VM": VM}


@pytest.mark.parametrize("name", sorted(CASES))
def test_records_write_what_the_dataclasses_wrote(name):
    rec, old = CASES[name], OLD[name]
    d = rec.to_dict()
    assert d == old
    assert json.dumps(d) == json.dumps(old)  # the same keys in the same order (`--format json`)
    assert repr(rec) == OLD_REPR[name]


@pytest.mark.parametrize("name", sorted(CASES))
def test_records_written_by_the_dataclasses_read_back(name, tmp_path):
    cls = CLASSES[name.split("-")[0]]
    path = tmp_path / "rec.json"
    write_json(path, OLD[name])  # as the store writes a record
    rec = cls.from_dict(read_json(path))
    assert rec == CASES[name] and rec.to_dict() == OLD[name]
    write_json(path, rec.to_dict())
    assert read_json(path) == OLD[name]
    # nested records are records again, not dicts
    if isinstance(rec, Container):
        assert all(isinstance(m, Mount) for m in rec.config.mounts) and isinstance(rec.config, RunConfig)
    if isinstance(rec, Image):
        assert isinstance(rec.config, ImageConfig)
    if isinstance(rec, VM):
        assert all(isinstance(c, Checkpoint) for c in rec.checkpoints)


def test_record_semantics_as_dataclasses():
    a = CASES["Container"]
    b = Container.from_dict(a.to_dict())
    assert a == b and a is not b and not (a != b)
    b.config.mounts[0].readonly = False
    assert a != b  # equality looks into nested records
    with pytest.raises(TypeError):
        hash(a)  # mutable: unhashable, as a dataclass with eq
    assert a != "x" and (a == object()) is False
    # defaults are made anew for each record
    x, y = ImageConfig(), ImageConfig()
    x.env.append("A=1")
    assert y.env == [] and RunConfig(["sh"]).mounts is not RunConfig(["sh"]).mounts
    # None given is kept (a dataclass kept it), not replaced by the default
    assert Container.from_dict({**a.to_dict(), "notes": None, "created": None}).to_dict()["notes"] is None
    # positional construction in field order
    assert Mount("/s", "/t", True) == Mount(source="/s", target="/t", readonly=True)
    assert Checkpoint("s1", None, 3, "copy").to_dict() == {"name": "s1", "created": None, "size": 3, "method": "copy"}
    with pytest.raises(TypeError):
        Mount("/s")  # a required field is required
    with pytest.raises(TypeError):
        Image.from_dict({k: v for k, v in CASES["Image"].to_dict().items() if k != "id"})  # a missing one is refused
    # an unknown key (a newer ctr's) is left out: test_a_record_from_a_newer_ctr_still_reads
    # copies
    c = copy.deepcopy(a)
    assert c == a and c.config is not a.config
    assert pickle.loads(pickle.dumps(a)) == a
    r = models.replace(a, name="other")
    assert r.name == "other" and r.id == a.id and a.name == "web"
    # ImageConfig keeps a __dict__ in field order (inspect views print it)
    assert ImageConfig(env=["A=1"]).__dict__ == {"env": ["A=1"], "cmd": [], "entrypoint": [], "workdir": "", "user": ""}


def test_times_in_the_records_form():
    t = models.now_iso()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", t), t
    from datetime import datetime, timezone

    assert abs((datetime.now(timezone.utc) - models.parse_iso(t)).total_seconds()) < 60
    assert models.parse_iso("") is None and models.parse_iso(None) is None
    assert Container(id="x", name="n", image="i", image_name="i", isolation="process", driver="overlay",
                     config=RunConfig(["sh"])).created[:4].isdigit()


def test_changes():
    a, b = Change("/a", "A"), Change(path="/a/b", kind="C")
    assert (a.path, a.kind, str(a)) == ("/a", "A", "A /a")
    assert repr(b) == "Change(path='/a/b', kind='C')"
    assert a == Change("/a", "A") and len({a, Change("/a", "A"), b}) == 2  # frozen: hashable
    assert sorted([b, Change("/a", "D"), a]) == [a, Change("/a", "D"), b]  # by path, then kind
    with pytest.raises(AttributeError):
        a.path = "/x"  # type: ignore[misc]
    assert copy.deepcopy(b) == b and pickle.loads(pickle.dumps(b)) == b
    assert finish({"/x/y/z": "A"}) == [Change("/x", "C"), Change("/x/y", "C"), Change("/x/y/z", "A")]
    m = {"/a": Entry(1, 2, "d"), "/a/f": Entry(3, 4, "f")}
    assert load_manifest(dump_manifest(m)) == m and Entry(1, 2, "d") != Entry(1, 2, "f")


def test_plain_data_classes_keep_their_constructors():
    assert Availability(False, "why").to_dict() == {"usable": False, "reason": "why", "fix": "", "notes": []}
    assert Config().to_dict() == {"isolation": "process", "drivers": {}, "kernel": None, "qemu": None, "memory": None,
                                  "cpus": None, "hyperv_runtime_class": "kata", "diff_ignore": [], "path": None}
    assert RunOptions(image="bb", command=[]).env == [] and RemoveResult("r").error is None
    op = MountOp("/dev/null", "/dev/null", None, ("bind",), kind="file")
    assert (op.target, op.source, op.fstype, op.flags, op.data, op.in_root, op.kind, op.optional) == (
        "/dev/null", "/dev/null", None, ("bind",), "", True, "file", False)
    assert models.replace(op, source="/x") == MountOp("/dev/null", "/x", None, ("bind",), kind="file")
    launch = Launch(argv=["sh"], mounts=base_mounts())
    assert launch == Launch(["sh"], mounts=base_mounts()) and launch.env == {} and launch.rlimits == {}
    assert launch.to_dict()["mounts"][0]["flags"] == ("nosuid", "nodev", "noexec")


def test_labels_are_written_only_when_there_are_some():
    """A container without labels is recorded as before labels existed (an older ctr reads it);
    one with labels has them."""
    d = json.loads(json.dumps(OLD["Container-defaults"]))
    assert "labels" not in d["config"]
    c = Container.from_dict(d)
    assert c.config.labels == {} and "labels" not in c.to_dict()["config"]
    c.config.labels = {"ci": "1"}
    assert Container.from_dict(c.to_dict()).config.labels == {"ci": "1"}


def test_a_record_from_a_newer_ctr_still_reads():
    """Fields this ctr does not know (a newer one wrote them) are left out, not fatal."""
    d = json.loads(json.dumps(OLD["Container"]))
    d["future"], d["config"]["future"], d["config"]["mounts"][0]["future"] = 1, 2, 3
    assert Container.from_dict(d).to_dict() == OLD["Container"]
    i = json.loads(json.dumps(OLD["Image"]))
    i["future"], i["config"]["future"] = 1, 2
    assert Image.from_dict(i).to_dict() == OLD["Image"]
