"""ARNS bookkeeping without any network: validation, identity, registry."""

import pytest

from chatbox.arns import NameTaken, Registry, is_valid_name, name_key


@pytest.mark.parametrize("name", ["A", "x" * 100, "Nguyễn", "a b", "😀", "Ω"])
def test_valid_names(name):
    assert is_valid_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x" * 101,
        " ",
        "\u3000",
        "a\x07",
        "a\u200b",
        "a\u2028",
        "a\u2029",
        "\ufeffa",
        "a\ud800",
        1,
        None,
        b"An",
        ["An"],
    ],
)
def test_invalid_names(name):
    assert not is_valid_name(name)


def test_same_for_arns_under_nfkc_and_casefold():
    assert name_key("Alice") == name_key("ALICE") == name_key("Ａlice")
    assert name_key("Straße") == name_key("STRASSE")
    assert name_key("An") != name_key("Anh")


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
    assert registry.online() == ["an", "Bo"]  # a refused rename changes nothing
    registry.rename(a, "An")  # a variant of one's own name
    assert registry.online() == ["An", "Bo"]
    with pytest.raises(NameTaken):
        registry.claim(object(), "aN")
