"""`ctr kube …`: Kubernetes manifests from containers."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ctr.cli.common import complete_container, ctx

app = typer.Typer(help="Generate Kubernetes manifests from containers.", no_args_is_help=True)


@app.command("generate")
def generate(
    container: str = typer.Argument(..., help="Container: id, name or unique id prefix",
                                    autocompletion=complete_container),
    image_ref: Optional[str] = typer.Option(
        None, "--image-ref", help="Image reference the cluster pulls (where you pushed the exported image)"),
    runtime_class: bool = typer.Option(
        False, "--runtime-class", help="Also emit the RuntimeClass object a hyperv container needs"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the manifest to FILE, not stdout"),
) -> None:
    """Print a Kubernetes Pod manifest (YAML) that runs the container's command on a cluster."""
    import sys

    from ctr import kube
    from ctr import output as out
    from ctr.engine import containers as ce
    from ctr.engine import images as ie
    from ctr.errors import CtrError, InvalidArgument

    c = ce.get_container(ctx(), container)
    try:
        image = ie.get_image(ctx(), c.image)
    except CtrError:
        image = None
    klass = ctx().config.hyperv_runtime_class or kube.DEFAULT_RUNTIME_CLASS
    if not kube.DNS1123_LABEL.match(klass):
        raise InvalidArgument(f"hyperv_runtime_class {klass!r} is not a valid RuntimeClass name",
                              hint="use lowercase letters, digits and '-' (a DNS-1123 label), e.g. kata")
    manifest = kube.generate(c, image, image_ref=image_ref, hyperv_runtime_class=klass,
                             with_runtime_class=runtime_class)
    text = kube.to_yaml(manifest)
    for w in manifest.warnings:
        out.warn(w)
    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.write_text(text)
    except OSError as e:
        raise CtrError(f"cannot write {output}: {e.strerror}") from None
