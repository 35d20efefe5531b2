"""References to containers: full id, then name, then unique id prefix (docker's order)."""

from __future__ import annotations

from ctr.errors import Conflict, InvalidArgument, NotFound

TYPE_CHECKING = False  # (not typing's: importing typing costs every command ~3 ms)
if TYPE_CHECKING:
    from typing import Callable, Iterable, TypeVar

    T = TypeVar("T")


def resolve(ref: str, items: Iterable[T], ident: Callable[[T], str], names: Callable[[T], list[str]],
            what: str) -> T:
    if not ref:
        raise InvalidArgument(f"empty {what} reference")
    items = list(items)
    bare = ref.split(":", 1)[1] if ref.startswith("sha256:") else ref
    for it in items:
        if ident(it).split(":", 1)[-1] == bare:
            return it
    for it in items:
        if ref in names(it):
            return it
    if all(c in "0123456789abcdef" for c in bare):
        matches = [it for it in items if ident(it).split(":", 1)[-1].startswith(bare)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            ids = ", ".join(sorted(ident(m).split(":", 1)[-1][:12] for m in matches)[:5])
            raise Conflict(
                f"{what} reference {ref!r} is ambiguous: it matches {len(matches)} {what}s ({ids})",
                hint="give more characters of the id, or use the name",
            )
    raise NotFound(f"no such {what}: {ref}")
