"""The certificate authority: certmaster's wait_for_cert and certmaster-ca's verbs."""

from __future__ import annotations

import json
import shutil
import socket
import stat
import subprocess
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from func_amqp.cli.admin import main
from func_amqp.config import Paths
from func_amqp.errors import ConfigError
from func_amqp.security import ca as ca_module
from func_amqp.security.ca import (
    CA_CN_SUFFIX,
    CaConfig,
    CertificateAuthority,
    RequestRejected,
    canonical_subject_hash,
    subject_hash,
)
from func_amqp.security.keys import PkiError, generate_key, signing_hash

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="needs the openssl program")


def make_csr(cn: str, key: object | None = None, attributes: list[x509.NameAttribute] | None = None) -> bytes:
    key = key or generate_key()
    subject = x509.Name(attributes or [x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, signing_hash(key))  # type: ignore[arg-type]
    return csr.public_bytes(serialization.Encoding.PEM)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def openssl_hash(cert: x509.Certificate) -> str:
    assert OPENSSL
    done = subprocess.run(
        [OPENSSL, "x509", "-noout", "-hash"], input=cert.public_bytes(serialization.Encoding.PEM), capture_output=True, check=True
    )
    return done.stdout.decode().strip()


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    authority = CertificateAuthority(tmp_path / "ca")
    authority.init(cn="test-CA-KEY")
    return authority


def sign_now(ca: CertificateAuthority, cn: str, key: object | None = None) -> x509.Certificate:
    assert not ca.submit(make_csr(cn, key)).signed
    assert ca.sign([cn]) == [cn]
    cert = ca.certificate(cn)
    assert cert is not None
    return cert


# --- the CA ---------------------------------------------------------------------------


def test_init_creates_the_ca(ca: CertificateAuthority) -> None:
    assert ca.exists()
    assert mode(ca.key_path) == 0o600
    assert mode(ca.directory) == 0o700
    cert = ca.ca_certificate()
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "test-CA-KEY"
    assert cert.issuer == cert.subject
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert timedelta(days=3649) < lifetime < timedelta(days=3652)
    cert.verify_directly_issued_by(cert)


def test_init_is_idempotent(ca: CertificateAuthority) -> None:
    before = (ca.key_path.read_bytes(), ca.cert_path.read_bytes())
    ca.init(cn="another-name")
    assert (ca.key_path.read_bytes(), ca.cert_path.read_bytes()) == before


def test_init_default_name_is_certmasters(tmp_path: Path) -> None:
    cert = CertificateAuthority(tmp_path / "ca").init()
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == f"{socket.gethostname().lower()}{CA_CN_SUFFIX}"[:64] or cn.endswith(CA_CN_SUFFIX)


def test_init_finishes_an_interrupted_init(ca: CertificateAuthority) -> None:
    key = ca.key_path.read_bytes()
    ca.cert_path.unlink()
    ca.init()
    assert ca.key_path.read_bytes() == key
    ca.ca_certificate().verify_directly_issued_by(ca.ca_certificate())


def test_init_refuses_a_certificate_without_its_key(ca: CertificateAuthority) -> None:
    ca.key_path.unlink()
    with pytest.raises(PkiError, match="missing"):
        ca.init()


def test_ed25519_ca(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "ca", key_type="ed25519")
    ca_cert = ca.init(cn="ed-CA-KEY")
    assert ca_cert.signature_hash_algorithm is None
    cert = sign_now(ca, "host1")
    cert.verify_directly_issued_by(ca_cert)
    ca.revoke(["host1"])
    assert ca.crl().is_signature_valid(ca_cert.public_key())  # type: ignore[arg-type]


def test_operations_need_a_ca(tmp_path: Path) -> None:
    empty = CertificateAuthority(tmp_path / "none")
    assert not empty.exists()
    assert empty.list_pending() == []
    assert empty.list_signed() == []
    with pytest.raises(PkiError, match="--init"):
        empty.submit(make_csr("host1"))


# --- submit (wait_for_cert) -----------------------------------------------------------


def test_submit_leaves_a_pending_request(ca: CertificateAuthority) -> None:
    key = generate_key()
    result = ca.submit(make_csr("host1", key))
    assert not result.signed and result.certificate is None
    assert "--sign host1" in result.reason
    assert ca.list_pending() == ["host1"]
    assert not ca.submit(make_csr("host1", key)).signed  # asking again: still waiting
    assert ca.list_pending() == ["host1"]


def test_submit_refuses_a_second_key_while_pending(ca: CertificateAuthority) -> None:
    ca.submit(make_csr("host1"))
    pending = ca.csr_path("host1").read_bytes()
    result = ca.submit(make_csr("host1"))
    assert not result.signed and "different key" in result.reason
    assert ca.csr_path("host1").read_bytes() == pending


def test_submit_autosigns(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "ca", autosign=True)
    ca_cert = ca.init(cn="test-CA-KEY")
    result = ca.submit(make_csr("host1"))
    assert result.signed and result.certificate and result.ca_certificate
    assert x509.load_pem_x509_certificate(result.ca_certificate) == ca_cert
    x509.load_pem_x509_certificate(result.certificate).verify_directly_issued_by(ca_cert)
    assert ca.list_pending() == []
    assert ca.list_signed() == ["host1"]


def test_submit_returns_the_signed_certificate(ca: CertificateAuthority) -> None:
    key = generate_key()
    cert = sign_now(ca, "host1", key)
    result = ca.submit(make_csr("host1", key))
    assert result.signed
    assert result.certificate == cert.public_bytes(serialization.Encoding.PEM)
    assert result.ca_certificate == ca.ca_certificate_pem()


def test_submit_with_another_key_than_the_certificate(ca: CertificateAuthority, caplog: pytest.LogCaptureFixture) -> None:
    sign_now(ca, "host1")
    result = ca.submit(make_csr("host1"))
    assert not result.signed and result.certificate is None
    assert "--clean host1" in result.reason
    assert "--clean host1" in caplog.text
    assert ca.list_pending() == []


def test_an_expired_certificate_may_be_renewed(ca: CertificateAuthority) -> None:
    key = generate_key()
    old = sign_now(ca, "host1", key)
    ca_key = serialization.load_pem_private_key(ca.key_path.read_bytes(), password=None)
    past = datetime.now(timezone.utc) - timedelta(days=1000)
    expired = (
        x509.CertificateBuilder(extensions=list(old.extensions))
        .subject_name(old.subject)
        .issuer_name(old.issuer)
        .public_key(old.public_key())  # type: ignore[arg-type]
        .serial_number(old.serial_number)
        .not_valid_before(past)
        .not_valid_after(past + timedelta(days=1))
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    ca.signed_path("host1").write_bytes(expired.public_bytes(serialization.Encoding.PEM))
    assert not ca.submit(make_csr("host1", key)).signed
    assert ca.list_pending() == ["host1"]
    ca.sign(["host1"])
    renewed = ca.certificate("host1")
    assert renewed is not None and renewed.not_valid_after_utc > datetime.now(timezone.utc)


def test_cn_is_lower_cased(ca: CertificateAuthority) -> None:
    ca.submit(make_csr("Host1.Example.COM"))
    assert ca.list_pending() == ["host1.example.com"]
    ca.sign(["HOST1*"])
    cert = ca.certificate("host1.example.com")
    assert cert is not None
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "host1.example.com"


@pytest.mark.parametrize("cn", ["../x", "a b", "a/b", "a\\b", "a..b", "-x", "x_"])
def test_bad_names_refused(ca: CertificateAuthority, cn: str) -> None:
    with pytest.raises(RequestRejected, match="not a valid host name"):
        ca.submit(make_csr(cn))
    assert ca.list_pending() == []


def test_request_without_a_cn_refused(ca: CertificateAuthority) -> None:
    csr = make_csr("", attributes=[x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x")])
    with pytest.raises(RequestRejected, match="exactly one CN"):
        ca.submit(csr)


@pytest.mark.parametrize("bits", [1024, 2048])
def test_weak_rsa_keys_refused(ca: CertificateAuthority, bits: int) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    with pytest.raises(RequestRejected, match="too weak"):
        ca.submit(make_csr("host1", key))


def test_weak_curve_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(RequestRejected, match="curve"):
        ca.submit(make_csr("host1", ec.generate_private_key(ec.SECP256K1())))


def test_strong_keys_accepted(ca: CertificateAuthority) -> None:
    assert ca.submit(make_csr("p384", ec.generate_private_key(ec.SECP384R1()))).reason
    assert ca.submit(make_csr("ed", generate_key("ed25519"))).reason
    assert ca.sign(["*"]) == ["ed", "p384"]


@pytest.mark.parametrize(
    ("key", "agreement", "encipherment"),
    [
        (lambda: ec.generate_private_key(ec.SECP256R1()), True, False),
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=3072), False, True),
        (lambda: generate_key("ed25519"), False, False),
    ],
    ids=["ec", "rsa", "ed25519"],
)
def test_leaf_key_usage_follows_the_key_type(ca: CertificateAuthority, key, agreement: bool, encipherment: bool) -> None:
    """EC leaves may agree keys (the pair MACs); nothing else gains a usage it cannot use."""
    cert = sign_now(ca, "host1", key())
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert usage.key_agreement is agreement
    assert usage.key_encipherment is encipherment
    assert not usage.key_cert_sign


def test_forged_request_refused(ca: CertificateAuthority) -> None:
    pem = make_csr("host1")
    der = x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER)
    tampered = der.replace(b"host1", b"host2")
    forged = x509.load_der_x509_csr(tampered).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(RequestRejected, match="signature"):
        ca.submit(forged)


def test_garbage_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(RequestRejected, match="not a PEM"):
        ca.submit(b"-----BEGIN CERTIFICATE REQUEST-----\nnope\n-----END CERTIFICATE REQUEST-----\n")


# --- sign, list, clean ----------------------------------------------------------------


def test_sign_by_glob(ca: CertificateAuthority) -> None:
    for cn in ("web1", "web2", "db1"):
        ca.submit(make_csr(cn))
    assert ca.list_pending() == ["db1", "web1", "web2"]
    assert ca.sign(["web*"]) == ["web1", "web2"]
    assert ca.list_pending() == ["db1"]
    assert ca.list_signed() == ["web1", "web2"]
    assert ca.list_signed(["*2"]) == ["web2"]
    assert ca.sign(["nomatch*"]) == []


def test_signed_certificate_profile(ca: CertificateAuthority) -> None:
    cert = sign_now(ca, "host1")
    ca_cert = ca.ca_certificate()
    cert.verify_directly_issued_by(ca_cert)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    ext = cert.extensions
    constraints = ext.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    usage = ext.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_encipherment and not usage.key_cert_sign
    assert set(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.CLIENT_AUTH,
        ExtendedKeyUsageOID.SERVER_AUTH,
    }
    assert ext.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName) == ["host1"]
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    ext.get_extension_for_class(x509.SubjectKeyIdentifier)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert timedelta(days=825) <= lifetime <= timedelta(days=825, minutes=10)
    assert cert.issuer == ca_cert.subject


