"""Store: the source of truth for every path in the state directory.

Layout (version 1):

    ROOT/store.json                 {"version": 1}
    ROOT/lock                       flock held around every change to records
    ROOT/tmp/<pid>-<tag>-<rand>/     work in progress; swept when <pid> is gone
    ROOT/images/<hex>.json          image records (id = sha256 of the image config)
    ROOT/layers/<hex>/              read-only layer trees, named by their diff id
    ROOT/layers/<hex>.json          the checksum of each layer's tree (`ctr system check`)
    ROOT/containers/<id>/container.json
    ROOT/containers/<id>/upper|work|merged|rootfs|...   driver-owned directories
    ROOT/kernels/<release>/         guest kernels for the qemu drivers
    ROOT/vms/<name>/vm.json         VM records; the VM's disk (disk.img or rootfs/), manifest,
    ROOT/vms/<name>/...             console.log, run/ (pid file, agent sockets), checkpoints/
    ROOT/cache/                     derived data that can be rebuilt (initramfs, probes)

A directory is built under tmp/ and renamed into place, a record is written to a temp file
and renamed, so a crash leaves either the old state or the new one plus sweepable litter.
"""

from __future__ import annotations

import os
import stat as _stat
from pathlib import Path

from ctr import faults
from ctr.errors import StoreError
from ctr.store.records import flock, read_json, write_json

STORE_VERSION = 1


