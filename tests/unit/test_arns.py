"""ARNS on its own: validation, identity (name keys) and the registry.
tests/test_arns.py holds the same rules over real WebSockets."""

import itertools
import string

import icu
import pytest

from chatbox.chat import arns
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
    # A capital from another script drawn as a Latin capital: the name in
    # capitals looks like the Latin one in capitals, which is the same name
    # in another case (seen by an attacker review of verified nicknames).
    ("Ms Lan", "МS LAN"),  # Cyrillic М
    ("Ms Lan", "MS LAΝ"),  # Greek Ν
    ("Ms Lan", "ΜS LAN"),  # Greek Μ
    ("Ms Lan", "Ms ᏞAN"),  # Cherokee Ꮮ
    ("admin", "ADМIN"),  # Cyrillic М
    ("admin", "ꓮDMIN"),  # Lisu ꓮ, which has no case at all
    ("chatbox", "CНATBOX"),  # Cyrillic Н
    ("ivan", "ⲒVAN"),  # Coptic Ⲓ, drawn as I (and l)
    ("ivan", "ǀVAN"),  # U+01C0, no case, drawn as I (and l)
    ("lvan", "ǀVAN"),
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
    ("lvan", "IVAN"),  # capital I is i in another case, not l
    ("lvan", "ΙVAN"),  # nor is a Greek capital Ι
    ("Lani", "Lan١"),  # an Arabic-Indic one is a digit, as ASCII 1 is
    ("owen", "০WEN"),  # and a Bengali zero, as ASCII 0 is
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


_SPOOF = icu.SpoofChecker()
_NFKC = icu.Normalizer2.getNFKCInstance()
_NFKC_CASEFOLD = icu.Normalizer2.getNFKCCasefoldInstance()


def skeleton(text: str) -> str:
    return _SPOOF.getSkeleton(0, text)


def classic_keys(name: str) -> set[str]:
    """The two keys ARNS had before the third: the skeletons of the name
    folded and as cased (names here have no invisible or extra blanks)."""
    return {
        skeleton(_NFKC_CASEFOLD.normalize(name)),
        skeleton(_NFKC.normalize(name)),
    }


def drawn_as_capitals() -> dict[str, list[str]]:
    """Every Latin capital to the other characters drawn as it: Cyrillic,
    Greek, Cherokee, Coptic, Lisu, runic, math alphanumerics, symbols such
    as ⊤ and ∪. Found by asking ICU of every assigned code point, not
    listed by hand. Left out: small letters; digits (ASCII `0` and `1`,
    drawn as `O` and `l`, stay digits, and so do other scripts'); and what
    NFKC, which ARNS applies first, makes ASCII other than a letter
    (fullwidth `｜` is `|`: ASCII is never changed) or no longer drawn as
    the letter (U+03F9 GREEK CAPITAL LUNATE SIGMA SYMBOL looks like C, but
    NFKC makes it Σ)."""
    found: dict[str, list[str]] = {letter: [] for letter in string.ascii_uppercase}
    by_skeleton = {skeleton(letter): letter for letter in found}
    candidates = icu.UnicodeSet(
        r"[[:^Lowercase:]-[:Nd:]-[:Cn:]-[:Co:]-[:Cs:]-[\u0000-\u007f]]"
    )
    for char in candidates:
        drawn = _NFKC.normalize(char)  # superscript ¹ is 1, fullwidth ｜ is |
        letter = by_skeleton.get(skeleton(drawn))
        digit = any(icu.Char.isdigit(part) for part in drawn)
        ascii_sign = drawn.isascii() and not drawn.isalpha()
        if letter and not digit and not ascii_sign and is_valid_name(char):
            found[letter].append(char)
    return found


def test_a_capital_drawn_as_a_latin_capital_is_that_capital():
    """A word in capitals with one or more Latin capitals swapped for a
    look-alike is the Latin word in capitals, so also in small letters and
    in title case; and the key that makes it so is one of the Latin word's
    own, so the swap clashes with nothing the Latin word does not."""
    found = drawn_as_capitals()
    assert all(found.values()), [letter for letter, chars in found.items() if not chars]
    assert "М" in found["M"] and "Ν" in found["N"] and "Ꮮ" in found["L"]
    assert sum(map(len, found.values())) > 500
    missed = []
    for letter, chars in found.items():
        small = letter.lower()
        latin = f"{letter}E{letter}O"
        like = (latin, f"{small}e{small}o", f"{letter}e{small}o")
        latin_keys = set(name_keys(latin))
        for char in chars:
            for swapped in (
                f"{char}E{letter}O",
                f"{letter}E{char}O",
                f"{char}E{char}O",
            ):
                keys = set(name_keys(swapped))
                if not all(keys & set(name_keys(word)) for word in like):
                    missed.append((letter, f"U+{ord(char):04X}", swapped))
                assert keys - classic_keys(swapped) <= latin_keys, swapped
    assert not missed, missed