def test_serials_come_from_the_serial_file(ca: CertificateAuthority) -> None:
    first = sign_now(ca, "host1").serial_number
    assert int(ca.serial_path.read_text(), 16) == first + 1
    assert sign_now(ca, "host2").serial_number == first + 1


def test_concurrent_signing_gives_unique_serials(ca: CertificateAuthority) -> None:
    csrs = {f"host{i}": make_csr(f"host{i}") for i in range(12)}
    results: dict[str, bytes] = {}
    errors: list[BaseException] = []

    def enrol(cn: str) -> None:
        try:
            result = CertificateAuthority(ca.directory, autosign=True).submit(csrs[cn])
            assert result.certificate
            results[cn] = result.certificate
        except Exception as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=enrol, args=(cn,)) for cn in csrs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    serials = {x509.load_pem_x509_certificate(pem).serial_number for pem in results.values()}
    assert len(serials) == len(csrs)
    assert ca.list_signed() == sorted(csrs)


def test_clean_removes_requests_and_certificates(ca: CertificateAuthority) -> None:
    sign_now(ca, "host1")
    ca.submit(make_csr("host2"))
    ca.submit(make_csr("other"))
    assert ca.clean(["host*"]) == ["host1", "host2"]
    assert ca.list_signed() == []
    assert ca.list_pending() == ["other"]
    assert not ca.signed_path("host1").exists()
    result = ca.submit(make_csr("host1"))  # a new key is welcome after clean
    assert not result.signed and "--sign" in result.reason


