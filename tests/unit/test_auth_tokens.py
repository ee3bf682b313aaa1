"""Checking tokens (chatbox/auth/verifier.py) and minting them
(chatbox/auth/minting.py), with real JWTs: signed by the server's secret,
by a separate "website" RSA, EC or Ed25519 key, by keys of a JWKS, and by
an attacker who knows only what is public."""

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from pytest_twisted import ensureDeferred

from chatbox.auth import verifier as verifier_module
from chatbox.auth.identity import REASONS, Identity, TokenRefused
from chatbox.auth.keys import Keys, load_keys
from chatbox.auth.minting import MintError, mint
from chatbox.auth.verifier import MAX_TOKEN, Verifier

NOW = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC
SECRET = b"s3cret-of-the-chatbox-server-0123456789"  # 39 bytes


def pem(private_key) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwk_of(private_key, **extra) -> dict:
    """The public JWK of a key, as a website publishes it."""
    public = private_key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        data = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public))
    elif isinstance(public, ec.EllipticCurvePublicKey):
        data = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(public))
    else:
        data = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(public))
    return {**data, **extra}


class Website:
    """A school website's keys, and chatbox's files naming its public halves."""

    def __init__(self, tmp) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.ed = ed25519.Ed25519PrivateKey.generate()
        self.other_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.secret = tmp / "auth-secret"
        self.secret.write_bytes(SECRET + b"\n")
        self.rsa_pem = tmp / "rsa.pem"
        self.rsa_pem.write_bytes(pem(self.rsa))
        self.ec_pem = tmp / "ec.pem"
        self.ec_pem.write_bytes(pem(self.ec))
        self.ed_pem = tmp / "ed.pem"
        self.ed_pem.write_bytes(pem(self.ed))
        self.jwks = tmp / "jwks.json"
        self.jwks.write_text(
            json.dumps(
                {
                    "keys": [
                        jwk_of(self.ec, kid="ec-2026", use="sig"),
                        jwk_of(self.rsa, kid="rsa-2026", alg="RS256"),
                    ]
                }
            )
        )

    def verifier(self, *, secret=True, public=None, jwks=False, **options):
        return Verifier.load(
            secret=str(self.secret) if secret else None,
            public_key=str(public) if public else None,
            jwks=str(self.jwks) if jwks else None,
            **options,
        )


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return Website(tmp_path_factory.mktemp("keys"))


def claims(**extra) -> dict:
    return {"sub": "Ms Lan", "exp": NOW + 3600, **extra}


def hs256(payload: dict, secret: bytes = SECRET, **headers) -> str:
    return jwt.encode(payload, secret, algorithm="HS256", headers=headers or None)


