"""A host's key, request and certificate (certmaster's create_minion_keys)."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from func_amqp.errors import FuncAmqpError
from func_amqp.security.ca import CertificateAuthority
from func_amqp.security.keys import (
    CA_CERT_FILE,
    ORGANIZATION,
    CertificateMismatch,
    HostIdentity,
    PkiError,
    generate_key,
    host_name,
    key_pem,
    same_public_key,
    write_atomic,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    authority = CertificateAuthority(tmp_path / "ca", autosign=True)
    authority.init(cn="test-CA-KEY")
    return authority


@pytest.fixture
def host(tmp_path: Path) -> HostIdentity:
    return HostIdentity(tmp_path / "pki", "Minion1.Example.COM")


def enrol(host: HostIdentity, ca: CertificateAuthority) -> None:
    result = ca.submit(host.csr_pem())
    assert result.signed and result.certificate and result.ca_certificate
    host.store(result.certificate, result.ca_certificate)


# --- names and files ------------------------------------------------------------------


def test_file_names_follow_certmaster(host: HostIdentity, tmp_path: Path) -> None:
    assert host.name == "minion1.example.com"
    assert host.key_path == tmp_path / "pki" / "minion1.example.com.pem"
    assert host.csr_path == tmp_path / "pki" / "minion1.example.com.csr"
    assert host.cert_path == tmp_path / "pki" / "minion1.example.com.cert"
    assert host.ca_path == tmp_path / "pki" / CA_CERT_FILE


@pytest.mark.parametrize("name", ["../x", "a b", "", "a/b", "a..b", "-a", "x" * 65])
def test_bad_host_names_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(PkiError):
        HostIdentity(tmp_path, name)
    with pytest.raises(ValueError):  # a PkiError is a ValueError too
        host_name(name)


def test_pki_error_is_a_func_amqp_error() -> None:
    assert issubclass(CertificateMismatch, PkiError)
    assert issubclass(PkiError, FuncAmqpError)


def test_write_atomic_exclusive_keeps_the_first(tmp_path: Path) -> None:
    target = tmp_path / "f"
    assert write_atomic(target, b"one", 0o600, exclusive=True)
    assert not write_atomic(target, b"two", 0o600, exclusive=True)
    assert target.read_bytes() == b"one"
    assert mode(target) == 0o600
    assert write_atomic(target, b"three")
    assert target.read_bytes() == b"three"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


# --- the key --------------------------------------------------------------------------


def test_ensure_key_creates_a_private_key_once(host: HostIdentity) -> None:
    key = host.ensure_key()
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"
    assert mode(host.key_path) == 0o600
    assert mode(host.pki_dir) == 0o700
    assert same_public_key(host.ensure_key(), key)


def test_ensure_key_fixes_loose_permissions(host: HostIdentity, caplog: pytest.LogCaptureFixture) -> None:
    host.ensure_key()
    host.key_path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        host.ensure_key()
    assert mode(host.key_path) == 0o600
    assert "0644" in caplog.text


def test_ensure_key_refuses_a_weak_key(host: HostIdentity) -> None:
    host.pki_dir.mkdir(mode=0o700)
    weak = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    write_atomic(host.key_path, key_pem(weak), 0o600)
    with pytest.raises(PkiError, match="too weak"):
        host.ensure_key()


def test_unknown_key_type_refused(host: HostIdentity) -> None:
    with pytest.raises(PkiError, match="unknown key type"):
        generate_key("dsa")


# --- the request ----------------------------------------------------------------------


def test_csr_names_the_host_and_is_kept(host: HostIdentity) -> None:
    pem = host.csr_pem()
    csr = x509.load_pem_x509_csr(pem)
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "minion1.example.com"
    assert csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == ORGANIZATION
    assert len(csr.subject) == 2
    assert same_public_key(csr.public_key(), host.ensure_key())
    assert host.csr_path.read_bytes() == pem
    assert host.csr_pem() == pem  # stable while the key is


def test_csr_is_remade_for_a_new_key(host: HostIdentity) -> None:
    first = host.csr_pem()
    host.key_path.unlink()
    second = host.csr_pem()
    assert second != first
    assert same_public_key(x509.load_pem_x509_csr(second).public_key(), host.ensure_key())


# --- the certificate ------------------------------------------------------------------


def test_round_trip(host: HostIdentity, ca: CertificateAuthority) -> None:
    assert not host.is_complete()
    enrol(host, ca)
    assert host.is_complete()
    key, cert, ca_cert = host.load()
    assert same_public_key(cert.public_key(), key)
    assert ca_cert == ca.ca_certificate()
    assert mode(host.cert_path) == 0o644
    assert mode(host.ca_path) == 0o644
    assert mode(host.key_path) == 0o600


def test_ed25519_round_trip(tmp_path: Path, ca: CertificateAuthority) -> None:
    host = HostIdentity(tmp_path / "pki", "edhost")
    assert isinstance(host.ensure_key("ed25519"), ed25519.Ed25519PrivateKey)
    enrol(host, ca)
    assert host.load()[1].subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "edhost"


def test_store_refuses_a_certificate_for_another_key(host: HostIdentity, ca: CertificateAuthority, tmp_path: Path) -> None:
    other = HostIdentity(tmp_path / "other", host.name)
    result = ca.submit(other.csr_pem())
    assert result.certificate and result.ca_certificate
    host.ensure_key()
    with pytest.raises(CertificateMismatch, match="--clean"):
        host.store(result.certificate, result.ca_certificate)
    assert not host.is_complete()


def test_store_refuses_a_certificate_for_another_host(host: HostIdentity, ca: CertificateAuthority, tmp_path: Path) -> None:
    key = host.ensure_key()
    impostor = HostIdentity(tmp_path / "impostor", "impostor")
    impostor.pki_dir.mkdir(mode=0o700)
    write_atomic(impostor.key_path, key_pem(key), 0o600)
    result = ca.submit(impostor.csr_pem())
    assert result.certificate and result.ca_certificate
    with pytest.raises(CertificateMismatch, match="impostor"):
        host.store(result.certificate, result.ca_certificate)


def test_store_refuses_a_certificate_from_another_ca(host: HostIdentity, ca: CertificateAuthority, tmp_path: Path) -> None:
    result = ca.submit(host.csr_pem())
    other = CertificateAuthority(tmp_path / "other-ca")
    other.init(cn="other-CA-KEY")
    assert result.certificate
    with pytest.raises(PkiError, match="not issued by"):
        host.store(result.certificate, other.ca_certificate_pem())


def test_store_refuses_garbage(host: HostIdentity) -> None:
    host.ensure_key()
    with pytest.raises(PkiError, match="not a PEM certificate"):
        host.store(b"junk", b"junk")


def test_load_without_a_certificate_says_so(host: HostIdentity) -> None:
    host.ensure_key()
    with pytest.raises(PkiError, match="no complete identity"):
        host.load()


def test_load_detects_a_replaced_key(host: HostIdentity, ca: CertificateAuthority) -> None:
    enrol(host, ca)
    write_atomic(host.key_path, key_pem(generate_key()), 0o600)
    with pytest.raises(CertificateMismatch, match="--clean"):
        host.load()
