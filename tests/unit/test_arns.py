"""ARNS on its own: validation, identity (name keys) and the registry.
tests/test_arns.py holds the same rules over real WebSockets."""

import itertools

import pytest

from chatbox.chat.arns import (
    MAX_NAME_LENGTH,
    NameTaken,
    Registry,
    is_valid_name,
    name_keys,
)

# Drawn as nothing or as blank space, yet neither control nor format
# characters: each was accepted as, or inside, a nickname before.
INVISIBLE = [
    "\u3164",  # HANGUL FILLER
    "\u115f",  # HANGUL CHOSEONG FILLER
    "\u1160",  # HANGUL JUNGSEONG FILLER
    "\uffa0",  # HALFWIDTH HANGUL FILLER
    "\u034f",  # COMBINING GRAPHEME JOINER
    "\ufe0f",  # VARIATION SELECTOR-16
    "\U000e0100",  # VARIATION SELECTOR-17
    "\u180b",  # MONGOLIAN FREE VARIATION SELECTOR ONE
    "\u17b4",  # KHMER VOWEL INHERENT AQ
    "\u2800",  # BRAILLE PATTERN BLANK
    "\U0001d159",  # MUSICAL SYMBOL NULL NOTEHEAD
    "\u2065",  # unassigned, default-ignorable
]
BLANK = [" ", "\u00a0", "\u2003", "\u3000", "\u202f", "\u1680"]
DRAWN_BLANK = ["\u2800", "\U0001d159"]


@pytest.mark.parametrize(
    "name", ["A", "x" * 100, "Nguyễn", "a b", "😀", "Ω", "❤️", "𝐀" * MAX_NAME_LENGTH]
)
def test_valid_names(name):
    assert is_valid_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x" * 101,
        "𝐀" * 101,
        " ",
        "\u3000",
        "a\x07",
        "a\u200b",
        "a\u2028",
        "a\u2029",
        "\ufeffa",
        "a\ud800",
        "\udfff",
        "a\U000e0041",  # TAG LATIN CAPITAL LETTER A, a format character
        1,
        None,
        b"An",
        ["An"],
        *INVISIBLE,
        "".join(INVISIBLE),
        " \u3164 \u2800 ",
        "".join(INVISIBLE + BLANK) * 3,
    ],
)
def test_invalid_names(name):
    assert not is_valid_name(name)


def clash(first: str, second: str) -> bool:
    """Whether ARNS refuses `second` while someone else holds `first`."""
    registry = Registry()
    registry.claim(object(), first)
    try:
        registry.claim(object(), second)
    except NameTaken:
        return True
    return False


SAME = [
    ("Alice", "ALICE"),
    ("Alice", "Ａlice"),  # NFKC
    ("Straße", "STRASSE"),  # casefold
    ("ǅ", "dž"),
    ("admin", "аdmin"),  # Cyrillic а
    ("admin", "Ａdmin"),
    ("admin", "ADMIN"),
    ("admin", "АDMIN"),  # Cyrillic А
    ("admin", "admin "),
    ("admin", " admin "),
    ("admin", "admin\u00a0"),
    ("admin", "\u3000admin"),
    *[("admin", "admin" + char) for char in INVISIBLE],
    *[("admin", "ad" + char + "min") for char in INVISIBLE if char not in DRAWN_BLANK],
    ("a b", "a  b"),
    ("a b", "a\u2003\u3000b"),
    ("a b", "a\u2800b"),
    ("Ivan", "lvan"),  # capital I, small l
    ("Ivan", "ivan"),
    ("rn", "m"),
    ("PayPal", "PayPaI"),
    ("0wen", "Owen"),
    ("Nguyễn", "NGUYỄN"),
    ("Nguyễn", "Nguye\u0302\u0303n"),  # decomposed
    ("❤️", "❤"),
]
DIFFERENT = [
    ("An", "Anh"),
    ("Anh", "Ánh"),
    ("Anh", "Ảnh"),
    ("Ánh", "Ảnh"),
    ("Ánh", "Ạnh"),
    ("Ảnh", "Ãnh"),
    ("Đức", "Duc"),
    ("Đức", "Đúc"),
    ("Đức", "Đưc"),
    ("Mai", "Mái"),
    ("Mai", "Mại"),
    ("Lan", "Lân"),
    ("Lan", "Lăn"),
    ("Lân", "Lăn"),
    ("Hồ", "Hổ"),
    ("Hồ", "Hỗ"),
    ("Hơ", "Hô"),
    ("ivan", "lvan"),  # small i and small l do differ
    ("ab", "a b"),
    ("Bob", "Bo"),
]


@pytest.mark.parametrize(("first", "second"), SAME)
def test_names_that_look_the_same_are_one_name(first, second):
    assert clash(first, second)
    assert clash(second, first)
    assert set(name_keys(first)) & set(name_keys(second))


@pytest.mark.parametrize(("first", "second"), DIFFERENT)
def test_names_that_look_different_stay_different(first, second):
    assert not clash(first, second)
    assert not clash(second, first)