def forged(header: dict, payload: dict, key: bytes | None) -> str:
    """A token built by hand, as an attacker does: any header, and an
    HMAC-SHA256 signature with any bytes as the key (or none at all)."""
    signing = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    if key is None:
        return signing + "."
    signature = hmac.new(key, signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{b64(signature)}"


def refused(
    verifier: Verifier, token, room: str = "", now: float = NOW
) -> TokenRefused:
    with pytest.raises(TokenRefused) as caught:
        verifier.verify(token, room, now)
    refusal = caught.value
    assert refusal.reason in REASONS
    if isinstance(token, str) and len(token) > 20:
        assert token not in refusal.error and token not in str(refusal)
    assert str(refusal) == refusal.error
    return refusal


# -- accepted --


def test_a_token_signed_with_the_secret_vouches_for_its_nickname(site):
    identity = site.verifier().verify(
        hs256(claims(roles=["moderator"], jti="t-1")), "", NOW
    )
    assert identity == Identity(
        name="Ms Lan",
        expires=int((NOW + 3600) * 1000),
        rooms=None,
        roles=frozenset({"moderator"}),
        source="secret",
        token_id="t-1",
    )


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"])
def test_the_websites_rsa_key_checks_every_rsa_algorithm(site, alg):
    token = jwt.encode(claims(), site.rsa, algorithm=alg)
    identity = site.verifier(secret=False, public=site.rsa_pem).verify(token, "", NOW)
    assert identity.name == "Ms Lan" and identity.source == "public-key"


def test_the_websites_ec_and_ed25519_keys(site):
    token = jwt.encode(claims(), site.ec, algorithm="ES256")
    assert site.verifier(public=site.ec_pem).verify(token, "", NOW).source == (
        "public-key"
    )
    token = jwt.encode(claims(), site.ed, algorithm="EdDSA")
    assert site.verifier(public=site.ed_pem).verify(token, "", NOW).name == "Ms Lan"


def test_a_jwks_key_is_picked_by_kid_or_tried_without_one(site):
    verifier = site.verifier(secret=False, jwks=True)
    ec_token = jwt.encode(
        claims(), site.ec, algorithm="ES256", headers={"kid": "ec-2026"}
    )
    assert verifier.verify(ec_token, "", NOW).source == "jwks:ec-2026"
    rsa_token = jwt.encode(claims(), site.rsa, algorithm="RS256")
    assert verifier.verify(rsa_token, "", NOW).source == "jwks:rsa-2026"
    unknown = jwt.encode(claims(), site.ec, algorithm="ES256", headers={"kid": "old"})
    refusal = refused(verifier, unknown)
    assert refusal.reason == "TokenBadSignature"
    assert refusal.error == "no key this server trusts has the id 'old'"
    # The kid of one key on a token signed by another: no key verifies it.
    swapped = jwt.encode(
        claims(), site.other_rsa, algorithm="RS256", headers={"kid": "rsa-2026"}
    )
    assert refused(verifier, swapped).reason == "TokenBadSignature"


def test_a_jwks_keys_alg_limits_it(site):
    # rsa-2026 is published with "alg": "RS256": PS256 is not accepted.
    token = jwt.encode(
        claims(), site.rsa, algorithm="PS256", headers={"kid": "rsa-2026"}
    )
    refusal = refused(site.verifier(secret=False, jwks=True), token)
    assert refusal.reason == "TokenAlgorithm"
    assert refusal.error == (
        "this server does not accept tokens signed with 'PS256' "
        "(it accepts ES256, RS256)"
    )


def test_rooms_roles_and_the_default_room(site):
    verifier = site.verifier()
    token = hs256(claims(rooms=["class-7a", "", "Lab"], roles=["moderator", "dj"]))
    identity = verifier.verify(token, "class-7a", NOW)
    assert identity.rooms == frozenset({"class-7a", "", "lab"})
    assert identity.roles == frozenset({"moderator"})  # unknown roles ignored
    assert verifier.verify(token, "", NOW).name == "Ms Lan"
    refusal = refused(verifier, token, room="class-7b")
    assert (refusal.reason, refusal.error) == (
        "TokenWrongRoom",
        "the token is not good in room 'class-7b'",
    )
    only_named = hs256(claims(rooms=["class-7a"]))
    assert refused(verifier, only_named, room="").error == (
        "the token is not good in the default room"
    )


# -- the attacks --


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_is_never_accepted(site, alg):
    for verifier in (site.verifier(), site.verifier(secret=False, public=site.rsa_pem)):
        refusal = refused(verifier, forged({"alg": alg, "typ": "JWT"}, claims(), None))
        assert refusal.reason == "TokenAlgorithm"


def test_an_hs256_token_signed_with_the_public_key_is_refused(site):
    """The HMAC/RSA confusion: the attacker has the website's public key
    (it is public) and uses its PEM bytes as an HMAC secret."""
    public = site.rsa_pem.read_bytes()
    token = forged({"alg": "HS256", "typ": "JWT"}, claims(), public)
    # With no secret configured, HS256 is no algorithm of this server.
    only_public = site.verifier(secret=False, public=site.rsa_pem)
    assert refused(only_public, token).reason == "TokenAlgorithm"
    # With a secret too, HS256 is checked against the secret alone.
    both = site.verifier(public=site.rsa_pem)
    assert refused(both, token).reason == "TokenBadSignature"
    # Nor the JWKS's keys, as JSON.
    jwks = site.verifier(secret=False, jwks=True)
    token = forged({"alg": "HS256"}, claims(), site.jwks.read_bytes())
    assert refused(jwks, token).reason == "TokenAlgorithm"


def test_a_token_of_another_secret_or_key_is_refused(site):
    refusal = refused(site.verifier(), hs256(claims(), b"x" * 40))
    assert (refusal.reason, refusal.error) == (
        "TokenBadSignature",
        "the token is not signed by a key this server trusts",
    )
    other = jwt.encode(claims(), site.other_rsa, algorithm="RS256")
    verifier = site.verifier(public=site.rsa_pem)
    assert refused(verifier, other).reason == "TokenBadSignature"


def test_a_token_changed_after_signing_is_refused(site):
    token = hs256(claims())
    header, _, signature = token.split(".")
    changed = b64(json.dumps(claims(sub="Mr Nam")).encode())
    assert refused(site.verifier(), f"{header}.{changed}.{signature}").reason == (
        "TokenBadSignature"
    )


def test_an_algorithm_of_another_key_type_is_refused(site):
    token = jwt.encode(claims(), site.ec, algorithm="ES256")
    refusal = refused(site.verifier(public=site.rsa_pem), token)
    assert refusal.reason == "TokenAlgorithm"
    assert "ES256" in refusal.error and "RS256" in refusal.error


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_hs512_needs_a_secret_as_long_as_its_hash(site):
    """RFC 7518 3.2: a 39-byte secret is below HS384's and HS512's hash."""
    token = jwt.encode(claims(), SECRET, algorithm="HS512")
    assert refused(site.verifier(), token).reason == "TokenAlgorithm"
    assert site.verifier().keys.algorithms == {"HS256"}


# -- time --


@pytest.mark.parametrize(
    ("claim", "offset", "leeway", "reason"),
    [
        ("exp", -61, 60, "TokenExpired"),
        ("exp", -60, 60, "TokenExpired"),
        ("exp", -59, 60, None),
        ("exp", 0, 0, "TokenExpired"),
        ("exp", 1, 0, None),
        ("nbf", 61, 60, "TokenNotYetValid"),
        ("nbf", 60, 60, None),
        ("nbf", 1, 0, "TokenNotYetValid"),
        ("nbf", 0, 0, None),
        ("iat", 61, 60, "TokenNotYetValid"),
        ("iat", 60, 60, None),
        ("iat", 1, 0, "TokenNotYetValid"),
        ("iat", -86400, 0, None),
    ],
)
def test_exp_nbf_and_iat_with_leeway(site, claim, offset, leeway, reason):
    token = hs256(claims(**{claim: NOW + offset}))
    verifier = site.verifier(leeway=leeway)
    if reason is None:
        assert verifier.verify(token, "", NOW).name == "Ms Lan"
    else:
        assert refused(verifier, token).reason == reason


def test_time_refusals_say_when(site):
    verifier = site.verifier()
    expired = hs256(claims(exp=NOW - 3600))
    assert refused(verifier, expired).error == (
        "the token expired at 2027-01-15 07:00:00 UTC"
    )
    early = hs256(claims(nbf=NOW + 3600))
    assert refused(verifier, early).error == (
        "the token is not valid before 2027-01-15 09:00:00 UTC"
    )
    ahead = hs256(claims(iat=NOW + 3600))
    assert refused(verifier, ahead).error == (
        "the token says it was issued at 2027-01-15 09:00:00 UTC, which is "
        "still to come (is a clock wrong?)"
    )


def test_the_clock_is_the_callers(site):
    token = hs256(claims())
    verifier = site.verifier()
    assert verifier.verify(token, "", NOW).name == "Ms Lan"
    assert refused(verifier, token, now=NOW + 7200).reason == "TokenExpired"


# -- issuer and audience --


def test_issuer_and_audience_when_configured(site):
    verifier = site.verifier(issuer="https://school.example", audience="chatbox")
    good = hs256(claims(iss="https://school.example", aud=["wiki", "chatbox"]))
    assert verifier.verify(good, "", NOW).name == "Ms Lan"
    assert verifier.verify(
        hs256(claims(iss="https://school.example", aud="chatbox")), "", NOW
    )
    for bad in (
        claims(iss="https://evil.example", aud="chatbox"),
        claims(aud="chatbox"),
    ):
        refusal = refused(verifier, hs256(bad))
        assert refusal.reason == "TokenWrongIssuer"
        assert refusal.error == (
            "the token was not issued by 'https://school.example', the issuer "
            "this server expects"
        )
    for bad in (
        claims(iss="https://school.example", aud="wiki"),
        claims(iss="https://school.example", aud=["wiki"]),
        claims(iss="https://school.example"),
    ):
        assert refused(verifier, hs256(bad)).reason == "TokenWrongAudience"
    # Not configured: not checked.
    unchecked = site.verifier()
    assert unchecked.verify(hs256(claims(iss="anyone", aud="x")), "", NOW)


# -- malformed --


def test_a_token_longer_than_8_kib_is_refused_before_parsing(site, monkeypatch):
    verifier = site.verifier()

    def padded(size: int) -> str:
        base = len(hs256(claims(sub="Ann", pad="")))
        start = max(0, (size - base) * 3 // 4 - 8)
        for pad in range(start, size):
            for name in ("Ann", "Anna"):
                token = hs256(claims(sub=name, pad="x" * pad))
                if len(token) == size:
                    return token
        raise AssertionError(size)

    assert verifier.verify(padded(MAX_TOKEN), "", NOW).name in ("Ann", "Anna")
    too_long = padded(MAX_TOKEN + 1)

    def parsed(*args, **kwargs):
        raise AssertionError("parsed")

    monkeypatch.setattr(verifier_module, "_header", parsed)
    monkeypatch.setattr(jwt, "decode_complete", parsed)
    refusal = refused(verifier, too_long)
    assert (refusal.reason, refusal.error) == (
        "TokenMalformed",
        "the token is longer than 8192 characters",
    )


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not a token",
        "a.b.c",
        "a.b",
        "....",
        "é.é.é",
        "e30.e30.",  # {} as a header: no alg
        "W10.e30.",  # [] as a header
        "eyJhbGciOiJIUzI1NiJ9!.e30.e30",  # junk after a good header
        None,
        42,
        ["x"],
    ],
)
def test_what_is_not_a_jwt(site, token):
    assert refused(site.verifier(), token).reason == "TokenMalformed"


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        ({"exp": NOW + 60}, "the token names no nickname (sub)"),
        (claims(sub=7), "the token names no nickname (sub)"),
        (claims(sub="a\x00b"), "the token's nickname (sub) is not a valid nickname"),
        (
            claims(sub="\x1b[31mred"),
            "the token's nickname (sub) is not a valid nickname",
        ),
        (claims(sub="😀" * 101), "the token's nickname (sub) is not a valid nickname"),
        (claims(sub=""), "the token's nickname (sub) is not a valid nickname"),
        ({"sub": "Ms Lan"}, "the token has no expiry (exp)"),
        (claims(exp="tomorrow"), "the token's exp is not a number of seconds"),
        (claims(exp=True), "the token's exp is not a number of seconds"),
        (claims(nbf=[1]), "the token's nbf is not a number of seconds"),
        (claims(iat=1e300), "the token's iat is out of range"),
        (
            claims(rooms="class-7a"),
            "the token's rooms must be a list of 1 to 100 names",
        ),
        (claims(rooms=[]), "the token's rooms must be a list of 1 to 100 names"),
        (
            claims(rooms=[f"r{n}" for n in range(101)]),
            "the token's rooms must be a list of 1 to 100 names",
        ),
        (claims(rooms=[7]), "the token's rooms must hold strings only"),
        (
            claims(rooms=["class-7a", "bad room!"]),
            "the token's rooms hold 'bad room!', which is not a room name",
        ),
        (
            claims(rooms=["metrics"]),
            "the token's rooms hold 'metrics', which is not a room name",
        ),
        (
            claims(roles="moderator"),
            "the token's roles must be a list of 1 to 100 names",
        ),
        (claims(jti=5), "the token's jti must be printable, 1 to 200 characters"),
        (claims(jti="a\nb"), "the token's jti must be printable, 1 to 200 characters"),
    ],
)
def test_bad_claims_are_malformed(site, payload, says):
    refusal = refused(site.verifier(), hs256(payload))
    assert (refusal.reason, refusal.error) == ("TokenMalformed", says)


