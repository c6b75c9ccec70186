"""Deterministic RSA key pairs for certified-track practices.

`callstream sandbox --list-practices` and `callstream sandbox --port N` run as separate
processes; both must agree on the private key a test signs its client assertion with.
Deriving the primes from the seed makes the key a pure function of (seed, practice), so
nothing has to be written to disk or shared between processes. Sandbox keys only: the
entropy is the seed, which is public.

A key is made when a practice's credentials are first read (`key_pems`), and the primes come from GMP
(gmpy2): the pure-Python Miller-Rabin search took about half a second a key, which the 800 certified
practices of a 2,400-practice sandbox could not afford.
"""

from __future__ import annotations

import hashlib
import math
import random
from functools import cache

import gmpy2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

PUBLIC_EXPONENT = 65537


def _prime(rng: random.Random, bits: int) -> int:
    """The first probable prime (GMP's test) after a seeded random start with the top two bits set."""
    while True:
        candidate = int(gmpy2.next_prime(rng.getrandbits(bits) | (3 << (bits - 2))))
        if candidate.bit_length() == bits and math.gcd(candidate - 1, PUBLIC_EXPONENT) == 1:
            return candidate


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
    return numbers.private_key(unsafe_skip_rsa_key_validation=True)  # built from checked primes above


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


@cache
def key_pems(label: str) -> tuple[str, str]:
    """(private PEM, public PEM) of `deterministic_rsa_key(label)`, made once per process."""
    key = deterministic_rsa_key(label)
    return private_pem(key), public_pem(key)
