"""ARNS, the Anti-Repeat Nickname System: who holds which nickname.

Pure bookkeeping, no I/O. A single process's room (chatbox.local.room) owns
one Registry; a cluster applies the same rule in Redis, on the keys
`name_keys` makes here. Everything runs on the reactor thread, so each
method is atomic: a rename swaps the old name for the new one in a single
call, and nobody can observe a moment where both or neither are held.

Names that look the same are the same name, or `admin` could be impersonated
by `аdmin` (Cyrillic а), `admin ` or `admin` plus an invisible character.
Looks are judged by Unicode's own data through ICU, never by tables copied
here: UTS #39 skeletons (ICU's SpoofChecker) for confusables, and ICU's
property sets for what is invisible or blank. Python's `unicodedata` is not
used, so every node compares by the same Unicode version whatever its Python.
"""

from collections.abc import Hashable, Iterator

try:
    import icu
except ImportError as error:  # pragma: no cover - a broken install
    raise ImportError(
        "chatbox needs ICU (the `icu` module) to compare nicknames; "
        "install the package `pyicu-wheels` (pip install pyicu-wheels)"
    ) from error

__all__ = [
    "MAX_NAME_LENGTH",
    "UNICODE_VERSION",
    "NameTaken",
    "Registry",
    "fold_key",
    "is_valid_name",
    "name_keys",
    "spelling",
]

MAX_NAME_LENGTH = 100
UNICODE_VERSION: str = icu.UNICODE_VERSION


def _code_points(pattern: str) -> frozenset[str]:
    return frozenset(icu.UnicodeSet(pattern))


# Control, format, line and paragraph separators, and surrogates (which are
# not text and cannot be encoded as UTF-8).
_FORBIDDEN = _code_points("[[:Cc:][:Cf:][:Zl:][:Zp:][:Cs:]]")
# No agreed look. Kept as ICU sets, not expanded: unassigned alone is
# hundreds of thousands of code points.
_UNDRAWN = icu.UnicodeSet("[[:Cn:][:Co:][:Noncharacter_Code_Point:]]")
# Combining marks: drawn only on a letter before them.
_MARKS = icu.UnicodeSet("[:M:]")
# Drawn as nothing, so they never make a name different.
_IGNORABLE = _code_points("[:Default_Ignorable_Code_Point:]")
# Drawn as blank space: white space, and two symbols that are blank glyphs
# though Unicode gives them neither property (widely used as "empty" names).
_BLANK = _code_points(r"[[:White_Space:]\u2800\U0001D159]")
# One pass drops the ignorables and turns every blank into a space.
_CLEAN = {ord(c): None for c in _IGNORABLE} | {ord(c): " " for c in _BLANK}

_NFKC = icu.Normalizer2.getNFKCInstance()
_NFKC_CASEFOLD = icu.Normalizer2.getNFKCCasefoldInstance()
_SPOOF = icu.SpoofChecker()


class NameTaken(Exception):
    """Another live connection holds a nickname that is the same for ARNS.
    `verified`: whether that holder showed a token for it (a verified
    claim makes a guest holding its nickname give it up)."""

    def __init__(self, name: str, verified: bool = False) -> None:
        super().__init__(name)
        self.verified = verified


def _visible(name: str) -> str:
    """What a reader can tell apart: no ignorables, no blank at either end,
    and one space for any run of blanks inside."""
    return " ".join(word for word in name.translate(_CLEAN).split(" ") if word)