@pytest.mark.parametrize("pattern", ["../*", "a/b", "", "..", "x\\y"])
def test_patterns_cannot_name_paths(ca: CertificateAuthority, pattern: str) -> None:
    for verb in (ca.sign, ca.clean, ca.revoke, ca.list_signed):
        with pytest.raises(PkiError, match="not a host name or glob"):
            verb([pattern])


def test_stray_files_are_not_hosts(ca: CertificateAuthority) -> None:
    ca.submit(make_csr("host1"))
    (ca.csr_dir / ".tmp-abc").write_text("x")
    (ca.csr_dir / "UPPER.csr").write_text("x")
    (ca.csr_dir / "notes.txt").write_text("x")
    assert ca.list_pending() == ["host1"]


def test_sign_checks_a_request_put_there_by_hand(ca: CertificateAuthority) -> None:
    ca.csr_dir.joinpath("host1.csr").write_bytes(make_csr("host2"))
    with pytest.raises(RequestRejected, match="asks for 'host2'"):
        ca.sign(["host1"])
    assert ca.list_signed() == []


# --- revocation -----------------------------------------------------------------------


def test_revoke_lists_the_serial_in_a_signed_crl(ca: CertificateAuthority) -> None:
    cert = sign_now(ca, "host1")
    keep = sign_now(ca, "host2")
    assert ca.revoke(["host1"]) == ["host1"]
    crl = ca.crl()
    assert crl.is_signature_valid(ca.ca_certificate().public_key())  # type: ignore[arg-type]
    assert crl.issuer == ca.ca_certificate().subject
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    assert crl.get_revoked_certificate_by_serial_number(keep.serial_number) is None
    assert crl.next_update_utc is not None
    assert timedelta(days=6) < crl.next_update_utc - datetime.now(timezone.utc) <= timedelta(days=7)
    assert ca.list_signed() == ["host2"]
    assert [(r.cn, r.serial) for r in ca.list_revoked()] == [("host1", cert.serial_number)]
    assert ca.is_revoked(cert) and not ca.is_revoked(keep)
    assert x509.load_pem_x509_crl(ca.crl_path.read_bytes()) == crl


