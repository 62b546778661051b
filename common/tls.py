"""The cluster's certificates: a CA made on `cluster up`, one certificate per node, one per principal.

Who a caller is comes from its client certificate (mutual TLS on every port), and
what it may do from the roles written into that certificate as SAN URIs
(``tidebank:role:ROLE``, ``tidebank:participant:ID``). Certificates rather than
bearer tokens because the transport must authenticate nodes to each other anyway,
a certificate cannot be replayed off the wire, and every stock gRPC tool (grpcurl,
the Python and Go clients) presents one with no code of ours.

Files under a cluster's ``tls/`` folder (keys mode 0600)::

    ca.pem  ca.key                    the cluster CA
    nodes/NAME.pem  nodes/NAME.key    a node: SANs = its addresses, role `node`
    principals/NAME.pem  .key         a principal: CN = NAME, its roles

Pure file and crypto work: no gRPC here (the node and the clients build their
credentials from these files in node/server.py and tidebank.client).
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import os
import pathlib
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROLE_URI_PREFIX = "tidebank:role:"
PARTICIPANT_URI_PREFIX = "tidebank:participant:"
ROLES = ("admin", "operator", "auditor", "platform", "account_holder", "participant", "node")
CA_VALID_DAYS = 3650
CERT_VALID_DAYS = 825  # the longest leaf lifetime browsers accept; rotate before it ends
PRINCIPAL_NAME_MAX = 64


class TlsError(ValueError):
    """A certificate or key is missing, malformed, or not issued by the cluster CA."""


@dataclass(frozen=True)
class TlsFiles:
    """The three files one side of a connection needs: the CA to verify the peer, its own certificate and key."""

    ca: pathlib.Path
    cert: pathlib.Path
    key: pathlib.Path

    def __post_init__(self) -> None:  # TlsFiles("ca.pem", "me.pem", "me.key") works too
        for name in ("ca", "cert", "key"):
            object.__setattr__(self, name, pathlib.Path(getattr(self, name)))

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(ca, cert chain, key) as PEM bytes; TlsError naming the file that cannot be read."""
        out = []
        for path in (self.ca, self.cert, self.key):
            try:
                out.append(path.read_bytes())
            except OSError as e:
                raise TlsError(f"cannot read {path}: {e.strerror or e}") from None
        return out[0], out[1], out[2]

    def mtime_ns(self) -> int:
        """Changes when any of the files is replaced (rotation is noticed by this)."""
        return sum(p.stat().st_mtime_ns for p in (self.ca, self.cert, self.key) if p.exists())


def tls_dir(cluster_dir: str | os.PathLike[str]) -> pathlib.Path:
    return pathlib.Path(cluster_dir) / "tls"


def node_files(tls_root: pathlib.Path, node: str) -> TlsFiles:
    return TlsFiles(tls_root / "ca.pem", tls_root / "nodes" / f"{node}.pem", tls_root / "nodes" / f"{node}.key")


def principal_files(tls_root: pathlib.Path, name: str) -> TlsFiles:
    return TlsFiles(tls_root / "ca.pem", tls_root / "principals" / f"{name}.pem",
                    tls_root / "principals" / f"{name}.key")


# ---- making certificates ------------------------------------------------------------


def create_ca(tls_root: pathlib.Path, cluster_name: str) -> None:
    """A new cluster CA; refuses to overwrite one (that would orphan every certificate it issued)."""
    if (tls_root / "ca.key").exists():
        raise TlsError(f"{tls_root / 'ca.key'} exists: a cluster has one CA")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"tidebank {cluster_name} CA")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write(tls_root / "ca.pem", cert.public_bytes(serialization.Encoding.PEM), private=False)
    _write(tls_root / "ca.key", _key_pem(key), private=True)


def issue_node(tls_root: pathlib.Path, node: str, hosts: Iterable[str]) -> TlsFiles:
    """A node's certificate: server and client use (nodes call each other), SANs = its hosts."""
    files = node_files(tls_root, node)
    _issue(tls_root, files, common_name=node, hosts=hosts, uris=[ROLE_URI_PREFIX + "node"], server=True)
    return files


def issue_principal(tls_root: pathlib.Path, name: str, roles: Iterable[str],
                    participants: Iterable[int] = (), valid_days: int = CERT_VALID_DAYS) -> TlsFiles:
    """A principal's client certificate; replaces an earlier one of the same name (a re-issue)."""
    check_principal_name(name)
    roles = list(dict.fromkeys(roles))
    if not roles:
        raise TlsError("a principal needs at least one role")
    for role in roles:
        if role not in ROLES or role == "node":
            raise TlsError(f"unknown role {role!r}: one of {', '.join(r for r in ROLES if r != 'node')}")
    uris = [ROLE_URI_PREFIX + r for r in roles] + [PARTICIPANT_URI_PREFIX + str(int(p)) for p in participants]
    files = principal_files(tls_root, name)
    _issue(tls_root, files, common_name=name, hosts=(), uris=uris, server=False, valid_days=valid_days)
    return files


