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


# click 8.4's fish script cannot work: its template's `string split \n` holds a real newline
# (a Python escape, not a fish one) and it splits single lines of a response that spreads each
# item over three. So fish gets a script and a line format of our own: one "type<TAB>value<TAB>help"
# line per item, which fish splits itself.
_SOURCE_FISH = r"""function %(complete_func)s;
    set -l response (env %(complete_var)s=fish_complete COMP_WORDS=(commandline -cp) \
COMP_CWORD=(commandline -t) %(prog_name)s);

    for line in $response;
        set -l item (string split -m 2 \t -- $line);
        switch $item[1];
            case dir;
                __fish_complete_directories $item[2];
            case file;
                __fish_complete_path $item[2];
            case plain;
                if test -n "$item[3]";
                    printf '%%s\t%%s\n' $item[2] $item[3];
                else;
                    printf '%%s\n' $item[2];
                end;
        end;
    end;
end;

complete --no-files --command %(prog_name)s --arguments "(%(complete_func)s)";
"""


def _with_file_fallback(cls):
    """A value with no completer of its own (a path, a free-text argument) completes as a file
    name, as shells do by default; typer's Path type and plain strings would offer nothing."""
    import click

    class WithFiles(cls):
        def get_completions(self, args, incomplete):
            items = super().get_completions(args, incomplete)
            if items or incomplete.startswith("-"):
                return items
            try:
                from click.shell_completion import CompletionItem, _resolve_context, _resolve_incomplete

                ctx = _resolve_context(self.cli, self.ctx_args, self.prog_name, list(args))
                obj, incomplete = _resolve_incomplete(ctx, list(args), incomplete)
            except Exception:
                return items
            if (isinstance(obj, click.Parameter) and getattr(obj, "_custom_shell_complete", None) is None
                    and not getattr(obj, "is_flag", False)
                    and (obj.type is click.STRING or isinstance(obj.type, click.Path))):
                return [CompletionItem(incomplete, type="file")]
            return items

    WithFiles.__name__ = cls.__name__
    return WithFiles


def _classes():
    from click.shell_completion import BashComplete, FishComplete, ZshComplete

    class CtrFishComplete(FishComplete):
        source_template = _SOURCE_FISH

        def format_completion(self, item) -> str:
            def clean(text) -> str:
                return " ".join(str(text or "").split())

            return f"{item.type}\t{clean(item.value)}\t{clean(item.help)}"

    # named here, not looked up in click's registry (which typer may have patched)
    return {name: _with_file_fallback(cls)
            for name, cls in (("bash", BashComplete), ("zsh", ZshComplete), ("fish", CtrFishComplete))}


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
    instruction = os.environ.get(COMPLETE_VAR, "")
    shell, _, action = instruction.partition("_")
    if shell not in FILES or action not in ("complete", "source"):
        sys.stderr.write(f"Error: unsupported completion request {instruction!r}\n")
        return 1
    if action == "source":
        sys.stdout.write(script(shell))
        return 0
    comp = _classes()[shell](command, {}, PROG, COMPLETE_VAR)
    answer = comp.complete()
    sys.stdout.write(answer + "\n" if answer else "")
    return 0


def completion(
    shell: Shell = typer.Argument(..., help="bash, zsh or fish"),
) -> None:
    """Print the shell completion script for SHELL: bash, zsh or fish.

    The script completes commands, options, and the names of containers, images and VMs."""
    sys.stdout.write(script(shell.value))
