"""TLS for the server, and both credentials over it: bearer tokens and client
certificates (mutual TLS), with certificates generated here."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.api.accrual.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    contracts_pb2,
    contracts_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)
from services.auth.credentials import allow_certificate
from services.config import TlsFiles
from tests.e2e.conftest import RunningServer, bearer, serving
from tests.e2e.conftest import test_settings as default_settings
from tests.e2e.helpers import head_seq

Key = ec.EllipticCurvePrivateKey


@dataclasses.dataclass(frozen=True)
class Pem:
    cert: bytes
    key: bytes


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(cert: x509.Certificate, key: Key) -> Pem:
    return Pem(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def _certificate(
    common_name: str, issuer: tuple[x509.Certificate, Key] | None, *, server: bool = False
) -> tuple[x509.Certificate, Key]:
    """A certificate signed by ``issuer`` (None: a self-signed CA)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    issuer_name, signer = (issuer[0].subject, issuer[1]) if issuer else (_name(common_name), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(IPv4Address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signer, hashes.SHA256()), key


@dataclasses.dataclass(frozen=True)
class Pki:
    ca: Pem
    server: Pem
    client: Pem  # common name billing-bot, issued by the trusted CA
    stranger: Pem  # a name no one allowed in, same CA
    rogue: Pem  # billing-bot again, but from a CA the server does not trust


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca = _certificate("Accrual test CA", None)
    rogue_ca = _certificate("Rogue CA", None)
    return Pki(
        ca=_pem(*ca),
        server=_pem(*_certificate("localhost", ca, server=True)),
        client=_pem(*_certificate("billing-bot", ca)),
        stranger=_pem(*_certificate("stranger", ca)),
        rogue=_pem(*_certificate("billing-bot", rogue_ca)),
    )


def tls_serving(
    database_url: str, pki: Pki, folder: Path, *, mutual: bool
) -> Iterator[RunningServer]:
    files = {"ca.pem": pki.ca.cert, "server.pem": pki.server.cert, "server.key": pki.server.key}
    for name, content in files.items():
        (folder / name).write_bytes(content)
    client_ca = folder / "ca.pem" if mutual else None
    tls = TlsFiles(folder / "server.pem", folder / "server.key", client_ca)
    yield from serving(database_url, settings=dataclasses.replace(default_settings(), tls=tls))


@pytest.fixture
def tls_server(database_url: str, pki: Pki, tmp_path: Path) -> Iterator[RunningServer]:
    """TLS for the server; callers bring a bearer token."""
    yield from tls_serving(database_url, pki, tmp_path, mutual=False)


@pytest.fixture
def mtls_server(database_url: str, pki: Pki, tmp_path: Path) -> Iterator[RunningServer]:
    """Mutual TLS: every client shows a certificate from the test CA."""
    yield from tls_serving(database_url, pki, tmp_path, mutual=True)


def secure(server: RunningServer, pki: Pki, client: Pem | None = None) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.cert,
        private_key=client.key if client else None,
        certificate_chain=client.cert if client else None,
    )
    return grpc.secure_channel(server.address, credentials)


def create_customer(
    channel: grpc.Channel, customer_id: str, metadata: list[tuple[str, str]] | None = None
) -> contracts_pb2.Customer:
    reply: contracts_pb2.Customer = contracts_pb2_grpc.ContractServiceStub(channel).CreateCustomer(
        contracts_pb2.CreateCustomerRequest(
            customer=contracts_pb2.Customer(customer_id=customer_id, name=customer_id)
        ),
        metadata=metadata or [],
        timeout=10,
    )
    return reply


def code_of(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    failed: Any = raised.value
    code: grpc.StatusCode = failed.code()
    return code


def test_bearer_tokens_work_over_tls_and_plaintext_is_refused(
    tls_server: RunningServer, pki: Pki
) -> None:
    with secure(tls_server, pki) as channel:
        reply = create_customer(channel, "over-tls", bearer(tls_server.admin_token))
        assert reply.customer_id == "over-tls"
        assert (
            code_of(lambda: create_customer(channel, "no-token")) == grpc.StatusCode.UNAUTHENTICATED
        )
    with grpc.insecure_channel(tls_server.address) as plain:
        refused = code_of(lambda: create_customer(plain, "plain", bearer(tls_server.admin_token)))
        assert refused == grpc.StatusCode.UNAVAILABLE


def test_client_certificates_name_the_principal(mtls_server: RunningServer, pki: Pki) -> None:
    tls_server = mtls_server
    with psycopg.connect(tls_server.database_url) as conn:
        allow_certificate(conn, "billing-bot", ["billing-operator"])

    with secure(tls_server, pki, pki.client) as channel:
        assert create_customer(channel, "by-cert").customer_id == "by-cert"
        # Its role, not more: recording usage is an ingest role's.
        record = usage_pb2_grpc.UsageServiceStub(channel).RecordUsage
        denied = code_of(lambda: record(usage_pb2.RecordUsageRequest(), timeout=10))
        assert denied == grpc.StatusCode.PERMISSION_DENIED

    # A token still names the principal when sent over a client-certified channel.
    with secure(tls_server, pki, pki.stranger) as channel:
        trail = audit_pb2_grpc.AuditServiceStub(channel).ListAuditEntries(
            audit_pb2.ListAuditEntriesRequest(
                actor="billing-bot", consistency_token=head_seq(tls_server)
            ),
            metadata=bearer(tls_server.admin_token),
        )
    assert [(e.kind, e.subject) for e in trail.entries] == [
        ("CustomerCreated", "by-cert"),
        ("AccessDenied", "/accrual.v1.UsageService/RecordUsage"),
    ]

    with secure(tls_server, pki, pki.stranger) as channel:
        unknown = code_of(lambda: create_customer(channel, "stranger"))
        assert unknown == grpc.StatusCode.UNAUTHENTICATED
    # No certificate, or one from another CA: the handshake itself fails.
    for client in (None, pki.rogue):
        with secure(tls_server, pki, client) as channel:
            token = bearer(tls_server.admin_token)
            failed = code_of(lambda: create_customer(channel, "rogue", token))  # noqa: B023
            assert failed == grpc.StatusCode.UNAVAILABLE
