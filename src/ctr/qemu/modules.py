"""Kernel modules: read a module's .modinfo, resolve dependencies, load files.

Dependencies come from `modules.dep` when the modules directory has one (a host's
/lib/modules/$(uname -r) does), else from each module's own `.modinfo` `depends=` field —
Debian's linux-image packages ship no modules.dep (depmod runs at install time), and ctr
never installs them.  `softdep=pre:` entries are followed too (ext4 needs crc32c).
"""

from __future__ import annotations

import gzip
import lzma
import os
import shutil
import struct
import subprocess
from pathlib import Path

from ..errors import DriverError

# Suffixes a module file may have, most common first.
KO_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")

# Softdep / request_module names that are aliases rather than module names.
_ALIASES = {"crc32c": "crc32c_generic", "crypto_crc32c": "crc32c_generic"}


def module_name(path: str | Path) -> str:
    """`kernel/fs/9p/9p.ko.xz` -> `9p`; dashes become underscores as modprobe does."""
    base = os.path.basename(str(path))
    for suffix in KO_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def read_module_bytes(path: Path) -> bytes:
    """The uncompressed ELF of a module file (.ko, .ko.xz, .ko.gz; .ko.zst with the
    `zstd` tool, as Python 3.11 has no zstd)."""
    name = path.name
    if name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    if name.endswith(".ko.gz"):
        return gzip.decompress(path.read_bytes())
    if name.endswith(".ko.zst"):
        tool = shutil.which("zstd")
        if tool is None:
            raise DriverError(
                f"kernel module {name} is zstd-compressed and this Python cannot decompress it",
                hint="install the zstd tool (apt-get install zstd) or use a kernel whose "
                "modules are xz-compressed or uncompressed",
            )
        return subprocess.run([tool, "-dcq", str(path)], check=True, capture_output=True).stdout
    return path.read_bytes()


def modinfo(elf: bytes) -> dict[str, list[str]]:
    """The `.modinfo` section of a module ELF as {key: [values…]}."""
    if elf[:4] != b"\x7fELF":
        raise ValueError("not an ELF file")
    is64 = elf[4] == 2
    endian = "<" if elf[5] == 1 else ">"
    if is64:
        shoff, = struct.unpack_from(endian + "Q", elf, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", elf, 0x3A)
    else:
        shoff, = struct.unpack_from(endian + "I", elf, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", elf, 0x2E)

    def section(i: int) -> tuple[int, int, int]:
        base = shoff + i * shentsize
        if is64:
            name, _t, _f, _a, off, size = struct.unpack_from(endian + "IIQQQQ", elf, base)
        else:
            name, _t, _f, _a, off, size = struct.unpack_from(endian + "IIIIII", elf, base)
        return name, off, size

    _n, stroff, strsize = section(shstrndx)
    strtab = elf[stroff: stroff + strsize]
    info: dict[str, list[str]] = {}
    for i in range(shnum):
        name_off, off, size = section(i)
        name = strtab[name_off: strtab.index(b"\0", name_off)]
        if name != b".modinfo":
            continue
        for item in elf[off: off + size].split(b"\0"):
            if b"=" in item:
                key, _, value = item.decode(errors="replace").partition("=")
                info.setdefault(key, []).append(value)
    return info


def parse_modules_dep(text: str) -> dict[str, list[str]]:
    """`modules.dep` text -> {relative path: [relative paths of its dependencies]}."""
    deps: dict[str, list[str]] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        mod, _, rest = line.partition(":")
        deps[mod.strip()] = rest.split()
    return deps


class ModuleIndex:
    """The modules of one kernel, found under `root` (a `lib/modules/<release>` tree)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.paths: dict[str, str] = {}  # name -> path relative to root
        dep_file = self.root / "modules.dep"
        self._deps: dict[str, list[str]] | None = None
        if dep_file.is_file():
            self._deps = parse_modules_dep(dep_file.read_text())
            for rel in self._deps:
                self.paths[module_name(rel)] = rel
        else:
            for dirpath, _dirs, files in os.walk(self.root):
                for f in files:
                    if f.endswith(KO_SUFFIXES):
                        rel = os.path.relpath(os.path.join(dirpath, f), self.root)
                        self.paths.setdefault(module_name(f), rel)
        self.builtin: set[str] = set()
        builtin = self.root / "modules.builtin"
        if builtin.is_file():
            self.builtin = {module_name(line) for line in builtin.read_text().split()}
        self._info_cache: dict[str, dict[str, list[str]]] = {}

    def info(self, name: str) -> dict[str, list[str]]:
        if name not in self._info_cache:
            self._info_cache[name] = modinfo(read_module_bytes(self.root / self.paths[name]))
        return self._info_cache[name]

    def _lookup(self, name: str) -> str:
        name = name.replace("-", "_")
        if name in self.paths or name in self.builtin:
            return name
        return _ALIASES.get(name, name)

    def dependencies(self, name: str) -> list[str]:
        """Direct hard dependencies (module names) of module `name`, plus `softdep pre:`."""
        if self._deps is not None and self.paths.get(name) in self._deps:
            hard = [module_name(p) for p in self._deps[self.paths[name]]]
        else:
            hard = [d for v in self.info(name).get("depends", []) for d in v.split(",") if d]
        soft: list[str] = []
        try:
            for v in self.info(name).get("softdep", []):
                words = v.split()
                if words and words[0] == "pre:":
                    for w in words[1:]:
                        if w.endswith(":"):
                            break
                        soft.append(w)
        except (OSError, ValueError):
            pass
        return [self._lookup(d) for d in hard + soft]

    def resolve(self, wanted: list[str]) -> list[str]:
        """Module names to load, dependencies first, for the `wanted` names.  Names built
        into the kernel, or unknown to it, are left out (see `missing`)."""
        order: list[str] = []
        seen: set[str] = set()

        def visit(name: str, stack: tuple[str, ...]) -> None:
            name = self._lookup(name)
            if name in seen or name in self.builtin or name not in self.paths:
                return
            if name in stack:  # a cycle: modules.dep never has one, be safe anyway
                return
            for dep in self.dependencies(name):
                visit(dep, stack + (name,))
            seen.add(name)
            order.append(name)

        for w in wanted:
            visit(w, ())
        return order

    def missing(self, names: list[str]) -> list[str]:
        """Which of `names` are neither modules nor built in."""
        return [n for n in names if self._lookup(n) not in self.paths and
                self._lookup(n) not in self.builtin]


def write_modules_dep(root: Path) -> None:
    """Write a `modules.dep` for a modules tree that has none, from `.modinfo`."""
    index = ModuleIndex(root)
    lines = []
    for name, rel in sorted(index.paths.items(), key=lambda kv: kv[1]):
        try:
            deps = index.resolve([name])[:-1]
        except (OSError, ValueError):
            deps = []
        lines.append(f"{rel}: " + " ".join(index.paths[d] for d in reversed(deps)))
    tmp = root / "modules.dep.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(root / "modules.dep")


_SIG_MAGIC = b"~Module signature appended~\n"


def strip_signature(elf: bytes) -> bytes:
    """A module without its appended signature.  The guest kernel then skips checking it
    (which costs noticeable emulated CPU under TCG) and loads it tainted: module signature
    enforcement is off in distribution kernels unless Secure Boot lockdown is on, and a ctr
    guest never boots through Secure Boot."""
    if not elf.endswith(_SIG_MAGIC):
        return elf
    end = len(elf) - len(_SIG_MAGIC)
    if end < 12:
        return elf
    sig_len, = struct.unpack(">I", elf[end - 4:end])
    start = end - 12 - sig_len
    return elf[:start] if start > 0 else elf
