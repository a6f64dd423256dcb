"""Signed chain digests: the ledger's head, signed with a key kept outside the database.

A database superuser can rewrite events and recompute every hash after them,
and the chain check alone would pass. A digest exported earlier pins the hash
the chain had at a position, signed with a key the database never sees; a
rewritten history no longer reproduces it.

Two algorithms: ``hmac-sha256`` (a shared secret key file) and ``ed25519`` (a
private key signs, its public key is enough to verify).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import asdict, dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ledger.core.canonical import canonical_json, format_instant
from ledger.store.event_store import DEFAULT_PARTITION, PostgresEventStore
from ledger.store.verify import Breach, verify_ledger


class KeyFileError(ValueError):
    """A key file that does not hold a key of the expected algorithm."""


class Algorithm(Enum):
    HMAC_SHA256 = "hmac-sha256"
    ED25519 = "ed25519"


@dataclass(frozen=True)
class ChainDigest:
    """The chain hash at ``seq``, when it was taken, and a signature over both."""

    partition: int
    seq: int
    hash: str
    taken_at: str
    algorithm: str
    key_id: str
    signature: str

    def signed_content(self) -> bytes:
        fields = {"partition": self.partition, "seq": self.seq, "hash": self.hash}
        return canonical_json({**fields, "taken_at": self.taken_at, "algorithm": self.algorithm})

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ChainDigest:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class DigestKey:
    """A signing (and verifying) key read from a file outside the database."""

    algorithm: Algorithm
    material: bytes

    @property
    def key_id(self) -> str:
        """A short fingerprint of the verifying key, so digests say which key signed."""
        return hashlib.sha256(self._verifying_bytes()).hexdigest()[:16]

    def sign(self, content: bytes) -> str:
        if self.algorithm is Algorithm.HMAC_SHA256:
            return hmac.new(self.material, content, hashlib.sha256).hexdigest()
        return self._private().sign(content).hex()

    def verifies(self, content: bytes, signature: str) -> bool:
        if self.algorithm is Algorithm.HMAC_SHA256:
            return hmac.compare_digest(self.sign(content), signature)
        try:
            self._public().verify(bytes.fromhex(signature), content)
        except (InvalidSignature, ValueError):
            return False
        return True

    def _private(self) -> Ed25519PrivateKey:
        key = serialization.load_pem_private_key(self.material, password=None)
        assert isinstance(key, Ed25519PrivateKey), "an ed25519 key file holds an Ed25519 key"
        return key

    def _public(self) -> Ed25519PublicKey:
        if b"PRIVATE KEY" in self.material:
            return self._private().public_key()
        key = serialization.load_pem_public_key(self.material)
        assert isinstance(key, Ed25519PublicKey), "an ed25519 key file holds an Ed25519 key"
        return key

    def _verifying_bytes(self) -> bytes:
        if self.algorithm is Algorithm.HMAC_SHA256:
            return self.material
        return self._public().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )


def generate_key(algorithm: Algorithm) -> bytes:
    """New key material, as written to a key file."""
    if algorithm is Algorithm.HMAC_SHA256:
        return secrets.token_hex(32).encode()
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_key(algorithm: Algorithm, path: Path) -> DigestKey:
    """A key from its file, checked to be of ``algorithm``."""
    material = path.read_bytes().strip()
    try:
        if algorithm is Algorithm.HMAC_SHA256:
            material = bytes.fromhex(material.decode())
        key = DigestKey(algorithm, material)
        key.key_id  # noqa: B018 - parses the key material now, not at first use
    except (ValueError, UnicodeDecodeError, AssertionError) as error:
        message = f"{path} does not hold an {algorithm.value} key (use --algorithm to choose)"
        raise KeyFileError(message) from error
    return key


async def export_digest(store: PostgresEventStore, key: DigestKey, now: datetime) -> ChainDigest:
    """Sign the current head after checking that the chain up to it is sound."""
    report = await verify_ledger(store)
    if report.breach is not None:
        raise ValueError(
            f"refusing to sign a broken chain: seq {report.breach.seq}: {report.breach.reason}"
        )
    unsigned = ChainDigest(
        partition=DEFAULT_PARTITION,
        seq=report.last_seq,
        hash=report.last_hash.hex(),
        taken_at=format_instant(now),
        algorithm=key.algorithm.value,
        key_id=key.key_id,
        signature="",
    )
    return ChainDigest(**{**asdict(unsigned), "signature": key.sign(unsigned.signed_content())})


async def check_digest(
    store: PostgresEventStore, digest: ChainDigest, key: DigestKey
) -> Breach | None:
    """Whether the ledger still reproduces a digest; the breach names the position."""
    if digest.algorithm != key.algorithm.value:
        message = f"the digest was signed with {digest.algorithm}; verify it with such a key"
        raise KeyFileError(message)
    if not key.verifies(digest.signed_content(), digest.signature):
        return Breach(digest.seq, "the digest's signature does not verify with this key")
    report = await verify_ledger(store, up_to_seq=digest.seq)
    if report.breach is not None:
        return report.breach
    if report.last_seq < digest.seq:
        return Breach(report.last_seq + 1, f"the ledger ends before the digest's seq {digest.seq}")
    if report.last_hash.hex() != digest.hash:
        return Breach(
            digest.seq,
            "the chain was rewritten: its hash at this seq differs from the signed digest",
        )
    return None
