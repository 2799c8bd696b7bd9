"""TLS certificates and SuperNode authentication keys for a Flower federation (a local CA).

`make_certificates(dir, hosts, nodes)` writes
  ca.crt, ca.key               a self-signed certificate authority (keep ca.key off the network)
  server.pem, server.key       the SuperLink's TLS certificate for `hosts` (names and IPs), signed by the CA
  node-<i>, node-<i>.pub       SuperNode i's ECDSA P-384 key pair in OpenSSH format: the private key
                               stays on that SuperNode (--auth-supernode-private-key); the public key
                               is registered with the SuperLink (`flwr supernode register node-<i>.pub`)
SuperLink:  --ssl-ca-certfile ca.crt --ssl-certfile server.pem --ssl-keyfile server.key --enable-supernode-auth
SuperNode:  --root-certificates ca.crt --auth-supernode-private-key node-<i>
Uses `cryptography` (a dependency of flwr); the same files can be made with openssl and ssh-keygen
(docs/flower.md). For a real deployment use your organisation's CA.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.write_bytes(data)
    if private:
        os.chmod(path, 0o600)


def make_certificates(directory: str | os.PathLike, hosts: list[str], nodes: int, days: int = 365) -> dict[str, str]:
    """Write a CA, the SuperLink's certificate for `hosts` (its subjectAltNames: IPs and DNS names)
    and `nodes` SuperNode key pairs into `directory`; private keys get mode 0600. Returns
    {what: path}. Valid for `days` days (from 5 minutes ago, for clocks slightly apart)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    pem = serialization.Encoding.PEM
    no_pw = serialization.NoEncryption()

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pfedhn-jax flower CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    _write(d / "ca.key", ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, no_pw), private=True)
    _write(d / "ca.crt", ca.public_bytes(pem))

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sans = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    _write(d / "server.key", key.private_bytes(pem, serialization.PrivateFormat.PKCS8, no_pw), private=True)
    _write(d / "server.pem", cert.public_bytes(pem))

    files = {"ca": str(d / "ca.crt"), "server certificate": str(d / "server.pem"), "server key": str(d / "server.key")}
    for i in range(nodes):
        node = ec.generate_private_key(ec.SECP384R1())
        _write(d / f"node-{i}", node.private_bytes(pem, serialization.PrivateFormat.OpenSSH, no_pw), private=True)
        _write(d / f"node-{i}.pub", node.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                                   serialization.PublicFormat.OpenSSH)
               + f" pfedhn-node-{i}\n".encode())
        files[f"node {i}"] = str(d / f"node-{i}")
    return files
