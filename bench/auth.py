"""What checking a token costs, per key type: the Verifier's whole
`verify` (size, header, signature, claims, Identity), on this machine.

    python bench/auth.py [--seconds 1.0] [--quick]

A token is checked once per connection (the handshake or an `auth`
request), never per message, so this bounds how fast a crowd can connect
with tokens, not the chat's throughput. Also timed: refusals an attacker
can send for free (a token of 8 KiB + 1, a bad signature, alg none), which
must cost no more than a good token. Prints a Markdown table and, last, one
JSON line with everything (CPU microseconds per verify).
"""

import argparse
import base64
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from chatbox.auth.identity import TokenRefused
from chatbox.auth.verifier import MAX_TOKEN, Verifier

SECRET = b"s" * 32


def _pem(private) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _per_call(function, seconds: float) -> float:
    """CPU microseconds per call (this process's, so a busy machine
    inflates the figures less than wall time would), over at least
    `seconds` of CPU."""
    calls, started = 0, time.process_time()
    while True:
        for _ in range(50):
            function()
        calls += 50
        took = time.process_time() - started
        if took >= seconds:
            return took / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    options = parser.parse_args()
    seconds = 0.02 if options.quick else options.seconds
    now = time.time()
    claims = {
        "sub": "Ms Lan",
        "exp": int(now) + 3600,
        "iat": int(now),
        "rooms": ["class-7a"],
        "roles": ["moderator"],
        "jti": "bench-1",
    }
    keys = {
        "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "PS256": None,
        "ES256": ec.generate_private_key(ec.SECP256R1()),
        "EdDSA": ed25519.Ed25519PrivateKey.generate(),
    }
    keys["PS256"] = keys["RS256"]
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        secret = Path(folder, "secret")
        secret.write_bytes(SECRET)
        cases = [("HS256", Verifier.load(secret=str(secret)), SECRET)]
        for alg, private in keys.items():
            pem = Path(folder, f"{alg}.pem")
            pem.write_bytes(_pem(private))
            cases.append((alg, Verifier.load(public_key=str(pem)), private))
        for alg, verifier, key in cases:
            token = jwt.encode(claims, key, algorithm=alg)
            verifier.verify(token, "class-7a", now)  # it is a good token
            results[alg] = _per_call(
                lambda v=verifier, t=token: v.verify(t, "class-7a", now), seconds
            )
        # A JWKS of two EC keys, the token without a kid: both are tried.
        other = ec.generate_private_key(ec.SECP256R1())
        jwks = Path(folder, "jwks.json")
        jwks.write_text(
            json.dumps(
                {
                    "keys": [
                        json.loads(ec_jwk(other)),
                        json.loads(ec_jwk(keys["ES256"])),
                    ]
                }
            )
        )
        verifier = Verifier.load(jwks=str(jwks))
        token = jwt.encode(claims, keys["ES256"], algorithm="ES256")
        verifier.verify(token, "class-7a", now)
        results["ES256, JWKS of 2, no kid"] = _per_call(
            lambda: verifier.verify(token, "class-7a", now), seconds
        )

        hs = cases[0][1]
        rs = cases[1][1]
        long_token = "a" * (MAX_TOKEN + 1)
        forged = jwt.encode(claims, b"x" * 32, algorithm="HS256")
        bad_rsa = jwt.encode(
            claims,
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
            algorithm="RS256",
        )
        none = (
            base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
            + "."
            + forged.split(".")[1]
            + "."
        )
        for label, verifier, token in [
            ("refused: 8 KiB + 1", hs, long_token),
            ("refused: HS256 bad signature", hs, forged),
            ("refused: RS256 bad signature", rs, bad_rsa),
            ("refused: alg none", hs, none),
        ]:

            def refuse(v=verifier, t=token) -> None:
                try:
                    v.verify(t, "class-7a", now)
                except TokenRefused:
                    return
                raise AssertionError("accepted")

            refuse()
            results[label] = _per_call(refuse, seconds)

    print("| token | CPU µs per verify | verifies per CPU second |")
    print("|---|---:|---:|")
    for label, micros in results.items():
        print(f"| {label} | {micros:,.1f} | {1e6 / micros:,.0f} |")
    print(json.dumps({"us_per_verify": results, "quick": options.quick}))


def ec_jwk(private) -> str:
    return jwt.algorithms.ECAlgorithm.to_jwk(private.public_key())


if __name__ == "__main__":
    main()
