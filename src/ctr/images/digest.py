"""Content digests (`sha256:<hex>`) and a reader that computes one while streaming."""

from __future__ import annotations

import json

TYPE_CHECKING = False  # (not typing's: importing typing costs every command ~2 ms)
if TYPE_CHECKING:
    from typing import Any, BinaryIO

# hashlib's OpenSSL backend costs ~2 ms to load: every command that reads image records
# (run, ps, diff) imports this module for HOST_IMAGE_ID, so only hashing imports it


class HashingReader:
    """Wraps a binary stream; every byte read passes through sha256."""

    def __init__(self, raw: BinaryIO):
        import hashlib

        self.raw = raw
        self.hash = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.hash.update(data)
        self.count += len(data)
        return data

    def drain(self) -> None:
        """Read to the end (tar streams may have padding after the end-of-archive blocks)."""
        while self.read(1 << 20):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


def digest_bytes(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


# digest_bytes(b"ctr builtin image: the host root filesystem"), written out (tests check it)
HOST_IMAGE_ID = "sha256:644f090b16367a16520222276bd5682c5069f65b4656d05115b1c2bc37969eeb"
