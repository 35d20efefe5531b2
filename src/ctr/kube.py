"""The Kubernetes bridge: a container record becomes a Pod (and optionally a RuntimeClass).

Pure functions over `Container` and `Image` records; no I/O. `to_yaml()` is the only place
pyyaml is imported for it. The mapping:

| ctr                          | Pod                                                        |
|------------------------------|------------------------------------------------------------|
| name                         | metadata.name and the container's name (DNS-1123 label)    |
| image                        | `--image-ref`, else the local name (a warning: push it)    |
| command                      | command (the image's entrypoint, or argv[0]) + args        |
| env                          | env (name/value), minus what the image and ctr supply      |
| workdir, user, -i, -t        | workingDir, securityContext.runAsUser/Group, stdin, tty    |
| -v SRC:DST[:ro]              | volumes[].hostPath + volumeMounts[] (readOnly)             |
| --memory, --cpus             | resources.limits.memory ("512Mi"), .cpu ("500m", "2")       |
| isolation hyperv             | runtimeClassName (config `hyperv_runtime_class`, "kata")   |

A ctr container runs once, so the Pod's restartPolicy is Never.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ctr.models import HOST_IMAGE, Container, Image, short

POD_API_VERSION = "v1"
RUNTIME_CLASS_API_VERSION = "node.k8s.io/v1"
DEFAULT_RUNTIME_CLASS = "kata"
ANNOTATION_PREFIX = "ctr"

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")  # the API server's IsEnvVarName
_NOT_LABEL = re.compile(r"[^a-z0-9-]+")
# Variables ctr's launcher adds itself (launch.container_env); the kubelet sets its own.
_RUNTIME_VARS = {"HOSTNAME"}
_DEFAULTS = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}


@dataclass
class Manifest:
    """The generated objects (Pod first) and what the user should know about them."""

    documents: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)
    source: str = ""  # a one-line description of where the manifest came from

    @property
    def pod(self) -> dict[str, Any]:
        return self.documents[0]


# ----------------------------------------------------------------------------- names, units
def dns_label(text: str, fallback: str = "ctr") -> str:
    """A DNS-1123 label (lowercase alphanumerics and '-', at most 63) made from `text`."""
    label = _NOT_LABEL.sub("-", text.lower()).strip("-")
    label = re.sub(r"-{2,}", "-", label)[:63].rstrip("-")
    return label if label else fallback


def memory_quantity(n: int) -> str:
    """Bytes as a Kubernetes quantity in the largest binary unit that is exact: 512Mi, 1536Mi."""
    if n <= 0:
        raise ValueError(f"memory must be positive, not {n}")
    for suffix, size in (("Ei", 1 << 60), ("Pi", 1 << 50), ("Ti", 1 << 40), ("Gi", 1 << 30),
                         ("Mi", 1 << 20), ("Ki", 1 << 10)):
        if n % size == 0:
            return f"{n // size}{suffix}"
    return str(n)


def cpu_quantity(cpus: float) -> str:
    """CPUs as a Kubernetes quantity: whole cores as "2", else millicores "500m" (at least 1m)."""
    if cpus <= 0:
        raise ValueError(f"cpus must be positive, not {cpus}")
    milli = max(1, round(cpus * 1000))
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 2
    while candidate in taken:
        tail = f"-{n}"
        candidate = name[: 63 - len(tail)].rstrip("-") + tail
        n += 1
    taken.add(candidate)
    return candidate


# ----------------------------------------------------------------------------- the Pod
def _split_command(command: list[str], entrypoint: list[str]) -> tuple[list[str], list[str]]:
    """`command` overrides the image's ENTRYPOINT and `args` its CMD, so keep that split."""
    if entrypoint and command[: len(entrypoint)] == entrypoint:
        return list(entrypoint), command[len(entrypoint):]
    return command[:1], command[1:]


def _env(container_env: list[str], image_env: list[str], tty: bool,
         warnings: list[str]) -> list[dict[str, str]]:
    """The variables the Pod must set: what the user added, not what the image or ctr supply."""
    from_image = {}
    for item in image_env:
        k, _, v = item.partition("=")
        from_image[k] = v
    out = []
    for item in container_env:
        key, _, value = item.partition("=")
        if not key or key in _RUNTIME_VARS:
            continue
        if key in from_image and from_image[key] == value:
            continue
        if key not in from_image and _DEFAULTS.get(key) == value:
            continue
        if tty and key == "TERM" and value == "xterm":
            continue
        if not ENV_NAME.match(key):
            warnings.append(f"environment variable {key!r} is not a valid Kubernetes name: left out")
            continue
        out.append({"name": key, "value": value})
    return out


def _security_context(user: str, image_user: str, warnings: list[str]) -> dict[str, int] | None:
    if not user or user == image_user:
        return None
    uid, _, gid = user.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        warnings.append(f"user {user!r} is not numeric: Kubernetes needs runAsUser/runAsGroup as "
                        "numbers, so the Pod runs as the image's user; set securityContext by hand")
        return None
    ctx = {"runAsUser": int(uid)}
    if gid:
        ctx["runAsGroup"] = int(gid)
    return ctx