VIETNAMESE_FAMILY = (
    "Nguyễn Trần Lê Phạm Hoàng Huỳnh Phan Vũ Võ Đặng Bùi Đỗ Hồ Ngô Dương Lý"
)
VIETNAMESE_MIDDLE = "Văn Thị Hữu Đức Minh Ngọc Thanh Quốc Xuân Bảo"
VIETNAMESE_GIVEN = (
    "An Anh Ánh Ảnh Ạnh Ãnh Bảo Bình Châu Chi Cường Dũng Duy Đạt Giang Hà Hải"
    " Hạnh Hiếu Hòa Hoa Hùng Hương Huy Khánh Khoa Lan Lân Lăn Linh Long Mai Mái"
    " Minh My Mỹ Nam Nga Ngân Ngọc Nhung Phong Phúc Phương Quân Quang Quỳnh Sơn"
    " Tâm Thảo Thắng Thủy Tiến Trang Trung Tú Tuấn Tùng Uyên Vân Việt Vy Xuân"
    " Yến Đức Duc Dục"
)
ENGLISH = (
    "Liam Noah Oliver James Elijah William Henry Lucas Benjamin Theodore Mateo"
    " Levi Sebastian Daniel Jack Michael Alexander Owen Asher Samuel Ethan Leo"
    " Jackson Mason Ezra John Hudson Luca Aiden Joseph David Jacob Logan Luke"
    " Julian Gabriel Grayson Wyatt Matthew Dylan Isaac Elias Anthony Thomas"
    " Carter Charles Josiah Caleb Cooper Lincoln Miles Nathan Isaiah Kai Joshua"
    " Andrew Adrian Cameron Nolan Roman Eli Wesley Aaron Ian Ryan Ivan Bob Tom"
    " Olivia Emma Charlotte Amelia Sophia Mia Isabella Ava Evelyn Luna Harper"
    " Sofia Camila Eleanor Elizabeth Violet Scarlett Emily Hazel Lily Aurora"
    " Penelope Aria Nora Chloe Ellie Mila Avery Layla Abigail Ella Isla Nova"
    " Madison Zoe Ivy Grace Lucy Willow Riley Naomi Victoria Stella Elena"
    " Hannah Maya Leah Lillian Natalie Josephine Alice Ruby Claire Audrey"
    " Athena Eden Iris Anna Eloise Jade Maria Caroline Quinn Vivian Sarah Cora"
    " Clara Lydia Bella Daisy Eva Samantha Mark Max Sam Ana Lan Mai Kim"
)
# Names written in scripts whose capitals look like Latin ones: in capitals
# they are the names the third key is about.
OTHER_SCRIPTS = (
    "Иван Мария Анна Ольга Олег Сергей Алексей Андрей Дмитрий Михаил Павел"
    " Татьяна Елена Наталья Ирина Екатерина Оксана Вера Надежда Маша Саша Вася"
    " Коля Катя Макар Марк Тимур Роман Борис Виктор Вадим Егор Кира Таня Тамара"
    " Нина Ева Ян Νίκος Γιώργος Μαρία Ελένη Κώστας Γιάννης Δημήτρης Σοφία"
    " Άννα Ειρήνη Θεόδωρος Αθηνά Ηρώ Μάρκος Τάσος Όλγα Ζωή Ερμής Νίκη Τίμων"
    " ᏣᎳᎩ ᎠᏂᏴᏫᏯ ᏌᏊ ᎦᏙ ᏩᏯ ᎤᏍᏗ ᏗᎧ ᏂᎦᏓ ᎠᏓ ᎢᎬᏱ"
)


def real_names() -> list[str]:
    """Some 15,000 real names: Vietnamese full names, English given names
    and pairs of them, Russian, Greek and Cherokee names; each as written,
    in capitals and in small letters."""
    given = VIETNAMESE_GIVEN.split()
    english = ENGLISH.split()
    names = set(english) | set(OTHER_SCRIPTS.split())
    names |= {f"{f} {g}" for f in VIETNAMESE_FAMILY.split() for g in given}
    names |= {
        f"{f} {m} {g}"
        for f in VIETNAMESE_FAMILY.split()[:8]
        for m in VIETNAMESE_MIDDLE.split()
        for g in given[::2]
    }
    names |= {f"{a} {b}" for a in english[:60] for b in english[60:80]}
    return sorted(
        {form for name in names for form in (name, name.upper(), name.lower())}
    )


def clashing_pairs(names: list[str], keys_of) -> set[tuple[str, str]]:
    holders: dict[str, set[str]] = {}
    for name in names:
        for key in keys_of(name):
            holders.setdefault(key, set()).add(name)
    return {
        pair
        for same in holders.values()
        for pair in itertools.combinations(sorted(same), 2)
    }


def test_real_names_that_were_different_stay_different():
    """The third key joins a name only to spellings with a Latin letter in
    place of a look-alike, never two real names that were apart: among
    these, exactly the same pairs clash as with the first two keys alone
    (those that differ only in case, such as `Anh` and `ANH`)."""
    names = real_names()
    assert len(names) > 10_000
    before = clashing_pairs(names, classic_keys)
    after = clashing_pairs(names, lambda name: set(name_keys(name)))
    assert after == before
    assert ("NGUYỄN ANH", "Nguyễn Anh") in after
    assert ("Nguyễn Anh", "Nguyễn Ánh") not in after
    # Names in capitals such as `МАРК` and `ΜΑΡΚΟΣ` do have a third key, so
    # this tested it.
    third = [name for name in names if set(name_keys(name)) - classic_keys(name)]
    assert "МАРК" in third and "ΜΆΡΚΟΣ" in third and len(third) > 50


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


def test_a_client_cycling_through_every_code_point_grows_no_table():
    """The third key looks each character up in a memo, filled on first
    sight: names made of every assigned character in turn leave it no
    bigger than its bound, and the keys come out the same from a cold memo
    as from a warm one."""
    table = arns._LATINIZED
    chars = [char for char in icu.UnicodeSet("[:L:]") if is_valid_name(char)]
    assert len(chars) > 2 * arns._LATINIZED_MOST
    names = ["".join(chars[i : i + 100]) for i in range(0, len(chars), 100)]
    keys = [name_keys(name) for name in names]
    assert len(table) <= arns._LATINIZED_MOST
    assert len(table.plain) <= arns._LATINIZED_MOST + 128  # and ASCII
    table.clear()
    assert [name_keys(name) for name in names[::50]] == keys[::50]


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
