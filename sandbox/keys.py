"""Deterministic RSA key pairs for certified-track practices.

`callstream sandbox --list-practices` and `callstream sandbox --port N` run as separate
processes; both must agree on the private key a test signs its client assertion with.
Deriving the primes from the seed makes the key a pure function of (seed, practice), so
nothing has to be written to disk or shared between processes. Sandbox keys only: the
entropy is the seed, which is public.
"""

from __future__ import annotations

import hashlib
import math
import random
from functools import lru_cache

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

PUBLIC_EXPONENT = 65537
_SMALL_PRIMES = [p for p in range(3, 2000) if all(p % d for d in range(2, int(p**0.5) + 1))]
_SMALL_PRIME_PRODUCT = math.prod(_SMALL_PRIMES)


def _probably_prime(candidate: int, rng: random.Random, rounds: int = 24) -> bool:
    """Miller-Rabin; 24 rounds put the error below 2**-48, plenty for a sandbox key."""
    if math.gcd(candidate, _SMALL_PRIME_PRODUCT) != 1:
        return candidate in _SMALL_PRIMES
    d, s = candidate - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for _ in range(rounds):
        x = pow(rng.randrange(2, candidate - 2), d, candidate)
        if x in (1, candidate - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, candidate)
            if x == candidate - 1:
                break
        else:
            return False
    return True


def _prime(rng: random.Random, bits: int) -> int:
    while True:
        candidate = rng.getrandbits(bits) | (3 << (bits - 2)) | 1
        if math.gcd(candidate - 1, PUBLIC_EXPONENT) == 1 and _probably_prime(candidate, rng):
            return candidate


@lru_cache(maxsize=32)
def deterministic_rsa_key(label: str, bits: int = 2048) -> rsa.RSAPrivateKey:
    """An RSA private key that depends only on `label` (e.g. 'seed=7/practice=pain-1003')."""
    rng = random.Random(hashlib.sha256(label.encode()).digest())
    half = bits // 2
    while True:
        p, q = _prime(rng, half), _prime(rng, half)
        if p != q and (p * q).bit_length() == bits:
            break
    p, q = max(p, q), min(p, q)
    d = pow(PUBLIC_EXPONENT, -1, math.lcm(p - 1, q - 1))
    numbers = rsa.RSAPrivateNumbers(
        p=p,
        q=q,
        d=d,
        dmp1=rsa.rsa_crt_dmp1(d, p),
        dmq1=rsa.rsa_crt_dmq1(d, q),
        iqmp=rsa.rsa_crt_iqmp(p, q),
        public_numbers=rsa.RSAPublicNumbers(PUBLIC_EXPONENT, p * q),
    )
    return numbers.private_key()


def private_pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def public_pem(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
