"""The state store: the only code that knows where anything lives in the state directory."""

from ctr.store.store import STORE_VERSION, Store, default_root

__all__ = ["STORE_VERSION", "Store", "default_root"]
