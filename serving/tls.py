"""TLS on the gRPC port: the server's credentials from the serving config's files, and the
credentials a client connects with.

Plaintext is the default (a backend and the recommender on one private network). With
``tls_cert`` and ``tls_key`` the port speaks only TLS; with ``tls_client_ca`` as well it asks
every client for a certificate signed by that CA (mutual TLS) and refuses the others. The
Prometheus endpoint stays plain HTTP: bind it to an internal interface.

The files are checked when the config loads, with Python's ``ssl`` module (the same OpenSSL
checks gRPC's would make at the first handshake): a key that does not belong to the certificate
would otherwise start a server that refuses every call.

``make_certificates`` (``shoprec tls-certs``) makes a private CA and a server and a client
certificate with the openssl command, for a trial and for the tests; production would use the
organisation's CA.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import ssl
import subprocess
import tempfile
from pathlib import Path

import grpc

from feature_repo.errors import ConfigError

log = logging.getLogger(__name__)

MARKERS = {"certificate": "CERTIFICATE", "private key": "PRIVATE KEY"}


def read_pem(path: Path, what: str, label: str) -> bytes:
    """The file's bytes, if it is readable PEM holding a ``what`` ("certificate" or "private key")."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"{label}: cannot read {path} ({e.strerror or e}); give the path of a PEM {what} "
                          f"file") from None
    if f"-----BEGIN {MARKERS[what]}".encode() not in data and not (
            what == "private key" and b"PRIVATE KEY-----" in data):  # "EC PRIVATE KEY", "RSA PRIVATE KEY"
        raise ConfigError(f"{label}: {path} holds no PEM {what} (a '-----BEGIN {MARKERS[what]}-----' block); "
                          f"give a PEM file (`shoprec tls-certs` makes a trial set; docs/api.md, TLS)")
    return data


def check_server_files(cert: Path | None, key: Path | None, client_ca: Path | None, label) -> None:
    """Raise ConfigError naming the setting unless the files make a usable TLS server.
    ``label(name)``: how the user set ``name`` (the key in the file, the variable, the flag)."""
    if cert is None and key is None:
        if client_ca is not None:
            raise ConfigError(f"{label('tls_client_ca')}: client certificates need TLS; set tls_cert and tls_key "
                              f"too, or unset tls_client_ca")
        return
    if cert is None or key is None:
        given, missing = ("tls_cert", "tls_key") if cert is not None else ("tls_key", "tls_cert")
        raise ConfigError(f"{label(missing)}: TLS needs both a certificate and its private key, and only "
                          f"{given} is set ({label(given)}); set {missing} too, or unset {given} to serve plaintext")
    read_pem(cert, "certificate", label("tls_cert"))
    read_pem(key, "private key", label("tls_key"))

    def encrypted() -> bytes:  # OpenSSL asks for a passphrase, on the terminal unless told otherwise
        raise ConfigError(f"{label('tls_key')}: {key} is encrypted with a passphrase, which gRPC cannot use; "
                          f"write it out unencrypted (openssl pkey -in {key} -out server-key.pem) and keep that "
                          f"file readable by the server's user only")

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key, password=encrypted)
    except ssl.SSLError as e:
        raise ConfigError(f"{label('tls_key')}: {key} is not the private key of the certificate {cert} (from "
                          f"{label('tls_cert')}), or one of them is damaged ({e.reason or e}); give the key the "
                          f"certificate was made for") from None
    if Path(key).stat().st_mode & 0o077:
        log.warning("%s: %s can be read by other users of this machine; chmod 600 it", label("tls_key"), key)
    if client_ca is not None:
        read_pem(client_ca, "certificate", label("tls_client_ca"))
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_verify_locations(cafile=str(client_ca))
        except ssl.SSLError as e:
            raise ConfigError(f"{label('tls_client_ca')}: {client_ca} is not a usable CA certificate "
                              f"({e.reason or e})") from None


def server_credentials(cert: Path, key: Path, client_ca: Path | None = None) -> grpc.ServerCredentials:
    """TLS with ``cert``/``key``; with ``client_ca``, clients must present a certificate it signed."""
    root = Path(client_ca).read_bytes() if client_ca is not None else None
    return grpc.ssl_server_credentials([(Path(key).read_bytes(), Path(cert).read_bytes())],
                                       root_certificates=root, require_client_auth=root is not None)


