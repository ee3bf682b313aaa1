"""ARNS, the Anti-Repeat Nickname System: who holds which nickname.

Pure bookkeeping, no I/O. The factory owns one Registry. Everything runs on
the reactor thread, so each method is atomic: a rename swaps the old name for
the new one in a single call, and nobody can observe a moment where both or
neither are held.
"""

import unicodedata
from collections.abc import Hashable, Iterator

__all__ = [
    "MAX_NAME_LENGTH",
    "NameTaken",
    "Registry",
    "is_valid_name",
    "name_key",
]

MAX_NAME_LENGTH = 100

# Control, format, line and paragraph separators, and surrogates (which are
# not text and cannot be encoded as UTF-8).
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


class NameTaken(Exception):
    """Another live connection holds a nickname that is the same for ARNS."""


def is_valid_name(name: object) -> bool:
    """A nickname is a string of 1..100 characters, not blank, and free of
    invisible characters that would let two names look identical."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LENGTH:
        return False
    if name.isspace():
        return False
    return not any(unicodedata.category(char) in _FORBIDDEN_CATEGORIES for char in name)


def name_key(name: str) -> str:
    """The identity ARNS compares: `Alice`, `ALICE` and `Ａlice` share one."""
    return unicodedata.normalize("NFKC", name).casefold()


class Registry:
    """Nicknames held by live connections, in the order they registered.

    An owner is whatever identifies a connection (the protocol instance). A
    rename keeps the owner's place in `online()`, as v2 did.
    """

    def __init__(self) -> None:
        self._names: dict[Hashable, str] = {}
        self._owners: dict[str, Hashable] = {}

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, owner: Hashable) -> bool:
        return owner in self._names

    def name_of(self, owner: Hashable) -> str | None:
        return self._names.get(owner)

    def claim(self, owner: Hashable, name: str) -> None:
        """Register `owner` as `name`; raises NameTaken."""
        if owner in self._names:
            raise ValueError("already registered; rename instead")
        key = name_key(name)
        if key in self._owners:
            raise NameTaken(name)
        self._owners[key] = owner
        self._names[owner] = name

    def rename(self, owner: Hashable, name: str) -> str:
        """Switch `owner` to `name` and return the old name; raises NameTaken.

        The exact current name is refused (v2 did so); a variant of one's own
        name, such as `an` to `An`, is a normal change.
        """
        old = self._names[owner]
        if name == old:
            raise NameTaken(name)
        old_key, new_key = name_key(old), name_key(name)
        holder = self._owners.get(new_key)
        if holder is not None and holder is not owner:
            raise NameTaken(name)
        del self._owners[old_key]
        self._owners[new_key] = owner
        self._names[owner] = name
        return old

    def release(self, owner: Hashable) -> str | None:
        """Free the owner's nickname; returns it the first time only."""
        name = self._names.pop(owner, None)
        if name is not None:
            del self._owners[name_key(name)]
        return name

    def online(self) -> list[str]:
        return list(self._names.values())

    def owners(self) -> Iterator[Hashable]:
        return iter(list(self._names))
