"""`ctr kube generate`: the Pod/RuntimeClass mapping as data, validated against a pinned
schema derived from the Kubernetes OpenAPI definitions (tests/schemas/), and end to end."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from conftest import needs_root
from ctr import kube
from ctr.models import Container, Image, ImageConfig, Mount, RunConfig

SCHEMA_PATH = Path(__file__).parent / "schemas" / "k8s-v1.29-pod-runtimeclass.schema.json"
SCHEMA = json.loads(SCHEMA_PATH.read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
POD = {"$ref": "#/$defs/io.k8s.api.core.v1.Pod", "$defs": SCHEMA["$defs"]}
RUNTIME_CLASS = {"$ref": "#/$defs/io.k8s.api.node.v1.RuntimeClass", "$defs": SCHEMA["$defs"]}
CID = "0123456789ab" + "c" * 52
IMAGE_ID = "sha256:" + "e" * 64


def image(**cfg) -> Image:
    return Image(id=IMAGE_ID, names=["tools:1"], layers=[], config=ImageConfig(**cfg))


def container(isolation: str = "process", name: str = "my_app", **cfg) -> Container:
    base = dict(command=["sh", "-c", "echo hi"], env=["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                                                   f"HOSTNAME={CID[:12]}", "HOME=/root"],
                workdir="/", hostname=CID[:12])
    base.update(cfg)
    return Container(id=CID, name=name, image=IMAGE_ID, image_name="tools:1", isolation=isolation,
                     driver="overlay", config=RunConfig(**base))


def validate(doc: dict) -> None:
    """Valid against the pinned schema, and every field emitted has a real (untrimmed) schema."""
    VALIDATOR.validate(doc)
    schema = POD if doc["kind"] == "Pod" else RUNTIME_CLASS
    jsonschema.Draft202012Validator(schema).validate(doc)
    assert_untrimmed(doc, schema["$ref"], doc["kind"])


def _resolve(node: dict) -> dict:
    while "$ref" in node:
        node = SCHEMA["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def assert_untrimmed(value, ref: str | dict, where: str) -> None:
    node = _resolve({"$ref": ref} if isinstance(ref, str) else ref)
    assert "$comment" not in node or "trimmed" not in node["$comment"], \
        f"{where} is emitted but its schema is trimmed: add its upstream definition to {SCHEMA_PATH.name}"
    if isinstance(value, dict) and "properties" in node:
        for k, v in value.items():
            assert_untrimmed(v, node["properties"][k], f"{where}.{k}")
    elif isinstance(value, list) and "items" in node:
        for i, v in enumerate(value):
            assert_untrimmed(v, node["items"], f"{where}[{i}]")


# ----------------------------------------------------------------------------- the schema itself
def test_schema_is_valid_and_cites_its_source():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert "api/openapi-spec/v3/api__v1_openapi.json" in SCHEMA["description"]
    assert "001a778fa11f78082f945366a80e46d518b21309" in SCHEMA["description"]


@pytest.mark.parametrize("path, bad", [
    (("spec", "containers", 0), {"workdir": "/x"}),          # misspelled workingDir
    (("spec", "containers", 0), {"volumeMount": []}),        # misspelled volumeMounts
    (("spec",), {"runtimeClass": "kata"}),                   # misspelled runtimeClassName
    (("spec",), {"restartPolicy": "never"}),                 # not one of the values
    (("metadata",), {"name": "My_App"}),                     # not DNS-1123
    (("spec", "containers", 0, "resources", "limits"), {"memory": "512MB"}),  # not a quantity
    (("spec", "containers", 0), {"env": [{"name": "A", "val": "1"}]}),
])
def test_schema_rejects_mistakes(path, bad):
    m = kube.generate(container(memory=1 << 29), image())
    doc = json.loads(json.dumps(m.pod))
    node = doc
    for p in path:
        node = node.setdefault(p, {}) if isinstance(p, str) else node[p]
    node.update(bad)
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate(doc)


# ----------------------------------------------------------------------------- units and names
@pytest.mark.parametrize("n, q", [(512 << 20, "512Mi"), (1536 << 20, "1536Mi"), (2 << 30, "2Gi"),
                                  (1 << 40, "1Ti"), (1000, "1000"), (4096, "4Ki"), (1, "1")])
def test_memory_quantity(n, q):
    assert kube.memory_quantity(n) == q


@pytest.mark.parametrize("cpus, q", [(0.5, "500m"), (2, "2"), (1.0, "1"), (1.25, "1250m"),
                                     (0.0001, "1m"), (0.3333, "333m")])
def test_cpu_quantity(cpus, q):
    assert kube.cpu_quantity(cpus) == q


QUANTITY = SCHEMA["$defs"]["io.k8s.apimachinery.pkg.api.resource.Quantity"]


@given(st.integers(min_value=1, max_value=1 << 62))
def test_memory_quantity_is_exact_and_valid(n):
    q = kube.memory_quantity(n)
    jsonschema.validate(q, QUANTITY)
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50, "Ei": 1 << 60}
    value = int(q[:-2]) * units[q[-2:]] if q[-2:] in units else int(q)
    assert value == n


@given(st.floats(min_value=0.0005, max_value=512, allow_nan=False))
def test_cpu_quantity_is_valid(cpus):
    q = kube.cpu_quantity(cpus)
    jsonschema.validate(q, QUANTITY)
    milli = int(q[:-1]) if q.endswith("m") else int(q) * 1000
    assert abs(milli - cpus * 1000) <= 0.5 + 1e-6 or milli == 1


@given(st.text(max_size=100))
def test_dns_label_always_valid(text):
    label = kube.dns_label(text, fallback="ctr-x")
    assert kube.DNS1123_LABEL.match(label) and len(label) <= 63


@pytest.mark.parametrize("name, label", [("my_app", "my-app"), ("Web.Server-1", "web-server-1"),
                                         ("__x__", "x"), ("a" * 80, "a" * 63), ("___", "ctr-0123456789ab")])
def test_pod_name_is_dns_label_of_container_name(name, label):
    assert kube.generate(container(name=name), image()).pod["metadata"]["name"] == label


# ----------------------------------------------------------------------------- the mapping
def test_full_mapping_is_valid():
    c = container(
        command=["/entry", "serve", "--port", "80"], workdir="/srv", user="1000:100", tty=True, interactive=True,
        env=["PATH=/usr/bin:/bin", f"HOSTNAME={CID[:12]}", "HOME=/root", "TERM=xterm", "FROMIMG=1", "MODE=prod",
             "EMPTY="],
        mounts=[Mount("/host/data", "/data", True), Mount("/host/cache", "/var/cache", False),
                Mount("/other/data", "/mnt/data", False)],
        memory=512 << 20, cpus=0.5, hostname="web")
    m = kube.generate(c, image(entrypoint=["/entry"], env=["PATH=/usr/bin:/bin", "FROMIMG=1"]),
                      image_ref="registry.example.com/tools:1")
    pod = m.pod
    validate(pod)
    spec = pod["spec"]
    ct = spec["containers"][0]
    assert ct["image"] == "registry.example.com/tools:1"
    assert ct["command"] == ["/entry"] and ct["args"] == ["serve", "--port", "80"]
    assert ct["env"] == [{"name": "MODE", "value": "prod"}, {"name": "EMPTY", "value": ""}]
    assert ct["workingDir"] == "/srv"
    assert ct["resources"] == {"limits": {"memory": "512Mi", "cpu": "500m"}}
    assert ct["securityContext"] == {"runAsUser": 1000, "runAsGroup": 100}
    assert ct["stdin"] is True and ct["tty"] is True
    assert spec["volumes"] == [{"name": "data", "hostPath": {"path": "/host/data"}},
                               {"name": "cache", "hostPath": {"path": "/host/cache"}},
                               {"name": "data-2", "hostPath": {"path": "/other/data"}}]
    assert ct["volumeMounts"] == [{"name": "data", "mountPath": "/data", "readOnly": True},
                                  {"name": "cache", "mountPath": "/var/cache"},
                                  {"name": "data-2", "mountPath": "/mnt/data"}]
    assert spec["restartPolicy"] == "Never" and spec["hostname"] == "web"
    assert "runtimeClassName" not in spec
    assert pod["metadata"]["annotations"]["ctr/container-id"] == CID
    assert not any("--image-ref" in w for w in m.warnings)
    assert any("hostPath" in w for w in m.warnings)


def test_minimal_process_container():
    m = kube.generate(container(), image())
    validate(m.pod)
    ct = m.pod["spec"]["containers"][0]
    assert ct == {"name": "my-app", "image": "tools:1", "command": ["sh"], "args": ["-c", "echo hi"]}
    assert set(m.pod["spec"]) == {"containers", "restartPolicy"}
    assert any("--image-ref" in w and "push" in w for w in m.warnings)


def test_without_image_record_uses_the_name_the_user_gave():
    m = kube.generate(container(), None)
    validate(m.pod)
    assert m.pod["spec"]["containers"][0]["image"] == "tools:1"


def test_host_image_warns_it_cannot_be_pulled():
    host = Image(id=IMAGE_ID, names=["host"], layers=[], builtin=True)
    c = container()
    c.image_name = "host"
    m = kube.generate(c, host)
    assert any("'host'" in w and "cannot" in w for w in m.warnings)


@pytest.mark.parametrize("klass", ["kata", "kata-qemu", "gvisor"])
def test_hyperv_gets_runtime_class_and_object(klass):
    m = kube.generate(container("hyperv"), image(), hyperv_runtime_class=klass, with_runtime_class=True)
    pod, rc = m.documents
    validate(pod)
    validate(rc)
    assert pod["spec"]["runtimeClassName"] == klass
    assert rc == {"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": klass},
                  "handler": klass}


def test_hyperv_without_flag_has_class_but_no_object():
    m = kube.generate(container("hyperv"), image())
    assert m.pod["spec"]["runtimeClassName"] == "kata" and len(m.documents) == 1


def test_process_with_runtime_class_flag_emits_none_and_says_so():
    m = kube.generate(container("process"), image(), with_runtime_class=True)
    assert len(m.documents) == 1 and "runtimeClassName" not in m.pod["spec"]
    assert any("no RuntimeClass" in w for w in m.warnings)


def test_command_without_entrypoint_splits_argv0():
    m = kube.generate(container(command=["/bin/echo", "a b", "c"]), image(entrypoint=["/other"]))
    ct = m.pod["spec"]["containers"][0]
    assert ct["command"] == ["/bin/echo"] and ct["args"] == ["a b", "c"]


def test_non_numeric_user_warns_and_is_left_out():
    m = kube.generate(container(user="nobody"), image())
    assert "securityContext" not in m.pod["spec"]["containers"][0]
    assert any("nobody" in w for w in m.warnings)


def test_user_same_as_image_is_not_repeated():
    m = kube.generate(container(user="1000"), image(user="1000"))
    assert "securityContext" not in m.pod["spec"]["containers"][0]


def test_invalid_env_name_is_left_out_with_warning():
    m = kube.generate(container(env=["1BAD=x", "GOOD=y"]), image())
    validate(m.pod)
    assert m.pod["spec"]["containers"][0]["env"] == [{"name": "GOOD", "value": "y"}]
    assert any("1BAD" in w for w in m.warnings)


def test_workdir_same_as_image_is_not_repeated():
    m = kube.generate(container(workdir="/app"), image(workdir="/app"))
    assert "workingDir" not in m.pod["spec"]["containers"][0]
    m = kube.generate(container(workdir="/"), image(workdir="/app"))
    assert m.pod["spec"]["containers"][0]["workingDir"] == "/"


def test_yaml_keeps_long_and_odd_values_intact():
    long = "x" * 300
    odd = ["yes", "1", "on", "null", "a: b", "- c", "#d", "é", "multi\nline"]
    m = kube.generate(container(command=["echo", long, *odd], env=[f"LONG={long}", "NUM=2"]), image())
    text = kube.to_yaml(m)
    pod = yaml.safe_load(text.split("---", 1)[1])
    assert pod == json.loads(json.dumps(m.pod))
    assert pod["spec"]["containers"][0]["args"] == [long, *odd]
    assert {"name": "NUM", "value": "2"} in pod["spec"]["containers"][0]["env"]
    assert max(len(line) for line in text.splitlines() if "x" * 300 in line) > 300  # not folded


def test_yaml_is_multi_document_with_comment_header():
    m = kube.generate(container("hyperv"), image(), with_runtime_class=True)
    text = kube.to_yaml(m)
    assert text.startswith("# Generated by ctr kube generate from container my_app (0123456789ab)")
    assert "# WARNING: image 'tools:1'" in text
    docs = list(yaml.safe_load_all(text))
    assert [d["kind"] for d in docs] == ["Pod", "RuntimeClass"]
    for d in docs:
        validate(d)


# ----------------------------------------------------------------------------- end to end
@needs_root
def test_cli_generate(ctr, tmp_path):
    vol = tmp_path / "vol"
    vol.mkdir()
    ctr.ok("run", "--name", "web_1", "-e", "MODE=test", "-w", "/tmp", "-m", "256m", "--cpus", "2",
           "-v", f"{vol}:/data:ro", "host", "true")
    r = ctr("kube", "generate", "web_1", "--image-ref", "registry.example.com/web:1", check=True)
    docs = list(yaml.safe_load_all(r.out))
    assert len(docs) == 1
    pod = docs[0]
    validate(pod)
    ct = pod["spec"]["containers"][0]
    assert pod["metadata"]["name"] == "web-1" and ct["image"] == "registry.example.com/web:1"
    assert ct["command"] == ["true"] and ct["workingDir"] == "/tmp"
    assert {"name": "MODE", "value": "test"} in ct["env"]
    assert ct["resources"]["limits"] == {"memory": "256Mi", "cpu": "2"}
    assert pod["spec"]["volumes"] == [{"name": "data", "hostPath": {"path": str(vol)}}]
    assert "Warning: volumes become hostPath" in r.err

    out = tmp_path / "pod.yaml"
    r = ctr("kube", "generate", "--runtime-class", "-o", str(out), "web_1", check=True)
    assert r.out == "" and "Warning: the container runs on the built-in 'host' image" in r.err
    assert "no RuntimeClass" in r.err
    validate(yaml.safe_load(out.read_text().split("---", 1)[1]))

    (tmp_path / "config.yaml").write_text("hyperv_runtime_class: Not_A_Label\n")
    r = ctr("kube", "generate", "web_1")
    assert r.code == 2 and r.out == "" and "hyperv_runtime_class 'Not_A_Label'" in r.err


@needs_root
def test_cli_generate_hyperv_class_from_config(ctr, tmp_path):
    (tmp_path / "config.yaml").write_text("hyperv_runtime_class: kata-fc\n")
    c = ctr("run", "--name", "sealed", "--isolation", "hyperv", "host", "true")
    if c.code != 0:
        pytest.skip(f"no usable hyperv driver here: {c.err.strip()}")
    r = ctr("kube", "generate", "--runtime-class", "sealed", check=True)
    pod, rc = yaml.safe_load_all(r.out)
    validate(pod)
    validate(rc)
    assert pod["spec"]["runtimeClassName"] == "kata-fc" and rc["handler"] == "kata-fc"


def test_cli_generate_errors(ctr, tmp_path):
    r = ctr("kube", "generate", "nosuch")
    assert r.code == 1 and r.err.startswith("Error: no such container: nosuch")
    r = ctr("kube", "generate")
    assert r.code == 2
