"""Loading the operator's key files (chatbox/auth/keys.py): what each key
may check, and every file an unlucky operator can give, refused with a
line naming the file and why, never its content."""

import json

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from chatbox.auth.keys import (
    KeyFileError,
    load_jwks,
    load_keys,
    load_public_key,
    load_secret,
)


def public_pem(private_key) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def jwk(private_key, **extra) -> dict:
    public = private_key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        text = jwt.algorithms.RSAAlgorithm.to_jwk(public)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        text = jwt.algorithms.ECAlgorithm.to_jwk(public)
    else:
        text = jwt.algorithms.OKPAlgorithm.to_jwk(public)
    return {**json.loads(text), **extra}


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def refused(load, path) -> str:
    with pytest.raises(KeyFileError) as caught:
        load(str(path))
    said = str(caught.value)
    assert str(path) in said and "\n" not in said
    return said


# -- the secret --


@pytest.mark.parametrize(
    ("content", "kept"),
    [
        (b"k" * 32, b"k" * 32),
        (b"k" * 32 + b"\n", b"k" * 32),
        (b"k" * 32 + b"\r\n", b"k" * 32),
        (b"k" * 32 + b"\n\n", b"k" * 32 + b"\n"),
        (bytes(range(256)), bytes(range(256))),
    ],
)
def test_a_secret_is_the_files_bytes_less_one_newline(tmp_path, content, kept):
    path = tmp_path / "secret"
    path.write_bytes(content)
    assert load_secret(str(path)) == kept


@pytest.mark.parametrize(
    ("content", "length"),
    [(b"", 0), (b"\n", 0), (b"s" * 31, 31), (b"s" * 31 + b"\n", 31)],
)
def test_a_short_secret_is_refused_without_showing_it(tmp_path, content, length):
    path = tmp_path / "secret"
    path.write_bytes(content)
    said = refused(load_secret, path)
    assert said.startswith(f"--auth-secret {path}: {length} bytes, needs at least 32")
    if length:
        assert "s" * length not in said


def test_a_missing_or_unreadable_secret(tmp_path):
    assert refused(load_secret, tmp_path / "nope").endswith(
        "cannot read it: No such file or directory"
    )
    assert refused(load_secret, tmp_path).endswith("cannot read it: Is a directory")


def test_a_huge_file_is_not_read_whole(tmp_path):
    path = tmp_path / "secret"
    path.write_bytes(b"k" * (1024 * 1024 + 1))
    assert "larger than 1048576 bytes" in refused(load_secret, path)


def test_secret_algorithms_grow_with_its_length(tmp_path):
    path = tmp_path / "secret"
    for size, algorithms in [
        (32, {"HS256"}),
        (47, {"HS256"}),
        (48, {"HS256", "HS384"}),
        (64, {"HS256", "HS384", "HS512"}),
    ]:
        path.write_bytes(b"k" * size)
        assert load_keys(secret=str(path)).algorithms == algorithms


# -- one PEM public key --


