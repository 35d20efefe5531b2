"""Shell completion: `ctr completion SHELL` prints the script; `_CTR_COMPLETE` answers it.

The scripts are click's (bash, zsh, fish). On <TAB> the shell runs
`_CTR_COMPLETE={shell}_complete COMP_WORDS=… COMP_CWORD=… ctr`, and `complete()` answers
from the command tree: subcommands, options, and container/image/VM names through the
callbacks in `cli/common.py`. The same scripts are committed in completions/ by
scripts/gen-docs (and tests check they are current).
"""

from __future__ import annotations

import os
import sys
from enum import Enum

import typer

PROG = "ctr"
COMPLETE_VAR = "_CTR_COMPLETE"
FILES = {"bash": "ctr.bash", "zsh": "_ctr", "fish": "ctr.fish"}

_INSTALL = {
    "bash": "copy to /usr/share/bash-completion/completions/ctr (or ~/.local/share/bash-completion/"
            "completions/ctr), or `source <(ctr completion bash)` in ~/.bashrc",
    "zsh": "copy as _ctr into a directory on $fpath (e.g. /usr/local/share/zsh/site-functions), "
           "or `source <(ctr completion zsh)` in ~/.zshrc after compinit",
    "fish": "copy to ~/.config/fish/completions/ctr.fish (or /usr/share/fish/vendor_completions.d/)",
}


class Shell(str, Enum):
    bash = "bash"
    zsh = "zsh"
    fish = "fish"


def _classes():
    from click.shell_completion import BashComplete, FishComplete, ZshComplete

    # click's own classes, named here so a registry that typer may have patched is not used
    return {"bash": BashComplete, "zsh": ZshComplete, "fish": FishComplete}


def script(shell: str) -> str:
    """The completion script for `shell`, with a header saying where it came from."""
    cls = _classes()[shell]
    comp = cls(None, {}, PROG, COMPLETE_VAR)  # type: ignore[arg-type]
    body = cls.source_template % comp.source_vars()  # source() without bash's version probe
    header = (f"# {shell} completion for ctr. Generated from the ctr command tree by scripts/gen-docs"
              f" (or `ctr completion {shell}`); do not edit.\n"
              f"# Install: {_INSTALL[shell]}.\n")
    if body.startswith("#compdef"):  # zsh: #compdef must stay the first line
        first, _, rest = body.partition("\n")
        return f"{first}\n{header}{rest}"
    return header + "\n" + body


def complete(command) -> int:
    """Answer one completion request (the `_CTR_COMPLETE` protocol) for the click command."""
    from click.shell_completion import shell_complete

    instruction = os.environ.get(COMPLETE_VAR, "")
    shell, _, action = instruction.partition("_")
    if shell not in FILES or action not in ("complete", "source"):
        sys.stderr.write(f"Error: unsupported completion request {instruction!r}\n")
        return 1
    if action == "source":
        sys.stdout.write(script(shell))
        return 0
    return shell_complete(command, {}, PROG, COMPLETE_VAR, instruction)


def completion(
    shell: Shell = typer.Argument(..., help="bash, zsh or fish"),
) -> None:
    """Print the shell completion script for SHELL (completes commands, options, and container,
    image and VM names)."""
    sys.stdout.write(script(shell.value))