def test_revocations_survive_clean_and_more_revocations(ca: CertificateAuthority) -> None:
    first = sign_now(ca, "host1")
    ca.revoke(["host1"])
    ca.clean(["*"])
    second = sign_now(ca, "host2")
    ca.revoke(["host*"])
    crl = ca.crl()
    assert {r.serial_number for r in crl} == {first.serial_number, second.serial_number}
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number == json.loads(ca.revoked_path.read_text())["crl_number"]


def test_a_revoked_key_cannot_enrol_again(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "ca", autosign=True)
    ca.init(cn="test-CA-KEY")
    key = generate_key()
    assert ca.submit(make_csr("host1", key)).signed
    ca.revoke(["host1"])
    result = ca.submit(make_csr("host1", key))
    assert not result.signed and "revoked" in result.reason
    assert ca.submit(make_csr("host1")).signed  # a new key is fine


def test_crl_is_remade_when_missing_or_stale(ca: CertificateAuthority) -> None:
    sign_now(ca, "host1")
    ca.revoke(["host1"])
    ca.crl_path.unlink()
    assert len(list(ca.crl())) == 1
    assert ca.crl_path.exists()
    state = json.loads(ca.revoked_path.read_text())
    state["crl_number"] += 5  # revoked.json moved on; crl.pem did not
    ca.revoked_path.write_text(json.dumps(state))
    number = ca.crl().extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number == state["crl_number"] + 1


def test_damaged_revocation_file_stops_everything(ca: CertificateAuthority) -> None:
    ca.revoked_path.write_text("{")
    with pytest.raises(PkiError, match="damaged"):
        ca.list_revoked()


