"""A test certificate authority for a local QKD setup: one CA, a server certificate per KME, a client one per SAE.

ETSI GS QKD 014 runs over HTTPS with mutual authentication: the KME proves itself to the SAE with a server
certificate, and the SAE proves itself to the KME with a client certificate whose subject common name is its
SAE ID (see :mod:`qkdlink.host.etsi014`). :func:`make_test_pki` writes everything one machine needs to try that::

    ca.pem                      the CA certificate: what every KME and SAE trusts
    ca.key                      the CA's private key (kept so that more certificates can be signed by hand)
    kme-<KME ID>.pem/.key       a KME's server certificate (subject alternative names: localhost, 127.0.0.1 or
                                the hosts given) and its private key
    sae-<SAE ID>.pem/.key       an SAE's client certificate (common name: the SAE ID) and its private key

Keys are ECDSA P-256 and certificates are signed with SHA-256. Every file is written whole or not at all (a
temporary file, fsync, rename), and private keys are readable by their owner only (mode 0600). This is a test
PKI: a real deployment gets its certificates from the operator's CA, with its own key protection and revocation.
"""

import datetime
import ipaddress
import os
import re
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


__all__ = ["TestPKI", "make_test_pki"]


# IDs become file names, so they are kept to characters that are safe in one on every platform.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class TestPKI:
    """Where :func:`make_test_pki` put its files.

    Attributes
    ----------
    ca_cert, ca_key : Path
        The CA certificate (PEM) and its private key.
    kmes, saes : dict
        For each KME ID (SAE ID), the pair ``(certificate, private key)`` of paths.
    """
    __test__ = False            # not a pytest test class, despite its name

    directory: Path
    ca_cert: Path
    ca_key: Path
    kmes: dict = field(default_factory=dict)
    saes: dict = field(default_factory=dict)


def make_test_pki(directory, kme_ids, sae_ids, *, hosts=("localhost", "127.0.0.1"), days=365, overwrite=False):
    """Write a test CA, a server certificate for each KME and a client certificate for each SAE.

    Parameters
    ----------
    directory : str or Path
        Where the files go; created if missing.
    kme_ids, sae_ids : iterable of str
        The IDs to certify: letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit, at most 64
        characters (they are used in file names).
    hosts : iterable of str
        The names and IP addresses every KME certificate is valid for (its subject alternative names).
    days : int
        How long the certificates are valid.
    overwrite : bool
        Replace existing files. Without it, nothing is written if any of the files already exists.

    Returns
    -------
    TestPKI

    Raises
    ------
    FileExistsError
        Some of the files exist and ``overwrite`` is false.
    ValueError
        An ID is not usable, an ID is repeated, or ``days`` or ``hosts`` are not.
    """
    kme_ids, sae_ids, hosts = list(kme_ids), list(sae_ids), list(hosts)
    for kind, ids in (("KME", kme_ids), ("SAE", sae_ids)):
        for name in ids:
            if not isinstance(name, str) or not _ID.fullmatch(name):
                raise ValueError(f"{kind} ID must be 1 to 64 letters, digits, '.', '_' or '-', starting with a "
                                 f"letter or digit, not {name!r}")
        if len(set(ids)) != len(ids):
            raise ValueError(f"{kind} IDs must be distinct, not {ids!r}")
    if not kme_ids and not sae_ids:
        raise ValueError("give at least one KME ID or SAE ID")
    if not isinstance(days, int) or days < 1:
        raise ValueError(f"days must be a positive whole number, not {days!r}")
    if not hosts:
        raise ValueError("a KME certificate needs at least one host name or address")
    alt_names = [_alt_name(host) for host in hosts]

    directory = Path(directory)
    pki = TestPKI(directory, directory / "ca.pem", directory / "ca.key",
                  {name: (directory / f"kme-{name}.pem", directory / f"kme-{name}.key") for name in kme_ids},
                  {name: (directory / f"sae-{name}.pem", directory / f"sae-{name}.key") for name in sae_ids})
    paths = [pki.ca_cert, pki.ca_key, *(path for pair in (*pki.kmes.values(), *pki.saes.values()) for path in pair)]
    existing = [str(path) for path in paths if path.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"not overwriting existing files (ask to overwrite them): {', '.join(existing)}")

    now = datetime.datetime.now(datetime.timezone.utc)
    validity = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "qkdlink test PKI"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "qkdlink test CA")])
    ca_cert = (_builder(ca_name, ca_name, ca_key.public_key(), validity)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                            crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
               .sign(ca_key, hashes.SHA256()))

    directory.mkdir(parents=True, exist_ok=True)
    _write(pki.ca_key, _key_pem(ca_key), secret=True)
    _write(pki.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    for kind, pairs, usage, names in (("KME", pki.kmes, ExtendedKeyUsageOID.SERVER_AUTH, alt_names),
                                      ("SAE", pki.saes, ExtendedKeyUsageOID.CLIENT_AUTH, None)):
        for name, (cert_path, key_path) in pairs.items():
            key = ec.generate_private_key(ec.SECP256R1())
            subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "qkdlink test PKI"),
                                 x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, kind),
                                 x509.NameAttribute(NameOID.COMMON_NAME, name)])
            builder = (_builder(subject, ca_cert.subject, key.public_key(), validity)
                       .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                       .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                                    key_encipherment=False, data_encipherment=False,
                                                    key_agreement=False, key_cert_sign=False, crl_sign=False,
                                                    encipher_only=False, decipher_only=False), critical=True)
                       .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                       .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                       .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                      critical=False))
            if names:
                builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
            cert = builder.sign(ca_key, hashes.SHA256())
            _write(key_path, _key_pem(key), secret=True)
            _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return pki


def _alt_name(host):
    if not isinstance(host, str) or not host:
        raise ValueError(f"a host must be a name or an IP address, not {host!r}")
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _builder(subject, issuer, public_key, validity):
    # Serial numbers are positive and at most 20 bytes (RFC 5280); 159 random bits are both.
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(secrets.randbits(159) | 1).not_valid_before(validity[0]).not_valid_after(validity[1]))


def _key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path, data, *, secret=False):
    """Write ``data`` to ``path`` whole or not at all; a ``secret`` file is created readable by its owner only.

    The temporary file is created with its final mode (0600 for a secret), so a private key is never readable by
    others, not even for an instant; then it is synced and renamed over ``path``, and the directory synced.
    """
    path = Path(path)
    mode = 0o600 if secret else 0o644
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(descriptor, mode)
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
