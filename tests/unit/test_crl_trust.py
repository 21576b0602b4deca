"""Revocation lists from outside: only the CA's, only newer, and never fatal."""

from __future__ import annotations

from pathlib import Path

import pytest

from func_amqp.minion.enrollment import acceptable_crl
from func_amqp.security.ca import CertificateAuthority
from func_amqp.security.identity import TrustSource
from func_amqp.security.keys import HostIdentity


@pytest.fixture
def authority(tmp_path: Path) -> CertificateAuthority:
    ca = CertificateAuthority(tmp_path / "ca", autosign=True)
    ca.init()
    return ca


def _issue(ca: CertificateAuthority, tmp_path: Path, name: str) -> None:
    identity = HostIdentity(tmp_path / "pki", name)
    ca.submit(identity.csr_pem())


def test_newer_crl_from_the_ca_is_accepted(authority: CertificateAuthority, tmp_path: Path) -> None:
    old = authority.crl()
    _issue(authority, tmp_path, "m1")
    authority.revoke(["m1"])
    newer = acceptable_crl(authority.crl_pem(), authority.ca_certificate(), old)
    assert len(list(newer)) == 1


def test_older_crl_is_refused(authority: CertificateAuthority, tmp_path: Path) -> None:
    old_pem = authority.crl_pem()
    _issue(authority, tmp_path, "m1")
    authority.revoke(["m1"])
    with pytest.raises(ValueError, match="older"):
        acceptable_crl(old_pem, authority.ca_certificate(), authority.crl())


def test_crl_of_another_ca_is_refused(authority: CertificateAuthority, tmp_path: Path) -> None:
    other = CertificateAuthority(tmp_path / "other", autosign=True)
    other.init()
    with pytest.raises(ValueError, match="not signed by this minion's CA"):
        acceptable_crl(other.crl_pem(), authority.ca_certificate(), None)


def test_a_damaged_crl_file_does_not_break_trust(authority: CertificateAuthority, tmp_path: Path) -> None:
    crl_file = tmp_path / "crl.pem"
    crl_file.write_bytes(authority.crl_pem())
    source = TrustSource(authority.cert_path, crl_file)
    assert source.store().crl is not None
    crl_file.write_bytes(b"-----BEGIN X509 CRL-----\ngarbage\n-----END X509 CRL-----\n")
    source._checked_at = float("-inf")  # look at the files again now
    assert source.store().crl is not None  # the previous list stays in force
