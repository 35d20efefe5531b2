"""ctr: run any command in a throwaway copy-on-write layer and see what it changed."""

__version__ = "0.1.0"