def test_each_key_type_checks_its_own_algorithms(tmp_path, rsa_key):
    for private, algorithms in [
        (rsa_key, {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
        (ec.generate_private_key(ec.SECP256R1()), {"ES256"}),
        (ec.generate_private_key(ec.SECP384R1()), {"ES384"}),
        (ec.generate_private_key(ec.SECP521R1()), {"ES512"}),
        (ed25519.Ed25519PrivateKey.generate(), {"EdDSA"}),
        (ed448.Ed448PrivateKey.generate(), {"EdDSA"}),
    ]:
        path = tmp_path / "public.pem"
        path.write_bytes(public_pem(private))
        key = load_public_key(str(path))
        assert key.algorithms == algorithms
        assert (key.source, key.kid) == ("public-key", None)
        assert load_keys(public_key=str(path)).algorithms == algorithms


def test_bad_public_keys_are_refused(tmp_path, rsa_key):
    path = tmp_path / "public.pem"
    private_pem = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(private_pem)
    said = refused(load_public_key, path)
    assert "holds a private key; give chatbox the public key only" in said
    assert "MII" not in said
    path.write_bytes(public_pem(rsa.generate_private_key(65537, 1024)))
    assert "an RSA key of 1024 bits, needs at least 2048" in refused(
        load_public_key, path
    )
    path.write_bytes(public_pem(ec.generate_private_key(ec.SECP256K1())))
    assert "an EC key on curve secp256k1, needs P-256, P-384 or P-521" in refused(
        load_public_key, path
    )
    for junk in (
        b"",
        b"hello",
        b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    ):
        path.write_bytes(junk)
        assert refused(load_public_key, path).endswith("not a PEM public key")


# -- a JWKS --


def write(tmp_path, document) -> str:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(document) if not isinstance(document, str) else document)
    return path


def test_a_jwks_of_several_key_types(tmp_path, rsa_key):
    path = write(
        tmp_path,
        {
            "keys": [
                jwk(rsa_key, kid="r1"),
                jwk(rsa_key, kid="r2", alg="PS384"),
                jwk(ec.generate_private_key(ec.SECP384R1()), kid="e1"),
                jwk(ed25519.Ed25519PrivateKey.generate()),
            ]
        },
    )
    keys = load_jwks(str(path))
    assert [(key.source, key.kid, set(key.algorithms)) for key in keys] == [
        ("jwks:r1", "r1", {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
        ("jwks:r2", "r2", {"PS384"}),
        ("jwks:e1", "e1", {"ES384"}),
        ("jwks:#4", None, {"EdDSA"}),
    ]


@pytest.mark.parametrize(
    ("document", "says"),
    [
        ("{not json", "not JSON"),
        ("\xff", "not JSON"),
        ([], 'needs {"keys": [...]} with at least one key'),
        ({"keys": []}, 'needs {"keys": [...]} with at least one key'),
        ({"keys": {"kty": "RSA"}}, 'needs {"keys": [...]} with at least one key'),
        ({"keys": ["x"]}, "key 1: not a JSON object"),
        (
            {"keys": [{"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQ"}]},
            "key 1: a symmetric (oct) key; an HMAC secret belongs in --auth-secret",
        ),
        ({"keys": [{"kty": "XYZ"}]}, "key 1: kty must be RSA, EC or OKP"),
        (
            {"keys": [{"kty": "RSA", "n": "AQAB"}]},
            "key 1: not a public key chatbox can read",
        ),
        (
            {"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]},
            "key 1: not a public key chatbox can read",
        ),
        (
            {"keys": [{"kty": "OKP", "crv": "X25519", "x": "AA"}]},
            "key 1: not a public key chatbox can read",
        ),
    ],
)
def test_bad_jwks_are_refused(tmp_path, document, says):
    path = write(tmp_path, document)
    said = refused(load_jwks, path)
    assert said.startswith(f"--auth-jwks {path}") and says in said
    assert "c2VjcmV0" not in said


def test_jwks_keys_that_cannot_be_trusted(tmp_path, rsa_key):
    private = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key))
    assert "d" in private
    cases = [
        ([private], "key 1: holds private key parts"),
        ([jwk(rsa_key, kid="a"), jwk(rsa_key, kid="a")], "two keys have the same kid"),
        ([jwk(rsa_key, alg="ES256")], "key 1: alg 'ES256' does not fit a RSA key"),
        ([jwk(rsa_key, alg="HS256")], "key 1: alg 'HS256' does not fit a RSA key"),
        ([jwk(rsa_key, use="enc")], "key 1: use is 'enc', not 'sig'"),
        ([jwk(rsa_key, kid=7)], "key 1: kid must be a non-empty string"),
        ([jwk(rsa_key, kid="")], "key 1: kid must be a non-empty string"),
        ([jwk(rsa_key, kid="a\nb")], "key 1: kid must be printable"),
        (
            [jwk(rsa_key), jwk(rsa.generate_private_key(65537, 1024))],
            "key 2: an RSA key of 1024 bits, needs at least 2048",
        ),
        ([jwk(rsa_key)] * 101, "101 keys, at most 100"),
    ]
    for keys, says in cases:
        path = write(tmp_path, {"keys": keys})
        said = refused(load_jwks, path)
        assert says in said, said
        assert private["d"] not in said


def test_load_keys_takes_all_files_or_none(tmp_path, rsa_key):
    secret = tmp_path / "secret"
    secret.write_bytes(b"k" * 40)
    public = tmp_path / "public.pem"
    public.write_bytes(public_pem(rsa_key))
    jwks = write(
        tmp_path, {"keys": [jwk(ed25519.Ed25519PrivateKey.generate(), kid="e")]}
    )
    keys = load_keys(secret=str(secret), public_key=str(public), jwks=str(jwks))
    assert keys.secret == b"k" * 40
    assert [key.source for key in keys.public] == ["public-key", "jwks:e"]
    assert "HS256" in keys.algorithms and "EdDSA" in keys.algorithms
    assert "none" not in keys.algorithms
    jwks.write_text("{}")
    with pytest.raises(KeyFileError, match="--auth-jwks"):
        load_keys(secret=str(secret), public_key=str(public), jwks=str(jwks))