def check_principal_name(name: str) -> None:
    if not name or len(name) > PRINCIPAL_NAME_MAX or not all(c.isalnum() or c in "-_." for c in name):
        shown = name if len(name) <= PRINCIPAL_NAME_MAX else name[:PRINCIPAL_NAME_MAX] + "..."
        raise TlsError(f"bad principal name {shown!r}: 1-{PRINCIPAL_NAME_MAX} letters, digits, '-', '_' or '.'")


def _issue(tls_root: pathlib.Path, files: TlsFiles, *, common_name: str, hosts: Iterable[str], uris: list[str],
           server: bool, valid_days: int = CERT_VALID_DAYS) -> None:
    ca_cert, ca_key = _load_ca(tls_root)
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    sans += [x509.UniformResourceIdentifier(u) for u in uris]
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    # The key first, so a reader that sees the new certificate also finds its key.
    _write(files.key, _key_pem(key), private=True)
    _write(files.cert, cert.public_bytes(serialization.Encoding.PEM), private=False)


def _load_ca(tls_root: pathlib.Path):
    try:
        ca_cert = x509.load_pem_x509_certificate((tls_root / "ca.pem").read_bytes())
        ca_key = serialization.load_pem_private_key((tls_root / "ca.key").read_bytes(), password=None)
    except (OSError, ValueError) as e:
        raise TlsError(f"no usable cluster CA in {tls_root}: {e}") from None
    return ca_cert, ca_key


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: pathlib.Path, data: bytes, *, private: bool) -> None:
    """Atomically (write aside, rename), keys created 0600 so they are never readable by others, not even briefly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


# ---- reading who a peer is ----------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    """Who a verified peer is: its certificate's CN, its roles and the participants it may act for."""

    name: str
    roles: frozenset[str]
    participants: frozenset[int] = frozenset()

    def has(self, role: str) -> bool:
        return role in self.roles


def principal_of_sans(common_name: str, sans: Iterable[str]) -> Principal:
    """The principal a verified certificate names; unknown URIs are ignored, a malformed participant id too."""
    roles, participants = set(), set()
    for san in sans:
        if san.startswith(ROLE_URI_PREFIX):
            role = san[len(ROLE_URI_PREFIX):]
            if role in ROLES:
                roles.add(role)
        elif san.startswith(PARTICIPANT_URI_PREFIX):
            digits = san[len(PARTICIPANT_URI_PREFIX):]
            if digits.isdigit() and len(digits) <= 39:
                participants.add(int(digits))
    return Principal(common_name, frozenset(roles), frozenset(participants))


# ---- gRPC credentials ---------------------------------------------------------------

CA_ENV, CERT_ENV, KEY_ENV = "TIDEBANK_CA", "TIDEBANK_CERT", "TIDEBANK_KEY"
PLAINTEXT_ENV = "TIDEBANK_PLAINTEXT"  # "1": talk plaintext to a node started with [tls] plaintext = true


@dataclass(frozen=True)
class Plaintext:
    """No TLS: only for a cluster started with `[tls] plaintext = true` (there is no identity to prove)."""


ClientTls = TlsFiles | Plaintext


def client_tls_from_env() -> ClientTls | None:
    """What the caller's environment names (as etcdctl's ETCDCTL_CACERT/CERT/KEY): the three files,
    plaintext, or None. Half a set of files is an error, not a silent plaintext fallback."""
    if os.environ.get(PLAINTEXT_ENV, "") in ("1", "true", "yes"):
        return Plaintext()
    named = {env: os.environ.get(env, "") for env in (CA_ENV, CERT_ENV, KEY_ENV)}
    if not any(named.values()):
        return None
    missing = [env for env, value in named.items() if not value]
    if missing:
        raise TlsError(f"set all of {CA_ENV}, {CERT_ENV} and {KEY_ENV} (missing: {', '.join(missing)})")
    return TlsFiles(*(pathlib.Path(named[env]) for env in (CA_ENV, CERT_ENV, KEY_ENV)))