@needs_openssl
def test_openssl_sees_the_revocation(ca: CertificateAuthority, tmp_path: Path) -> None:
    revoked = sign_now(ca, "host1")
    good = sign_now(ca, "host2")
    ca.revoke(["host1"])
    ca.crl()
    for cert, expected in ((good, 0), (revoked, 2)):
        path = tmp_path / "leaf.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        done = subprocess.run(
            [OPENSSL, "verify", "-CAfile", str(ca.cert_path), "-CRLfile", str(ca.crl_path), "-crl_check", str(path)],  # type: ignore[list-item]
            capture_output=True,
            text=True,
        )
        assert done.returncode == expected, done.stdout + done.stderr
        if expected:
            assert "revoked" in done.stdout + done.stderr


# --- subject hash ---------------------------------------------------------------------


@needs_openssl
def test_subject_hash_matches_openssl(ca: CertificateAuthority) -> None:
    for cert in (ca.ca_certificate(), sign_now(ca, "host1")):
        assert subject_hash(cert) == openssl_hash(cert)
        assert CertificateAuthority.subject_hash(cert) == openssl_hash(cert)
        assert canonical_subject_hash(cert) == openssl_hash(cert)


def self_signed(attributes: list[x509.NameAttribute] | list[x509.RelativeDistinguishedName]) -> x509.Certificate:
    key = generate_key()
    name = x509.Name(attributes)  # type: ignore[arg-type]
    now = datetime.now(timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
    )
    return builder.sign(key, hashes.SHA256())  # type: ignore[arg-type]


