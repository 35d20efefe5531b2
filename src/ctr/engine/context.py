"""What every use case needs: the opened store and the user's configuration."""

from __future__ import annotations

from pathlib import Path

from ctr.config import Config, load_config
from ctr.models import Record
from ctr.store import Store, default_root


class Context(Record):
    __slots__ = _fields = ("store", "config")

    def __init__(self, store: Store, config: Config | None = None):
        self.store = store
        self.config = Config() if config is None else config


def open_context(root: Path | None = None, config_file: Path | None = None) -> Context:
    store = Store(root or default_root()).open()
    return Context(store=store, config=load_config(config_file))