def channel_credentials(files: TlsFiles):
    """Credentials of a client (or of a node calling another): verify the server against the CA and
    present our certificate. The files are read now: a rotated certificate is used by new channels."""
    import grpc

    ca, cert, key = files.read()
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def open_channel(address: str, tls: ClientTls, options=(), aio: bool = False):
    """A gRPC channel to `address` under `tls` (sync, or grpc.aio with aio=True)."""
    import grpc

    module = grpc.aio if aio else grpc
    if isinstance(tls, Plaintext):
        return module.insecure_channel(address, options=list(options))
    return module.secure_channel(address, channel_credentials(tls), options=list(options))


def server_credentials(files: TlsFiles):
    """A node's server credentials: clients must present a certificate of the cluster CA; the files are
    looked at again on each new connection, so replacing them rotates the certificate without a restart."""
    import grpc

    def config():
        ca, cert, key = files.read()
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    state = {"mtime_ns": files.mtime_ns()}

    def fetch():
        mtime_ns = files.mtime_ns()
        if mtime_ns == state["mtime_ns"]:
            return None  # unchanged: keep the current configuration
        try:
            fresh = config()
        except TlsError:
            return None  # half-written rotation: keep serving the old certificate, try again next handshake
        state["mtime_ns"] = mtime_ns
        return fresh

    return grpc.dynamic_ssl_server_credentials(config(), fetch, require_client_authentication=True)


def principal_of_context(context) -> Principal | None:
    """The verified principal of a gRPC call, None on a plaintext connection."""
    auth = context.auth_context()
    names = auth.get("x509_common_name")
    if not names:
        return None
    return _principal_cached(names[0].decode("utf-8", "replace"),
                             tuple(s.decode("utf-8", "replace") for s in auth.get("x509_subject_alternative_name", ())))


@functools.lru_cache(maxsize=4096)
def _principal_cached(common_name: str, sans: tuple[str, ...]) -> Principal:
    return principal_of_sans(common_name, sans)


# ---- revocation -----------------------------------------------------------------------

REVOKED_NAME = "revoked.txt"  # beside ca.pem: one revoked certificate serial (hex) per line, "# ..." comments
REVOCATION_RECHECK_S = 1.0  # how stale a node's view of the list may be


def revoked_path(ca: pathlib.Path) -> pathlib.Path:
    return pathlib.Path(ca).parent / REVOKED_NAME


def revoke(tls_root: pathlib.Path, cert: pathlib.Path, why: str = "") -> int:
    """Add the certificate's serial to the cluster's revocation list; its serial."""
    serial = x509.load_pem_x509_certificate(pathlib.Path(cert).read_bytes()).serial_number
    path = revoked_path(tls_root / "ca.pem")
    lines = path.read_text().splitlines() if path.exists() else ["# revoked certificate serials (hex), one per line"]
    if f"{serial:x}" not in {line.split("#")[0].strip() for line in lines}:
        lines.append(f"{serial:x}  # {why or pathlib.Path(cert).stem} {_now():%Y-%m-%d}")
    _write(path, ("\n".join(lines) + "\n").encode(), private=False)
    return serial


class RevocationList:
    """The serials a node refuses, re-read when the file changes (looked at most once a REVOCATION_RECHECK_S)."""

    def __init__(self, path: pathlib.Path, clock=None) -> None:
        import threading
        import time

        self.path = pathlib.Path(path)
        self._clock = clock or time.monotonic
        self._lock = threading.Lock()
        self._serials: frozenset[int] = frozenset()
        self._mtime_ns: int | None = None
        self._checked = float("-inf")

    def is_revoked(self, serial: int) -> bool:
        now = self._clock()
        if now - self._checked >= REVOCATION_RECHECK_S:
            with self._lock:
                if now - self._checked >= REVOCATION_RECHECK_S:
                    self._reload()
                    self._checked = now
        return serial in self._serials

    def _reload(self) -> None:
        try:
            mtime_ns = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            self._serials, self._mtime_ns = frozenset(), None
            return
        if mtime_ns == self._mtime_ns:
            return
        serials = set()
        for line in self.path.read_text(errors="replace").splitlines():
            text = line.split("#")[0].strip()
            if text:
                try:
                    serials.add(int(text, 16))
                except ValueError:
                    continue  # a malformed line revokes nothing (and hides nothing else)
        self._serials, self._mtime_ns = frozenset(serials), mtime_ns


@functools.lru_cache(maxsize=4096)
def serial_of_pem(pem: bytes) -> int:
    return x509.load_pem_x509_certificate(pem).serial_number


def peer_serial(context) -> int | None:
    """The serial of the verified peer certificate of a gRPC call, None on plaintext."""
    pems = context.auth_context().get("x509_pem_cert")
    return serial_of_pem(pems[0]) if pems else None
