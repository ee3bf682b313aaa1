"""The admin token file (chatbox/admin/tokens.py): its lines, the
constant-time check, reloading, and appending a new token."""

import hashlib
import os
import signal
import stat

import pytest
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.task import deferLater

from chatbox.admin import tokens
from chatbox.admin.tokens import TokenFileError, Tokens


def line(name: str, token: str) -> str:
    return f"{name} sha256:{hashlib.sha256(token.encode()).hexdigest()}"


def test_a_file_of_lines_comments_and_blanks(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(
        "\ufeff# operators\n\n"
        + line("alice", "tok-a")
        + "\n   \n  "
        + line("bob", "tok-b").upper().replace("BOB SHA256", "bob sha256")
        + "  \n# the end"
    )
    loaded = Tokens.load(str(path))
    assert len(loaded) == 2
    assert loaded.operator(b"tok-a") == "alice"
    assert loaded.operator(b"tok-b") == "bob"
    assert loaded.operator(b"tok-c") is None
    assert loaded.operator(b"") is None
    assert loaded.operator(hashlib.sha256(b"tok-a").hexdigest().encode()) is None


@pytest.mark.parametrize(
    "bad,why",
    [
        ("alice tok-a", "expected 'NAME sha256:HEX'"),
        ("alice sha256:abc", "expected 'NAME sha256:HEX'"),
        ("alice sha1:" + "a" * 64, "expected 'NAME sha256:HEX'"),
        ("alice sha256:" + "g" * 64, "expected 'NAME sha256:HEX'"),
        ("alice sha256:" + "a" * 65, "expected 'NAME sha256:HEX'"),
        ("sha256:" + "a" * 64, "expected 'NAME sha256:HEX'"),
        ("al ice sha256:" + "a" * 64, "expected 'NAME sha256:HEX'"),
        ("alice sha256:" + "a" * 64 + " extra", "expected 'NAME sha256:HEX'"),
        ("al:ice sha256:" + "a" * 64, "no colon"),
        ("a\x1bice sha256:" + "a" * 64, "no spaces or control characters"),
        ("x" * 65 + " sha256:" + "a" * 64, "at most 64"),
        (line("carol", "tok-a"), "the same token as line 2"),
    ],
)
def test_a_bad_line_refuses_naming_it(tmp_path, bad, why):
    path = tmp_path / "tokens"
    path.write_text("# ok\n" + line("alice", "tok-a") + "\n" + bad + "\n")
    with pytest.raises(TokenFileError) as e:
        Tokens.load(str(path))
    where = "line 3" if "line 2" in why else "line 3:"
    assert f"{path} {where}" in str(e.value)
    assert why in str(e.value)
    assert "tok-a" not in str(e.value)


def test_a_missing_or_binary_file_is_named(tmp_path):
    with pytest.raises(TokenFileError, match=r"cannot read .*nothing"):
        Tokens.load(str(tmp_path / "nothing"))
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(TokenFileError, match="not UTF-8"):
        Tokens.load(str(binary))


def test_an_empty_file_lets_nobody_in(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("")
    assert Tokens.load(str(path)).operator(b"") is None


def test_every_entry_is_compared(monkeypatch):
    """No early exit at a match: the time says nothing about which entry."""
    compared = []
    real = tokens.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return real(a, b)

    monkeypatch.setattr(tokens.hmac, "compare_digest", counting)
    entries = [
        tokens.Entry(f"op{i}", hashlib.sha256(f"t{i}".encode()).digest())
        for i in range(5)
    ]
    assert Tokens("f", entries).operator(b"t0") == "op0"
    assert len(compared) == 5


def test_every_byte_of_the_hash_counts():
    digest = hashlib.sha256(b"token").digest()
    for position in (0, 15, 31):
        near = bytearray(digest)
        near[position] ^= 1
        assert Tokens("f", [tokens.Entry("x", bytes(near))]).operator(b"token") is None


@pytest.mark.parametrize(
    "name", ["", "a b", "a\tb", "a:b", "#a", "a\x00", "a\u200bb", "x" * 65]
)
def test_names_that_cannot_be_operators(name):
    assert tokens.check_name(name) is not None


@pytest.mark.parametrize("name", ["alice", "Ops-1", "người", "a#b"])
def test_names_that_can(name):
    assert tokens.check_name(name) is None


def test_append_creates_the_file_0600(tmp_path):
    path = str(tmp_path / "tokens")
    tokens.append_line(path, line("alice", "t"))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert Tokens.load(path).operator(b"t") == "alice"


def test_append_keeps_every_other_line(tmp_path):
    path = tmp_path / "tokens"
    before = "# mine\n" + line("alice", "t1")  # no newline at the end
    path.write_text(before)
    os.chmod(path, 0o644)
    tokens.append_line(str(path), line("bob", "t2"))
    assert path.read_text() == before + "\n" + line("bob", "t2") + "\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    loaded = Tokens.load(str(path))
    assert (loaded.operator(b"t1"), loaded.operator(b"t2")) == ("alice", "bob")


def test_new_tokens_are_long_and_different():
    made = {tokens.new_token() for _ in range(100)}
    assert len(made) == 100
    assert all(len(t) >= 43 and t.isascii() and " " not in t for t in made)


@ensureDeferred
async def test_reload_takes_a_changed_file_and_keeps_the_old_on_a_bad_one(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(line("alice", "t1") + "\n")
    loaded = Tokens.load(str(path))
    path.write_text(line("bob", "t2") + "\n")
    assert await loaded.reload() is True
    assert (loaded.operator(b"t1"), loaded.operator(b"t2")) == (None, "bob")
    path.write_text("garbage\n")
    assert await loaded.reload() is False
    assert loaded.operator(b"t2") == "bob"
    path.unlink()
    assert await loaded.reload() is False
    assert loaded.operator(b"t2") == "bob"


@ensureDeferred
async def test_sighup_reloads_while_the_service_runs(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(line("alice", "t1") + "\n")
    loaded = Tokens.load(str(path))
    service = tokens.TokenReloadService(loaded, reactor)
    before = signal.getsignal(signal.SIGHUP)
    service.startService()
    try:
        path.write_text(line("bob", "t2") + "\n")
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(200):
            if loaded.operator(b"t2") == "bob":
                break
            await deferLater(reactor, 0.01, lambda: None)
        assert loaded.operator(b"t2") == "bob"
    finally:
        service.stopService()
    assert signal.getsignal(signal.SIGHUP) == before