def generate(container: Container, image: Image | None = None, *, image_ref: str | None = None,
             hyperv_runtime_class: str = DEFAULT_RUNTIME_CLASS,
             with_runtime_class: bool = False) -> Manifest:
    """The Pod (and, if asked and the isolation needs one, the RuntimeClass) for a container."""
    c, cfg = container, container.config
    warnings: list[str] = []
    name = dns_label(c.name, fallback=f"ctr-{short(c.id)}")

    if image_ref:
        image_value = image_ref
    else:
        local = (image.names[0] if image and image.names else c.image_name) or short(c.image)
        image_value = local
        if (image and image.builtin) or c.image_name == HOST_IMAGE:
            warnings.append("the container runs on the built-in 'host' image, which a cluster cannot "
                            f"pull: commit the container to an image, push it, and pass --image-ref")
        else:
            warnings.append(f"image {local!r} is a local ctr image: export it (ctr image export), "
                            "push it to a registry the cluster can pull from, and pass --image-ref")

    entrypoint = image.config.entrypoint if image else []
    command, args = _split_command(list(cfg.command), list(entrypoint))
    spec_container: dict[str, Any] = {"name": name, "image": image_value}
    if command:
        spec_container["command"] = command
    if args:
        spec_container["args"] = args
    env = _env(cfg.env, image.config.env if image else [], cfg.tty, warnings)
    if env:
        spec_container["env"] = env
    default_workdir = (image.config.workdir if image else "") or "/"
    if cfg.workdir and cfg.workdir != default_workdir:
        spec_container["workingDir"] = cfg.workdir

    limits: dict[str, str] = {}
    if cfg.memory:
        limits["memory"] = memory_quantity(cfg.memory)
    if cfg.cpus:
        limits["cpu"] = cpu_quantity(cfg.cpus)
    if limits:
        spec_container["resources"] = {"limits": limits}

    sc = _security_context(cfg.user, image.config.user if image else "", warnings)
    if sc:
        spec_container["securityContext"] = sc
    if cfg.interactive or cfg.tty:
        spec_container["stdin"] = True
    if cfg.tty:
        spec_container["tty"] = True

    volumes, mounts, taken = [], [], set()
    for m in cfg.mounts:
        vname = _unique(dns_label(m.target.rstrip("/").rsplit("/", 1)[-1], fallback="volume"), taken)
        volumes.append({"name": vname, "hostPath": {"path": m.source}})
        mount: dict[str, Any] = {"name": vname, "mountPath": m.target}
        if m.readonly:
            mount["readOnly"] = True
        mounts.append(mount)
    if mounts:
        spec_container["volumeMounts"] = mounts
        warnings.append("volumes become hostPath volumes: the paths must exist on the node that runs "
                        "the Pod (or replace them with PersistentVolumeClaims)")

    spec: dict[str, Any] = {"containers": [spec_container], "restartPolicy": "Never"}
    if volumes:
        spec["volumes"] = volumes
    if cfg.hostname and cfg.hostname != c.id[:12]:
        spec["hostname"] = dns_label(cfg.hostname, fallback=name)

    runtime_class = hyperv_runtime_class if c.isolation == "hyperv" else None
    if runtime_class:
        spec["runtimeClassName"] = runtime_class

    pod = {
        "apiVersion": POD_API_VERSION,
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {"app": name},
            "annotations": {
                f"{ANNOTATION_PREFIX}/container-id": c.id,
                f"{ANNOTATION_PREFIX}/isolation": c.isolation,
                f"{ANNOTATION_PREFIX}/image-id": c.image,
            },
        },
        "spec": spec,
    }
    documents = [pod]
    if with_runtime_class:
        if runtime_class:
            documents.append(runtime_class_manifest(runtime_class))
        else:
            warnings.append(f"{c.isolation} isolation runs on the cluster's default runtime: "
                            "no RuntimeClass is needed, none emitted")
    source = f"container {c.name} ({short(c.id)}), {c.isolation} isolation"
    return Manifest(documents, warnings, source)


def runtime_class_manifest(name: str, handler: str | None = None) -> dict[str, Any]:
    """A RuntimeClass whose handler (the CRI runtime, e.g. kata) defaults to its name."""
    return {
        "apiVersion": RUNTIME_CLASS_API_VERSION,
        "kind": "RuntimeClass",
        "metadata": {"name": name},
        "handler": handler or name,
    }


def to_yaml(manifest: Manifest) -> str:
    """Multi-document YAML, headed by comments saying where it came from and what to check."""
    import yaml

    lines = [f"# Generated by ctr kube generate from {manifest.source}".rstrip()]
    lines += [f"# WARNING: {w}" for w in manifest.warnings]
    body = yaml.safe_dump_all(manifest.documents, sort_keys=False, default_flow_style=False,
                              explicit_start=True, width=1 << 16, allow_unicode=True)
    return "\n".join(lines) + "\n" + body