def channel_credentials(ca: Path | None = None, cert: Path | None = None,
                        key: Path | None = None) -> grpc.ChannelCredentials:
    """What a client connects to a TLS port with: ``ca`` the CA that signed the server's
    certificate (None: the public root CAs grpcio ships, or the file named by
    ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``; not the system's store); ``cert`` and ``key``: the
    client's own, for a server that asks for one (``tls_client_ca``)."""
    if (cert is None) != (key is None):
        raise ConfigError("a client certificate needs its private key (--tls-cert with --tls-key): give both, "
                          "or neither")
    read = (lambda p, what: read_pem(p, what, str(p)) if p is not None else None)
    return grpc.ssl_channel_credentials(root_certificates=read(ca, "certificate"), private_key=read(key, "private key"),
                                        certificate_chain=read(cert, "certificate"))


def open_channel(address: str, credentials: grpc.ChannelCredentials | None = None, options=None) -> grpc.Channel:
    """A blocking channel to ``address``: plaintext, or TLS with ``credentials``."""
    if credentials is None:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, credentials, options=options)


CERTIFICATE_FILES = ("ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "client.pem", "client-key.pem")
# Every extension from here, none from the system's openssl.cnf: with OpenSSL 1.1.1, -addext on
# top of its default CA section gives a CA certificate two basicConstraints, which OpenSSL 3 and
# gRPC's BoringSSL refuse.
_OPENSSL_CONFIG = """[req]
distinguished_name = subject
prompt = no
[subject]
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
subjectAltName = {names}
extendedKeyUsage = serverAuth
authorityKeyIdentifier = keyid
[client]
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
"""


def make_certificates(out: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"), days: int = 365) -> dict[str, Path]:
    """A private CA (``ca.pem``), a server certificate for ``hosts`` (DNS names or IP addresses:
    what clients dial) and a client certificate (for ``tls_client_ca``), each with its key (mode
    600), made by the openssl command (EC P-256) in ``out``. An existing file is never
    overwritten. ``ca-key.pem`` signs certificates the server would accept: it belongs with
    whoever issues them, not on the servers. Returns the paths by file name without ".pem"
    (``ca``, ``server_key``, ...)."""
    out = Path(out)
    if shutil.which("openssl") is None:
        raise ConfigError("the openssl command is not installed; install it (Debian/Ubuntu: sudo apt-get install "
                          "openssl) or bring certificates of your own")
    if not hosts:
        raise ConfigError("the server certificate needs at least one host name or IP address clients dial")
    taken = [name for name in CERTIFICATE_FILES if (out / name).exists()]
    if taken:
        raise ConfigError(f"{out} already holds {', '.join(taken)}; choose an empty directory (nothing is "
                          f"overwritten)")
    names = ", ".join(f"IP:{h}" if _is_ip(h) else f"DNS:{h}" for h in hosts)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-config", "openssl.cnf"]
    with tempfile.TemporaryDirectory() as tmp:  # built aside, copied into ``out`` once all are made
        work = Path(tmp)
        (work / "openssl.cnf").write_text(_OPENSSL_CONFIG.format(names=names))

        def openssl(*args: str) -> None:
            done = subprocess.run(["openssl", *args], cwd=work, capture_output=True, text=True)
            if done.returncode:
                raise ConfigError(f"openssl {args[0]} failed: {done.stderr.strip()[-500:]}")

        def signed(name: str, subject: str) -> None:
            openssl("req", *ec, "-subj", f"/CN={subject}", "-keyout", f"{name}-key.pem", "-out", f"{name}.csr")
            openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
                    "-days", str(days), "-extfile", "openssl.cnf", "-extensions", name, "-out", f"{name}.pem")

        openssl("req", "-x509", *ec, "-extensions", "ca", "-days", str(days), "-subj", "/CN=shoprec private CA",
                "-keyout", "ca-key.pem", "-out", "ca.pem")
        signed("server", hosts[0])
        signed("client", "shoprec client")
        out.mkdir(parents=True, exist_ok=True)
        for name in CERTIFICATE_FILES:
            _write_new(out / name, (work / name).read_bytes(), 0o600 if name.endswith("-key.pem") else 0o644)
    return {name[: -len(".pem")].replace("-", "_"): out / name for name in CERTIFICATE_FILES}


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``data``; a file that appeared there meanwhile is an error, not overwritten."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise ConfigError(f"{path} appeared while the certificates were made; nothing of it was overwritten") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False