def is_valid_name(name: object) -> bool:
    """A nickname is a string of 1..100 characters, free of control and format
    characters and of code points that have no agreed look (unassigned,
    private use, noncharacters: each font draws them its own way, as a blank,
    a box or nothing), with something visible in it that is not only marks
    to put on other letters."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LENGTH:
        return False
    if any(
        char in _FORBIDDEN or "\ud800" <= char <= "\udfff" or _UNDRAWN.contains(char)
        for char in name
    ):
        return False
    visible = _visible(name)
    return any(char != " " and not _MARKS.contains(char) for char in visible)


class _Latinized(dict[int, str]):
    """Each code point (a key) to the ASCII letter it is drawn as, or to
    itself: a `str.translate` table, filled on first sight of a character.

    A character is drawn as an ASCII letter when its own skeleton is that
    letter's skeleton: Cyrillic `М`, Greek `Μ`, Lisu `ꓟ` are `M`. `I` and
    `l` share one (`l`): a small letter drawn so is `l`, and anything else
    (Greek capital `Ι`, caseless `ǀ`) is `I`, as it looks like a capital
    I too, which is `i` in another case; its first key still holds the `l`
    reading. ASCII is never changed, nor any decimal digit.

    Filled lazily because working out one character costs a skeleton, and
    doing all of Unicode at import takes half a second; names use few
    characters, so nearly every lookup is a hit. `plain` holds the
    characters seen that stay as they are, so that a name made only of
    those (most names: Vietnamese, emoji) is passed over in one ICU call
    instead of a translation, which costs a dictionary lookup a character.
    Bounded: past _LATINIZED_MOST entries (a client cycling through every
    code point) both start again rather than grow.
    """

    def __init__(self) -> None:
        super().__init__()
        self.plain = icu.UnicodeSet(r"[\u0000-\u007f]")

    def latin(self, text: str) -> str:
        """`text` with each character drawn as an ASCII letter made it."""
        if self.plain.containsAll(text):
            return text
        return text.translate(self)

    def __missing__(self, code_point: int) -> str:
        if len(self) >= _LATINIZED_MOST:
            self.clear()
            self.plain = icu.UnicodeSet(r"[\u0000-\u007f]")
        char = chr(code_point)
        self[code_point] = drawn = char if char.isascii() else _drawn_as(char)
        if drawn == char:
            self.plain.add(char)
        return drawn


_LATINIZED_MOST = 1 << 15
# Read as digits, never as letters: ASCII `0` and `1` are drawn like `O`
# and `l` yet stay digits, and so do the other scripts' (Bengali `০`).
_DIGITS = icu.UnicodeSet("[:Nd:]")
# Each skeleton of an ASCII letter to the letters that have it: `l` to
# `Il`, `rn` to `m`, every other to its own letter.
_LETTERS_BY_SKELETON: dict[str, str] = {}
for _letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz":
    _skeleton = _SPOOF.getSkeleton(0, _letter)
    _LETTERS_BY_SKELETON[_skeleton] = _LETTERS_BY_SKELETON.get(_skeleton, "") + _letter


def _drawn_as(char: str) -> str:
    if _DIGITS.contains(char):
        return char
    letters = _LETTERS_BY_SKELETON.get(_SPOOF.getSkeleton(0, char), "")
    if len(letters) > 1:  # `Il`: a small letter is `l`, anything else `I`
        small = icu.Char.isULowercase(char)
        letters = "".join(c for c in letters if c.islower() == small)
    return letters if len(letters) == 1 else char


_LATINIZED = _Latinized()


def name_keys(name: str) -> tuple[str, ...]:
    """The keys ARNS compares: two names are the same if they share one.

    UTS #39 skeletons keep case (`ADMIN` -> `ADMlN`), and looking alike is
    not transitive, so no single key says both "the same letters in another
    case" and "capital I looks like small l". Hence the skeleton of the
    case-folded name (`admin`, `ADMIN`, `аdmin` share it) and the skeleton of
    the name as cased (`Ivan` and `lvan` share it). NFKC comes first, so
    `Ａlice` is `Alice`.

    Those two miss a capital from another script drawn as a Latin capital
    whose small letter is not drawn as the Latin small one: `ADМIN`
    (Cyrillic М, small м) looks like `ADMIN`, the same name as `admin`, yet
    neither folding (`adмin`) nor keeping case (`ADМIN` is `ADMlN`, not
    `adrnin`) reaches `admin`. So a third key: each character drawn as an
    ASCII letter is made that letter first, then the name is folded
    (`ADМIN` -> `ADMIN` -> `admin`). For a name with no such character it
    is the first key, and is left out.

    A valid name's keys are never empty and never hold a newline (control
    characters are refused), so they can be joined by one. One to three
    keys, the folded one first; equal ones are given once.
    """
    visible = _visible(name)
    nfkc = _NFKC.normalize(visible)
    folded = _SPOOF.getSkeleton(0, _NFKC_CASEFOLD.normalize(visible))
    keys = [folded]
    cased = _SPOOF.getSkeleton(0, nfkc)
    if cased != folded:
        keys.append(cased)
    if not nfkc.isascii():
        latin = _LATINIZED.latin(nfkc)
        if latin != nfkc:
            drawn = _SPOOF.getSkeleton(0, _NFKC_CASEFOLD.normalize(latin))
            if drawn not in keys:
                keys.append(drawn)
    return tuple(keys)


def fold_key(text: str) -> str:
    """The case-folded skeleton of any piece of text, as the first of
    `name_keys`: what an operator's reserved-name pattern is compared by,
    fragment by fragment."""
    return _SPOOF.getSkeleton(0, _NFKC_CASEFOLD.normalize(text.translate(_CLEAN)))


def spelling(name: str) -> str:
    """A nickname as written, give or take case, width and spacing (NFKC
    case-folded, ignorables dropped, blanks as in `name_keys`), but never
    letters that only look alike: `Ms Lan`, `MS LAN` and `Ｍs  Lan` are one
    spelling; `Ian` and `Lan`, or `Lan` with a Cyrillic `а`, are not. A token
    vouches for one spelling: ARNS keys are too wide for that, since looking
    alike is not transitive (`Ian` shares a key with `Lan`)."""
    return _NFKC_CASEFOLD.normalize(_visible(name))


class Registry:
    """Nicknames held by live connections, in the order they registered.

    An owner is whatever identifies a connection (the protocol instance). A
    rename keeps the owner's place in `online()`, as v2 did. A holder that
    claimed its nickname `verified` (its connection showed a token for it)
    is remembered as such until it renames without, or is released: that is
    what `verified_online()` lists and what a NameTaken says of it.
    """

    def __init__(self) -> None:
        self._names: dict[Hashable, str] = {}
        self._keys: dict[Hashable, tuple[str, ...]] = {}
        self._owners: dict[str, Hashable] = {}
        self._verified: set[Hashable] = set()

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, owner: Hashable) -> bool:
        return owner in self._names

    def name_of(self, owner: Hashable) -> str | None:
        return self._names.get(owner)

    def is_verified(self, owner: Hashable) -> bool:
        return owner in self._verified

    def _check_free(self, name: str, keys: tuple[str, ...], owner: Hashable) -> None:
        """Raise NameTaken, saying whether the other holder is verified, if
        one of `keys` is held by another owner."""
        for key in keys:
            holder = self._owners.get(key, owner)
            if holder is not owner:
                raise NameTaken(name, holder in self._verified)

    def claim(self, owner: Hashable, name: str, verified: bool = False) -> None:
        """Register `owner` as `name`; raises NameTaken."""
        if owner in self._names:
            raise ValueError("already registered; rename instead")
        keys = name_keys(name)
        self._check_free(name, keys, owner)
        self._hold(owner, name, keys, verified)

    def rename(self, owner: Hashable, name: str, verified: bool = False) -> str:
        """Switch `owner` to `name` and return the old name; raises NameTaken.

        The exact current name is refused (v2 did so), as held by `owner`
        itself (so `.verified` is its own); a variant of one's own name,
        such as `an` to `An`, is a normal change.
        """
        old = self._names[owner]
        if name == old:
            raise NameTaken(name, owner in self._verified)
        keys = name_keys(name)
        self._check_free(name, keys, owner)
        self._drop_keys(owner)
        self._hold(owner, name, keys, verified)
        return old

    def release(self, owner: Hashable) -> str | None:
        """Free the owner's nickname; returns it the first time only."""
        name = self._names.pop(owner, None)
        if name is not None:
            self._drop_keys(owner)
            self._verified.discard(owner)
        return name

    def _hold(
        self, owner: Hashable, name: str, keys: tuple[str, ...], verified: bool
    ) -> None:
        for key in keys:
            self._owners[key] = owner
        self._keys[owner] = keys
        self._names[owner] = name
        if verified:
            self._verified.add(owner)
        else:
            self._verified.discard(owner)

    def _drop_keys(self, owner: Hashable) -> None:
        for key in self._keys.pop(owner):
            del self._owners[key]

    def online(self) -> list[str]:
        return list(self._names.values())

    def verified_online(self) -> list[str]:
        """The verified nicknames among `online()`, in its order."""
        if not self._verified:
            return []
        verified = self._verified
        return [name for owner, name in self._names.items() if owner in verified]

    def owners(self) -> Iterator[Hashable]:
        return iter(list(self._names))
