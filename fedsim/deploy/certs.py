"""Lab PKI for a Flower 1.39 deployment: a CA, a server certificate, SuperNode keys.

What Flower 1.39 expects (read from its source and checked with real processes,
see ``docs/deploy-notes-1.39.md``):

- ``flower-superlink --ssl-ca-certfile CA --ssl-certfile CERT --ssl-keyfile KEY``: PEM
  files; the same certificate serves the Fleet gRPC API and the HTTPS Control/Runtime
  API (uvicorn), so its subjectAltName must name every address clients dial
  (``IP:127.0.0.1`` and ``DNS:localhost`` for loopback tests).
- ``flower-supernode --root-certificates CA``: the CA certificate, PEM.
- SuperNode authentication: ``flower-supernode --auth-supernode-private-key FILE``
  reads an *unencrypted OpenSSH private key* (``load_ssh_private_key(data, None)``)
  that must be an EC key; ``flwr supernode register PUBKEY`` reads an *OpenSSH public
  key* line (``ecdsa-sha2-nistp384 AAAA...``) on a NIST curve (P-192 .. P-521).

Keys come from the operating system's CSPRNG (``cryptography`` uses ``os.urandom``):
cryptographic keys must not be derived from an experiment seed.

Everything here except :func:`write_lab_pki` / :func:`write_node_keypair` is a pure
function returning bytes; the writers put secrets in files of mode 0600.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Curve for the TLS CA and server keys: P-256 with ECDSA-SHA256 is accepted by every
#: TLS stack a device may run (gRPC's BoringSSL, OpenSSL behind Python's ssl module).
TLS_CURVE: ec.EllipticCurve = ec.SECP256R1()
#: Curve for SuperNode keys, as in Flower's guide (``ssh-keygen -t ecdsa -b 384``).
NODE_CURVE: ec.EllipticCurve = ec.SECP384R1()
#: The curves Flower 1.39 accepts for SuperNode keys (``uses_nist_ec_curve``).
NIST_CURVES: tuple[type[ec.EllipticCurve], ...] = (
    ec.SECP192R1, ec.SECP224R1, ec.SECP256R1, ec.SECP384R1, ec.SECP521R1,
)
DEFAULT_DNS_NAMES: tuple[str, ...] = ("localhost",)
DEFAULT_IPS: tuple[str, ...] = ("127.0.0.1",)
_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class PemPair:
    """A private key and its certificate, both PEM bytes."""

    key_pem: bytes
    cert_pem: bytes


@dataclass(frozen=True)
class NodeKeyPair:
    """A SuperNode key pair in OpenSSH format.

    ``private_openssh`` is what ``flower-supernode --auth-supernode-private-key`` reads,
    ``public_openssh`` (one line, ``ecdsa-sha2-nistpNNN <base64> <comment>``) is what
    ``flwr supernode register`` reads.
    """

    private_openssh: bytes
    public_openssh: bytes


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


def _check_days(valid_days: int) -> None:
    if valid_days < 1:
        raise ValueError(f"a certificate must be valid for at least 1 day; got valid_days={valid_days}")


def _new_ec_key(curve: ec.EllipticCurve) -> ec.EllipticCurvePrivateKey:
    if not isinstance(curve, NIST_CURVES):
        raise ValueError(f"Flower accepts NIST EC curves only (P-192..P-521); got {curve.name}")
    return ec.generate_private_key(curve)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    # Unencrypted PKCS#8: gRPC and uvicorn load the key without a passphrase.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_ca(
    common_name: str = "fedsim lab CA",
    valid_days: int = 825,
    now: _dt.datetime | None = None,
) -> PemPair:
    """Make a self-signed certificate authority for one lab deployment.

    Parameters
    ----------
    common_name
        Subject CN of the CA.
    valid_days
        Validity from ``now`` (UTC).
    now
        Start of validity; the current time if None (an argument so tests can pin it).

    Returns
    -------
    PemPair
        The CA private key (PKCS#8 PEM, unencrypted) and certificate (PEM).
    """
    _check_days(valid_days)
    start = now or _now()
    key = _new_ec_key(TLS_CURVE)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - _dt.timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(start + _dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return PemPair(_key_pem(key), cert.public_bytes(serialization.Encoding.PEM))


def _parse_ips(ips: Sequence[str]) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    out = []
    for ip in ips:
        try:
            out.append(ipaddress.ip_address(ip))
        except ValueError as err:
            raise ValueError(f"not an IP address: {ip!r} (put host names in dns_names)") from err
    return out


def make_server_cert(
    ca: PemPair,
    dns_names: Sequence[str] = DEFAULT_DNS_NAMES,
    ips: Sequence[str] = DEFAULT_IPS,
    valid_days: int = 825,
    now: _dt.datetime | None = None,
) -> PemPair:
    """Issue the SuperLink's TLS certificate, signed by ``ca``.

    Parameters
    ----------
    ca
        The CA from :func:`make_ca`.
    dns_names, ips
        Every name and address SuperNodes and ``flwr`` dial; they become the
        subjectAltName (clients check the SAN, not the CN). Defaults: ``localhost`` and
        ``127.0.0.1``; add the server's LAN address for real devices.
    valid_days, now
        Validity window, as in :func:`make_ca`.

    Returns
    -------
    PemPair
        The server key (PKCS#8 PEM, unencrypted) and its certificate (PEM).
    """
    _check_days(valid_days)
    if not dns_names and not ips:
        raise ValueError("a server certificate needs at least one DNS name or IP in its subjectAltName")
    ip_objs = _parse_ips(ips)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"expected an EC CA key; got {type(ca_key).__name__}")
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    start = now or _now()
    key = _new_ec_key(TLS_CURVE)
    cn = dns_names[0] if dns_names else str(ip_objs[0])
    san: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    san += [x509.IPAddress(ip) for ip in ip_objs]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - _dt.timedelta(minutes=5))
        .not_valid_after(start + _dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return PemPair(_key_pem(key), cert.public_bytes(serialization.Encoding.PEM))


def make_node_keypair(comment: str = "fedsim-node", curve: ec.EllipticCurve = NODE_CURVE) -> NodeKeyPair:
    """Make a SuperNode authentication key pair (EC on a NIST curve, OpenSSH format).

    Equivalent to ``ssh-keygen -t ecdsa -b 384 -N "" -C COMMENT``.

    Parameters
    ----------
    comment
        Appended to the public key line (a node name helps the operator).
    curve
        A NIST curve; P-384 by default.

    Returns
    -------
    NodeKeyPair
        Unencrypted OpenSSH private key and the one-line OpenSSH public key (with newline).
    """
    if any(c.isspace() for c in comment):
        raise ValueError(f"the public key comment must not contain whitespace; got {comment!r}")
    key = _new_ec_key(curve)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    if comment:
        public += b" " + comment.encode("ascii")
    return NodeKeyPair(private, public + b"\n")


# --------------------------------------------------------------------------- writers


def _write(path: Path, data: bytes, mode: int, overwrite: bool) -> Path:
    """Write ``data`` to ``path`` created with ``mode`` (no window where it is wider)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError as err:
        raise FileExistsError(f"{path} exists; refusing to overwrite key material") from err
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)  # O_CREAT's mode is masked by umask, and an existing file keeps its own
    return path


def _private_dir(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    return directory


@dataclass(frozen=True)
class LabPki:
    """Paths of the files :func:`write_lab_pki` wrote."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    node_keys: dict[str, tuple[Path, Path]]  # name -> (private key, public key)


def write_node_keypair(directory: str | os.PathLike[str], name: str, overwrite: bool = False) -> tuple[Path, Path]:
    """Make one SuperNode key pair and write ``<name>`` (0600) and ``<name>.pub`` (0644).

    Returns
    -------
    tuple[Path, Path]
        (private key path, public key path); register the public key with
        ``flwr supernode register <name>.pub <connection>``.
    """
    if not _NODE_NAME.match(name):
        raise ValueError(f"node name must match {_NODE_NAME.pattern} (it becomes a file name); got {name!r}")
    d = _private_dir(Path(directory))
    pair = make_node_keypair(comment=name)
    priv = _write(d / name, pair.private_openssh, 0o600, overwrite)
    pub = _write(d / f"{name}.pub", pair.public_openssh, 0o644, overwrite)
    return priv, pub


def write_lab_pki(
    directory: str | os.PathLike[str],
    nodes: Sequence[str] = (),
    dns_names: Sequence[str] = DEFAULT_DNS_NAMES,
    ips: Sequence[str] = DEFAULT_IPS,
    valid_days: int = 825,
    overwrite: bool = False,
) -> LabPki:
    """Write a lab CA, a server certificate and one key pair per node into ``directory``.

    Layout: ``ca.pem``, ``ca.key`` (0600), ``server.pem``, ``server.key`` (0600),
    ``nodes/<name>`` (0600) and ``nodes/<name>.pub``. The directory is made 0700.
    Refuses to overwrite existing key material unless ``overwrite``.
    """
    d = _private_dir(Path(directory))
    ca = make_ca(valid_days=valid_days)
    server = make_server_cert(ca, dns_names=dns_names, ips=ips, valid_days=valid_days)
    paths = LabPki(
        ca_cert=_write(d / "ca.pem", ca.cert_pem, 0o644, overwrite),
        ca_key=_write(d / "ca.key", ca.key_pem, 0o600, overwrite),
        server_cert=_write(d / "server.pem", server.cert_pem, 0o644, overwrite),
        server_key=_write(d / "server.key", server.key_pem, 0o600, overwrite),
        node_keys={name: write_node_keypair(d / "nodes", name, overwrite) for name in nodes},
    )
    return paths