def test_every_tone_of_every_vietnamese_vowel_is_its_own_name():
    vowels = "aăâeêioôơuưy"
    tones = ["", "\u0300", "\u0301", "\u0309", "\u0303", "\u0323"]
    for letters in (vowels, vowels.upper()):
        registry = Registry()
        for vowel in letters:
            for tone in tones:
                registry.claim(object(), f"T{vowel}{tone}n")  # no NameTaken
        assert len(registry) == len(vowels) * len(tones)


def test_keys_of_every_single_character_are_safe_to_join():
    """Redis receives a name's keys joined by a newline: no valid name's key
    may hold one, or be empty. Planes 4 to 13 have nothing assigned, and 15
    and 16 are for private use."""
    planes = [range(plane << 16, (plane + 1) << 16) for plane in (0, 1, 2, 3, 14)]
    for code_point in itertools.chain(*planes):
        char = chr(code_point)
        if is_valid_name(char):
            keys = name_keys(char)
            assert all(key and "\n" not in key for key in keys), hex(code_point)


def test_claim_rename_release():
    registry = Registry()
    a, b = object(), object()
    registry.claim(a, "An")
    with pytest.raises(NameTaken):
        registry.claim(b, "AN")
    registry.claim(b, "Bo")
    assert registry.rename(a, "Anh") == "An"
    registry.rename(b, "an")  # An is free again
    assert registry.online() == ["Anh", "an"]
    assert registry.release(a) == "Anh"
    assert registry.release(a) is None  # exactly once
    assert registry.online() == ["an"]
    registry.claim(a, "ANH")
    assert registry.online() == ["an", "ANH"]


def test_rename_rules():
    registry = Registry()
    a, b = object(), object()
    registry.claim(a, "an")
    registry.claim(b, "Bo")
    with pytest.raises(NameTaken):
        registry.rename(a, "an")  # exactly the current name, as v2
    with pytest.raises(NameTaken):
        registry.rename(a, "bo")
    with pytest.raises(NameTaken):
        registry.rename(a, "B\u043e")  # Cyrillic о
    assert registry.online() == ["an", "Bo"]  # a refused rename changes nothing
    registry.rename(a, "An")  # a variant of one's own name
    assert registry.online() == ["An", "Bo"]
    with pytest.raises(NameTaken):
        registry.claim(object(), "aN")
    registry.rename(a, "аn ")  # a look-alike of one's own name, too
    assert registry.online() == ["аn ", "Bo"]


def test_both_keys_are_held_and_both_freed():
    """`Ivan` has two keys: one shared with `ivan`, one with `lvan`. Each
    refuses its look-alike, and a rename or a leave frees both."""
    registry = Registry()
    ivan = object()
    registry.claim(ivan, "Ivan")
    assert len(name_keys("Ivan")) == 2
    for look_alike in ("ivan", "lvan", "IVAN"):
        with pytest.raises(NameTaken):
            registry.claim(object(), look_alike)
    registry.rename(ivan, "lvan")  # its own look-alike: a normal change
    registry.claim(object(), "ivan")  # freed by the rename
    with pytest.raises(NameTaken):
        registry.claim(object(), "Ivan")  # looks like lvan
    registry.release(ivan)
    registry.claim(object(), "lvan")  # freed by the leave
    assert registry.online() == ["ivan", "lvan"]


def test_ten_thousand_longest_names_in_a_four_byte_script():
    """At real size: 10,000 holders of 99-character names in a 4-byte
    script; every look-alike of each, up to 100 characters, is refused, and
    each leaves cleanly."""
    registry = Registry()
    names = ["𝐀" * 94 + f"{i:05d}" for i in range(10_000)]
    owners = [object() for _ in names]
    for owner, name in zip(owners, names, strict=True):
        registry.claim(owner, name)
    for name in names[::97]:
        for look_alike in ("a" * 94 + name[94:], name + "\u3164", " " + name):
            assert is_valid_name(look_alike)
            with pytest.raises(NameTaken):
                registry.claim(object(), look_alike)
    for owner in owners:
        registry.release(owner)
    assert len(registry) == 0 and registry.online() == []


@pytest.mark.parametrize(
    "name",
    [
        "root\u0378",  # unassigned
        "root\ue000",  # private use
        "root\uffff",  # noncharacter
        "root\U0001ffff",  # noncharacter
        "root\U000f0000",  # private use, plane 15
        "\u0378",
        "\ue000",
        "\u0301",  # a lone combining mark
        "\u0301\u0302 \u20dd",  # marks and a blank, nothing to put them on
    ],
)
def test_names_with_no_agreed_look_are_refused(name):
    """Seen by a reviewer: accepted while `root` was online, and drawn as
    `root`, a blank or a box depending on the font."""
    assert not is_valid_name(name)


def test_marks_on_letters_are_fine():
    assert is_valid_name("Nguye\u0302\u0303n")  # decomposed Vietnamese
    assert is_valid_name("e\u0301")