def test_a_sub_of_100_emoji_is_a_valid_nickname(site):
    assert site.verifier().verify(hs256(claims(sub="😀" * 100)), "", NOW).name == (
        "😀" * 100
    )


def test_a_payload_that_is_not_an_object_is_malformed(site):
    token = forged({"alg": "HS256"}, ["sub", "Ms Lan"], SECRET)
    assert refused(site.verifier(), token).reason == "TokenMalformed"


def test_claims_of_an_unsigned_token_are_never_read(site):
    """A forged token with bad claims is refused for its signature, not
    its claims: nothing it says is believed, or echoed."""
    token = forged({"alg": "HS256"}, claims(sub="\x00", rooms="x"), b"k" * 32)
    assert refused(site.verifier(), token).reason == "TokenBadSignature"


# -- minting --


def test_a_minted_token_verifies(site):
    token, identity = mint(SECRET, "Ms Lan", ["moderator"], ["class-7a", "/"], 180, NOW)
    assert site.verifier().verify(token, "class-7a", NOW) == identity
    assert identity.rooms == frozenset({"class-7a", ""})
    assert identity.expires == int((NOW + 180 * 86400) * 1000)
    payload = jwt.decode(
        token,
        SECRET,
        algorithms=["HS256"],
        options={"verify_exp": False, "verify_iat": False},
    )
    assert payload == {
        "sub": "Ms Lan",
        "iat": int(NOW),
        "exp": int(NOW) + 180 * 86400,
        "jti": identity.token_id,
        "roles": ["moderator"],
        "rooms": ["class-7a", ""],
    }
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    again, other = mint(SECRET, "Ms Lan", now=NOW)
    assert other.token_id != identity.token_id and again != token
    assert other.rooms is None and other.roles == frozenset()
    assert "rooms" not in jwt.decode(
        again,
        SECRET,
        algorithms=["HS256"],
        options={"verify_exp": False, "verify_iat": False},
    )
    assert site.verifier().verify(again, "anything", NOW + 29 * 86400) == other
    assert (
        refused(site.verifier(), again, now=NOW + 31 * 86400).reason == "TokenExpired"
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("a\x00",), "name: not a valid nickname"),
        (("Ms Lan", ["admin"]), "roles: 'admin' is not a role chatbox knows"),
        (("Ms Lan", None, ["bad room!"]), "rooms: 'bad room!'"),
        (("Ms Lan", None, []), "rooms: 1 to 100 of them"),
        (("Ms Lan", None, None, 0), "days: from 1 to 366, not 0"),
        (("Ms Lan", None, None, 367), "days: from 1 to 366, not 367"),
        (("Ms Lan", None, None, "30"), "days: a whole number from 1 to 366"),
    ],
)
def test_what_cannot_be_minted(args, says):
    with pytest.raises(MintError, match=None) as caught:
        mint(SECRET, *args, now=NOW)
    assert says in str(caught.value)