def default_root() -> Path:
    env = os.environ.get("CTR_ROOT")
    if env:
        return Path(env)
    from ctr.config import user_dir  # platformdirs' answer, mostly without importing it

    return user_dir("data")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Store:
    def __init__(self, root: Path):
        self.root = Path(root).absolute()

    # ----------------------------------------------------------------- paths
    @property
    def lock_path(self) -> Path:
        return self.root / "lock"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    @property
    def layers_dir(self) -> Path:
        return self.root / "layers"

    @property
    def containers_dir(self) -> Path:
        return self.root / "containers"

    @property
    def kernels_dir(self) -> Path:
        return self.root / "kernels"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def vms_dir(self) -> Path:
        return self.root / "vms"

    def image_record(self, image_id: str) -> Path:
        return self.images_dir / f"{_hex(image_id)}.json"

    def layer_dir(self, diff_id: str) -> Path:
        return self.layers_dir / _hex(diff_id)

    def container_dir(self, cid: str) -> Path:
        return self.containers_dir / cid

    def container_record(self, cid: str) -> Path:
        return self.container_dir(cid) / "container.json"

    def container_path(self, cid: str, part: str) -> Path:
        """A driver-owned directory or file of a container: upper, work, merged, rootfs, ..."""
        if "/" in part or part in ("", ".", "..", "container.json"):
            raise ValueError(part)
        return self.container_dir(cid) / part

    # ------------------------------------------------------------- lifecycle
    def open(self) -> "Store":
        """Create the store if new, check its version, sweep crash litter."""
        meta = self.root / "store.json"
        if not meta.exists():
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.root, 0o700)
            with flock(self.lock_path):
                if not meta.exists():
                    for d in (self.tmp, self.images_dir, self.layers_dir, self.containers_dir):
                        d.mkdir(exist_ok=True)
                    write_json(meta, {"version": STORE_VERSION})
        data = read_json(meta)
        version = data.get("version") if isinstance(data, dict) else None
        if version != STORE_VERSION:
            raise StoreError(
                f"state directory {self.root} has store version {version!r}; "
                f"this ctr understands version {STORE_VERSION}",
                hint="use the ctr release that wrote it, or point --root at another directory",
            )
        self.sweep_tmp()
        return self

    def sweep_tmp(self) -> list[str]:
        """Remove tmp/ entries whose creating process is gone."""
        swept = []
        try:
            entries = list(os.scandir(self.tmp))
        except FileNotFoundError:
            return swept
        for e in entries:
            pid_s = e.name.split("-", 1)[0]
            if pid_s.isdigit() and _pid_alive(int(pid_s)):
                continue
            remove_path(Path(e.path))
            swept.append(e.name)
        return swept

    def locked(self) -> flock:
        """`with store.locked():` an exclusive lock around a change to records (creation,
        rename, removal)."""
        return flock(self.lock_path)

    def new_tmp(self, tag: str, directory: bool = True) -> Path:
        """A fresh path under tmp/, owned by this process until renamed into place."""
        path = self.tmp / f"{os.getpid()}-{tag}-{os.urandom(4).hex()}"  # as secrets.token_hex(4)
        if directory:
            path.mkdir(mode=0o700)
        return path

    # ----------------------------------------------------------- containers
    def container_ids(self) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(self.containers_dir) if not e.name.startswith("."))
        except FileNotFoundError:
            return []

    def read_container(self, cid: str) -> dict | None:
        try:
            return read_json(self.container_record(cid))
        except FileNotFoundError:
            return None
        except StoreError as e:
            raise self.corrupt_container(cid, getattr(e, "detail", e.message)) from None

    def corrupt_container(self, cid: str, detail: str) -> StoreError:
        return StoreError(
            f"container {cid[:12]} has a corrupt record {self.container_record(cid)}: {detail}",
            hint=f"`ctr rm -f {cid}` discards that container",
        )

    def discard_unreadable_container(self, cid: str) -> None:
        """Remove a container whose record cannot be read: unmount what is mounted under its
        directory, then delete it (there is no record to say which driver made it)."""
        from ctr import proc

        with self.locked():
            for mp in proc.mounts_under(self.container_dir(cid)):
                try:
                    proc.umount(mp)
                except OSError:
                    pass
            self.discard_container(cid)

    def write_container(self, cid: str, data: dict, durable: bool = True) -> None:
        write_json(self.container_record(cid), data, durable)

    def install_container(self, cid: str, built: Path) -> None:
        """Rename a container directory built under tmp/ into place (caller holds the lock)."""
        os.rename(built, self.container_dir(cid))

    def discard_container(self, cid: str) -> None:
        """Move the container out of sight atomically, then delete its files."""
        src = self.container_dir(cid)
        dst = self.new_tmp(f"rm-{cid[:12]}", directory=False)
        try:
            os.rename(src, dst)
        except FileNotFoundError:
            return
        faults.point("rm.moved")
        remove_path(dst)

    # ----------------------------------------------------------------- VMs
    def vm_dir(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise StoreError(f"invalid VM name {name!r}")
        return self.vms_dir / name

    def vm_record(self, name: str) -> Path:
        return self.vm_dir(name) / "vm.json"

    def vm_path(self, name: str, part: str) -> Path:
        """A driver-owned file or directory of a VM: disk.img, rootfs, manifest, run, ..."""
        if "/" in part or part in ("", ".", "..", "vm.json"):
            raise ValueError(part)
        return self.vm_dir(name) / part

    def vm_ids(self) -> list[str]:
        """The names of the VMs (a VM is named by its name)."""
        try:
            return sorted(e.name for e in os.scandir(self.vms_dir)
                          if not e.name.startswith(".") and e.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            return []

    def read_vm(self, name: str) -> dict | None:
        try:
            return read_json(self.vm_record(name))
        except FileNotFoundError:
            return None

    def write_vm(self, name: str, data: dict) -> None:
        write_json(self.vm_record(name), data)

    def install_vm(self, name: str, built: Path) -> None:
        """Rename a VM directory built under tmp/ into place (caller holds the lock)."""
        self.vms_dir.mkdir(mode=0o700, exist_ok=True)
        os.rename(built, self.vm_dir(name))

    def discard_vm(self, name: str) -> None:
        """Move the VM out of sight atomically, then delete its files."""
        dst = self.new_tmp(f"rmvm-{name[:40]}", directory=False)
        try:
            os.rename(self.vm_dir(name), dst)
        except FileNotFoundError:
            return
        remove_path(dst)

    # --------------------------------------------------------------- images
    def image_ids(self) -> list[str]:
        try:
            return sorted(
                "sha256:" + e.name[:-5]
                for e in os.scandir(self.images_dir)
                if e.name.endswith(".json") and not e.name.startswith(".")
            )
        except FileNotFoundError:
            return []

    def read_image(self, image_id: str) -> dict | None:
        try:
            return read_json(self.image_record(image_id))
        except FileNotFoundError:
            return None

    def write_image(self, image_id: str, data: dict) -> None:
        write_json(self.image_record(image_id), data)

    def delete_image(self, image_id: str) -> None:
        try:
            os.unlink(self.image_record(image_id))
        except FileNotFoundError:
            pass

    def has_layer(self, diff_id: str) -> bool:
        return self.layer_dir(diff_id).is_dir()

    def layer_record(self, diff_id: str) -> Path:
        """`layers/<hex>.json`: the layer's checksum of its tree (`ctr system check`)."""
        return self.layers_dir / f"{_hex(diff_id)}.json"

    def read_layer_record(self, diff_id: str) -> dict | None:
        try:
            data = read_json(self.layer_record(diff_id))
        except FileNotFoundError:
            return None
        return data if isinstance(data, dict) else None

    def write_layer_record(self, diff_id: str, data: dict) -> None:
        write_json(self.layer_record(diff_id), data)

    def install_layer(self, diff_id: str, built: Path, record: dict | None = None) -> bool:
        """Rename a layer built under tmp/ into place (its `record` written first, when
        given); False if it already existed."""
        dst = self.layer_dir(diff_id)
        if record is not None and not dst.is_dir():
            self.write_layer_record(diff_id, record)
        try:
            os.rename(built, dst)
            return True
        except OSError:
            if dst.is_dir():
                remove_path(built)
                return False
            raise

    def layer_ids(self) -> list[str]:
        try:
            return sorted("sha256:" + e.name for e in os.scandir(self.layers_dir) if e.is_dir())
        except FileNotFoundError:
            return []

    def discard_layer(self, diff_id: str) -> None:
        src = self.layer_dir(diff_id)
        dst = self.new_tmp("rmlayer", directory=False)
        try:
            os.rename(src, dst)
        except FileNotFoundError:
            pass
        else:
            remove_path(dst)
        try:
            os.unlink(self.layer_record(diff_id))
        except FileNotFoundError:
            pass


def _hex(ident: str) -> str:
    h = ident.split(":", 1)[-1]
    if not h or any(c not in "0123456789abcdef" for c in h):
        raise StoreError(f"invalid id {ident!r}")
    return h


def remove_path(path: Path) -> None:
    """Delete a file or tree without following symlinks.

    Directories the owner cannot enter or write (overlayfs leaves `work/work` at mode 000;
    images carry read-only directories) are made accessible and the removal retried, which
    is what lets a rootless user remove what its containers left. A path that vanishes
    meanwhile (another ctr sweeping the same litter) is not an error."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not _stat.S_ISDIR(st.st_mode):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    failed: list[OSError] = []
    _rmtree(str(path), failed)
    if not failed or not os.path.lexists(path):
        return
    _make_accessible(str(path))
    failed.clear()
    _rmtree(str(path), failed)
    if failed:
        raise failed[0]


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _rmtree(top: str, failed: list[OSError], dir_fd: int | None = None) -> None:
    """Delete the directory `top` (relative to `dir_fd` if given) and all below it, as
    shutil.rmtree does on Linux — through directory descriptors, never following a link —
    noting each failure in `failed` and going on; what vanishes meanwhile is no failure.
    (Not shutil: it imports zlib, bz2 and lzma, ~2 ms of every `rm` and `run --rm`.)"""
    try:
        fd = os.open(top, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    except OSError as e:
        failed.append(e)
        return
    try:
        with os.scandir(fd) as it:
            entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
    except OSError as e:
        failed.append(e)
        entries = []
    try:
        for name, is_dir in entries:
            if is_dir:
                _rmtree(name, failed, fd)
            else:
                _noting(failed, os.unlink, name, dir_fd=fd)
    finally:
        os.close(fd)
    _noting(failed, os.rmdir, top, dir_fd=dir_fd)


def _noting(failed: list[OSError], fn, path: str, dir_fd: int | None) -> None:
    """fn(path, dir_fd=dir_fd); a path already gone is no failure, another error is noted."""
    try:
        fn(path, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except OSError as e:
        failed.append(e)


def _make_accessible(top: str) -> None:
    """Give the owner rwx on every directory under `top` (top-down, never through links)."""

    def fix(p: str) -> None:
        try:
            st = os.lstat(p)
            if _stat.S_ISDIR(st.st_mode) and st.st_mode & 0o700 != 0o700:
                os.chmod(p, _stat.S_IMODE(st.st_mode) | 0o700)
        except OSError:
            pass

    fix(top)
    for dirpath, dirnames, _ in os.walk(top):
        for d in dirnames:
            fix(os.path.join(dirpath, d))