TRICKY_SUBJECTS = [
    [x509.NameAttribute(NameOID.COMMON_NAME, "  Mixed   CASE\tName  ")],
    [
        x509.NameAttribute(NameOID.COUNTRY_NAME, "UN"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Certmaster", _type=_ASN1Type.PrintableString),
        x509.NameAttribute(NameOID.COMMON_NAME, "Host.Example.COM", _type=_ASN1Type.IA5String),
        x509.NameAttribute(NameOID.EMAIL_ADDRESS, "Root@Host"),
    ],
    [x509.NameAttribute(NameOID.COMMON_NAME, "Ünïcödé Ärger", _type=_ASN1Type.BMPString)],
    [x509.NameAttribute(NameOID.COMMON_NAME, "Wide ÄB", _type=_ASN1Type.UniversalString)],
    [x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "X" * 200)],  # a long length form
    [
        x509.RelativeDistinguishedName(
            [x509.NameAttribute(NameOID.COMMON_NAME, "Zed"), x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Alpha")]
        )
    ],
    [],
]


@needs_openssl
@pytest.mark.parametrize("attributes", TRICKY_SUBJECTS, ids=range(len(TRICKY_SUBJECTS)))
def test_canonical_subject_hash_matches_openssl(attributes: list[x509.NameAttribute]) -> None:
    cert = self_signed(attributes)
    assert canonical_subject_hash(cert) == openssl_hash(cert)


def test_subject_hash_works_without_openssl(ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch) -> None:
    cert = sign_now(ca, "nohash")
    monkeypatch.setattr(ca_module.shutil, "which", lambda name: None)
    ca_module._subject_hash_of_der.cache_clear()
    try:
        assert subject_hash(cert) == canonical_subject_hash(cert)
    finally:
        ca_module._subject_hash_of_der.cache_clear()


def test_cert_hash_names(ca: CertificateAuthority) -> None:
    one = sign_now(ca, "host1")
    sign_now(ca, "host2")
    assert ca.cert_hash_names(["host1"]) == [f"host1-{subject_hash(one)}"]
    assert [n.rsplit("-", 1)[0] for n in ca.cert_hash_names()] == ["host1", "host2"]


# --- configuration --------------------------------------------------------------------


def test_config_defaults_and_file(tmp_path: Path) -> None:
    paths = Paths(config_dir=tmp_path / "conf", state_dir=tmp_path / "state")
    assert CaConfig.for_paths(paths) == CaConfig(autosign=False, key_type="ec")
    paths.config_dir.mkdir()
    (paths.config_dir / "certmaster.conf").write_text("[main]\nautosign = yes\nkey_type = ed25519\nlisten_port = 51235\n")
    ca = CertificateAuthority.from_paths(paths)
    assert ca.autosign and ca.key_type == "ed25519"
    assert ca.directory == paths.ca_dir


def test_config_rejects_an_unknown_key_type(tmp_path: Path) -> None:
    conf = tmp_path / "certmaster.conf"
    conf.write_text("[main]\nkey_type = dsa\n")
    with pytest.raises(ConfigError, match="key_type"):
        CaConfig.load(conf)


# --- func-amqp ca ---------------------------------------------------------------------


@pytest.fixture
def cli_ca() -> CertificateAuthority:
    """The CA the command line uses: in the (isolated) state directory."""
    return CertificateAuthority.from_paths(Paths.resolve())


def test_cli_without_a_verb_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ca"]) == 1
    assert "--sign" in capsys.readouterr().out


def test_cli_verbs(cli_ca: CertificateAuthority, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ca", "--init"]) == 0
    assert "created certificate authority" in capsys.readouterr().out
    assert cli_ca.exists() and cli_ca.directory == Paths.resolve().ca_dir
    assert main(["ca", "--init"]) == 0
    assert "exists" in capsys.readouterr().out

    assert main(["ca", "-l"]) == 0
    assert capsys.readouterr().out == "No certificates to sign\n"
    for cn in ("web2", "web1", "db1"):
        cli_ca.submit(make_csr(cn))
    assert main(["ca", "--list"]) == 0
    assert capsys.readouterr().out == "db1\nweb1\nweb2\n"

    assert main(["ca", "-s", "web*"]) == 0
    assert capsys.readouterr().out == "web1 signed\nweb2 signed\n"
    assert main(["ca", "--sign", "nothing*"]) == 1
    assert "no pending request matches: nothing*" in capsys.readouterr().err

    assert main(["ca", "--list-signed"]) == 0
    assert capsys.readouterr().out == "web1\nweb2\n"
    assert main(["ca", "--list-signed", "*1"]) == 0
    assert capsys.readouterr().out == "web1\n"

    assert main(["ca", "--list-cert-hash", "web1"]) == 0
    cert = cli_ca.certificate("web1")
    assert cert is not None
    assert capsys.readouterr().out == f"web1-{subject_hash(cert)}\n"

    assert main(["ca", "--revoke", "web2"]) == 0
    assert capsys.readouterr().out == "web2 revoked\n"
    assert main(["ca", "--list-revoked"]) == 0
    assert capsys.readouterr().out.startswith("web2\t")

    assert main(["ca", "-c", "db1", "web1"]) == 0
    assert capsys.readouterr().out == "db1 cleaned\nweb1 cleaned\n"
    assert cli_ca.list_pending() == [] and cli_ca.list_signed() == []


def test_cli_refuses_paths(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ca", "--init"]) == 0
    capsys.readouterr()
    assert main(["ca", "--sign", "../etc"]) == 1
    assert "not a host name or glob" in capsys.readouterr().err


def test_cli_sign_needs_a_ca(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ca", "-s", "x"]) == 1
    assert "func-amqp ca --init" in capsys.readouterr().err


def test_cli_autosign_from_certmaster_conf(capsys: pytest.CaptureFixture[str]) -> None:
    paths = Paths.resolve()
    (paths.config_dir / "certmaster.conf").write_text("[main]\nautosign = on\n")
    assert main(["ca", "--init"]) == 0
    result = CertificateAuthority.from_paths(paths).submit(make_csr("auto1"))
    assert result.signed
    capsys.readouterr()
    assert main(["ca", "--list-signed"]) == 0
    assert capsys.readouterr().out == "auto1\n"


def test_cli_verbs_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ca", "--init", "--list"]) == 2


def test_no_host_may_bear_the_ca_name(tmp_path: Path) -> None:
    """A certificate named like the CA would share its ACL key ('<CN>-<hash>')."""
    from func_amqp.security.ca import RequestRejected
    from func_amqp.security.keys import HostIdentity

    authority = CertificateAuthority(tmp_path / "ca", autosign=True)
    cert = authority.init(cn="box-CA-KEY")
    assert cert is not None
    impostor = HostIdentity(tmp_path / "pki", "box-ca-key")
    with pytest.raises(RequestRejected, match="authority's own name"):
        authority.submit(impostor.csr_pem())