# -- reloading --


@ensureDeferred
async def test_reload_takes_new_keys_and_keeps_the_old_on_a_bad_file(tmp_path):
    path = tmp_path / "secret"
    path.write_bytes(SECRET)
    verifier = Verifier.load(secret=str(path))
    old = hs256(claims(exp=time.time() + 3600))
    assert verifier.verify(old, "").name == "Ms Lan"
    new_secret = b"n" * 64
    path.write_bytes(new_secret)
    assert await verifier.reload() is True
    assert refused(verifier, old, now=time.time()).reason == "TokenBadSignature"
    new = hs256(claims(exp=time.time() + 3600), new_secret)
    assert verifier.verify(new, "").name == "Ms Lan"
    assert verifier.keys.algorithms == {"HS256", "HS384", "HS512"}
    for bad in (b"short", None):
        if bad is None:
            path.unlink()
        else:
            path.write_bytes(bad)
        assert await verifier.reload() is False
        assert verifier.verify(new, "").name == "Ms Lan"
    assert load_keys(secret=None).algorithms == frozenset()


@ensureDeferred
async def test_a_verifier_built_from_keys_has_no_files_to_reload():
    verifier = Verifier(Keys(secret=SECRET))
    assert await verifier.reload() is False
    assert verifier.verify(hs256(claims()), "", NOW).name == "Ms Lan"
