"""Lab PKI: what Flower 1.39 loads must parse, verify and carry the right names."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from fedsim.deploy.certs import (
    make_ca,
    make_node_keypair,
    make_server_cert,
    write_lab_pki,
    write_node_keypair,
)


@pytest.fixture(scope="module")
def ca():
    return make_ca(now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), valid_days=30)


def _verify_signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    # Raises InvalidSignature / ValueError if cert was not issued by issuer.
    cert.verify_directly_issued_by(issuer)


def test_ca_is_self_signed_ca_on_p256(ca):
    cert = x509.load_pem_x509_certificate(ca.cert_pem)
    _verify_signed_by(cert, cert)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=30, minutes=5)


def test_server_cert_verifies_against_ca_and_has_default_sans(ca):
    server = make_server_cert(ca)
    cert = x509.load_pem_x509_certificate(server.cert_pem)
    _verify_signed_by(cert, x509.load_pem_x509_certificate(ca.cert_pem))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    # The private key matches the certificate.
    key = serialization.load_pem_private_key(server.key_pem, password=None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()


def test_server_cert_extra_names(ca):
    server = make_server_cert(ca, dns_names=["localhost", "lab-server"], ips=["127.0.0.1", "192.168.1.10", "::1"])
    san = x509.load_pem_x509_certificate(server.cert_pem).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "lab-server"]
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "192.168.1.10", "::1"]


def test_server_cert_not_valid_for_other_ca(ca):
    other = make_ca()
    cert = x509.load_pem_x509_certificate(make_server_cert(ca).cert_pem)
    with pytest.raises(InvalidSignature):
        _verify_signed_by(cert, x509.load_pem_x509_certificate(other.cert_pem))


@pytest.mark.parametrize("kwargs, msg", [
    ({"ips": ["not-an-ip"]}, "not an IP"),
    ({"dns_names": [], "ips": []}, "at least one"),
    ({"valid_days": 0}, "at least 1 day"),
])
def test_server_cert_validation(ca, kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        make_server_cert(ca, **kwargs)


def test_node_keypair_is_openssh_p384_and_halves_match():
    pair = make_node_keypair(comment="pi-4")
    assert pair.public_openssh.startswith(b"ecdsa-sha2-nistp384 ")
    assert pair.public_openssh.endswith(b" pi-4\n")
    assert pair.private_openssh.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    # Exactly what Flower 1.39 does with each half.
    pub = serialization.load_ssh_public_key(pair.public_openssh)
    priv = serialization.load_ssh_private_key(pair.private_openssh, None)
    assert isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp384r1"
    assert isinstance(priv, ec.EllipticCurvePrivateKey)
    assert priv.public_key().public_numbers() == pub.public_numbers()


def test_node_keypair_accepted_by_flower_checks():
    from flwr.supercore.primitives.asymmetric import uses_nist_ec_curve

    pub = serialization.load_ssh_public_key(make_node_keypair(curve=ec.SECP256R1()).public_openssh)
    assert uses_nist_ec_curve(pub)


def test_node_keypair_rejects_non_nist_curve_and_bad_comment():
    with pytest.raises(ValueError, match="NIST"):
        make_node_keypair(curve=ec.SECP256K1())
    with pytest.raises(ValueError, match="whitespace"):
        make_node_keypair(comment="two words")


def test_node_keys_differ():
    assert make_node_keypair().public_openssh != make_node_keypair().public_openssh


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_lab_pki_layout_and_permissions(tmp_path):
    pki = write_lab_pki(tmp_path / "pki", nodes=["n0", "n1"], ips=["127.0.0.1", "10.0.0.2"])
    assert _mode(tmp_path / "pki") == 0o700
    assert _mode(pki.ca_key) == 0o600 and _mode(pki.server_key) == 0o600
    assert _mode(pki.ca_cert) == 0o644 and _mode(pki.server_cert) == 0o644
    for priv, pub in pki.node_keys.values():
        assert _mode(priv) == 0o600 and _mode(pub) == 0o644
        serialization.load_ssh_private_key(priv.read_bytes(), None)
    cert = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
    _verify_signed_by(cert, x509.load_pem_x509_certificate(pki.ca_cert.read_bytes()))
    assert sorted(pki.node_keys) == ["n0", "n1"]


def test_writers_refuse_to_overwrite(tmp_path):
    write_node_keypair(tmp_path, "n0")
    before = (tmp_path / "n0").read_bytes()
    with pytest.raises(FileExistsError, match="refusing"):
        write_node_keypair(tmp_path, "n0")
    assert (tmp_path / "n0").read_bytes() == before
    write_node_keypair(tmp_path, "n0", overwrite=True)
    assert (tmp_path / "n0").read_bytes() != before
    assert _mode(tmp_path / "n0") == 0o600


def test_node_name_must_be_a_safe_file_name(tmp_path):
    with pytest.raises(ValueError, match="node name"):
        write_node_keypair(tmp_path, "../evil")
