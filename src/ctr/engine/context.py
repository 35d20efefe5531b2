"""What every use case needs: the opened store and the user's configuration."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ctr.config import Config, load_config
from ctr.store import Store, default_root


@dataclass
class Context:
    store: Store
    config: Config = field(default_factory=Config)


def open_context(root: Path | None = None, config_file: Path | None = None) -> Context:
    store = Store(root or default_root()).open()
    return Context(store=store, config=load_config(config_file))
