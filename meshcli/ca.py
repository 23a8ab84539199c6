"""The mesh's local certificate authority and the workloads' identities (mTLS).

One CA per project, in `.mesh/<project>/ca/` (mode 0700): `ca.key` (mode 0600, ECDSA
P-256) and `ca.pem`, the root. The key is read only by meshcli on the host (this module,
run by the CLI and by the hot-reload watcher); it is never mounted into a container,
printed or logged. Keeping it per project, beside the rest of the project's state,
means `meshcli down`/`rm -rf .mesh` forgets it with the project, two projects never
trust each other, and nothing is written outside the project directory.

Each workload gets a leaf certificate (ECDSA P-256, `lifetime` long, 24 h by default)
with its SPIFFE ID as URI SAN (spiffe://<trust domain>/ns/<project>/sa/<service>) and its
DNS names (the compose service, the logical service), for both TLS client and server
use. It goes, with its key, to `.mesh/<project>/identities/<workload>/identity.pem`,
and the roots to trust beside it (`roots.pem`): that directory is mounted into that
workload's sidecar alone (compose_rewrite.py), which re-reads both when they change.
`ensure()` issues what is missing or due: a leaf is renewed once half its lifetime has
passed (Istio's grace ratio), or when it no longer fits (another root, trust domain,
service). `rotate()` replaces the root without failing a request: trust both roots,
reissue every leaf under the new one, then drop the old root, each step only once every
running sidecar has loaded the previous one.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshproxy import config as wire

from meshcli.errors import InputError, MeshError
from meshcli.mesh_config import Mesh
from meshcli import workspace as ws
from meshcli.workspace import Workspace

CA_DIR = "ca"
CA_KEY = "ca.key"
CA_CERT = "ca.pem"
PREVIOUS_CERT = "previous.pem"  # the old root while a rotation is under way
ROOT_LIFETIME = datetime.timedelta(days=3650)
BACKDATE = datetime.timedelta(minutes=5)  # clocks of containers and host may differ a little
RENEW_AT = 0.5  # of a leaf's lifetime

Progress = Callable[[str], None]


def ca_dir(workspace: Workspace) -> Path:
    return workspace.state_dir / CA_DIR


def identity_dir(workspace: Workspace, workload: str) -> Path:
    """What is mounted into `workload`'s sidecar (at meshproxy.config.IDENTITY_DIR)."""
    return workspace.identities_dir / workload


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER, in hex: how a sidecar reports what it serves (stdlib-only there)."""
    return cert.fingerprint(hashes.SHA256()).hex()


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _write_private(path: Path, data: bytes, mode: int, owner: int | None = None) -> None:
    """Write atomically (temp file + rename) a file created with `mode` from the start, so
    a key is never readable by others, not even for a moment."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask
        if owner is not None:
            os.fchown(fd, owner, owner)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)


def _private_dir(path: Path, owner: int | None = None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    if owner is not None:
        os.chown(path, owner, owner)


# --- the root ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Authority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    previous: x509.Certificate | None = None  # still trusted: a rotation is under way

    @property
    def roots(self) -> list[x509.Certificate]:
        return [self.cert] + ([self.previous] if self.previous is not None else [])

    def roots_pem(self) -> bytes:
        return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in self.roots)


def new_root(project: str) -> Authority:
    """A fresh root CA (ECDSA P-256, 10 years): its key signs certificates only."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshcli"),
                      x509.NameAttribute(NameOID.COMMON_NAME,
                                         f"meshcli {project} root CA {_now():%Y-%m-%d %H:%M:%S}")])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(now + ROOT_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return Authority(key, cert)


def _save(workspace: Workspace, authority: Authority) -> None:
    ws.ignore_state_dir(workspace)  # keys must never end up in the user's repository
    directory = ca_dir(workspace)
    _private_dir(directory)
    _write_private(directory / CA_KEY, authority.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), 0o600)
    _write_private(directory / CA_CERT, authority.cert.public_bytes(serialization.Encoding.PEM), 0o600)
    previous = directory / PREVIOUS_CERT
    if authority.previous is not None:
        _write_private(previous, authority.previous.public_bytes(serialization.Encoding.PEM), 0o600)
    else:
        previous.unlink(missing_ok=True)


def load(workspace: Workspace) -> Authority | None:
    """The project's CA, or None before `ca init`."""
    directory = ca_dir(workspace)
    try:
        key_pem = (directory / CA_KEY).read_bytes()
        cert_pem = (directory / CA_CERT).read_bytes()
    except FileNotFoundError:
        return None
    try:
        key = serialization.load_pem_private_key(key_pem, None)
        cert = x509.load_pem_x509_certificate(cert_pem)
        previous_path = directory / PREVIOUS_CERT
        previous = x509.load_pem_x509_certificate(previous_path.read_bytes()) if previous_path.exists() else None
    except (ValueError, TypeError) as exc:
        raise MeshError(f"{directory}: the CA files are unreadable ({exc})",
                        hint="`meshcli ca init --force` makes a new CA (the sidecars then get new certificates)")
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise MeshError(f"{directory / CA_KEY}: not an ECDSA key")
    return Authority(key, cert, previous)


def init(workspace: Workspace, force: bool = False) -> tuple[Authority, bool]:
    """Create the CA unless there is one (then it is kept, unless `force`); (CA, created)."""
    existing = load(workspace)
    if existing is not None and not force:
        return existing, False
    authority = new_root(workspace.project.name)
    _save(workspace, authority)
    return authority, True


def require(workspace: Workspace) -> Authority:
    authority = load(workspace)
    if authority is None:
        raise InputError(f"no CA for project {workspace.project.name} yet",
                         hint="run `meshcli ca init` (or `meshcli up`, which makes one)")
    return authority


# --- leaves ------------------------------------------------------------------------------

def spiffe_id(mesh: Mesh, service: str) -> str:
    return wire.spiffe_id(mesh.security.trust_domain, mesh.project, service)


def dns_names(mesh: Mesh, workload: str) -> list[str]:
    service = mesh.workloads[workload].service
    return [workload] + ([service] if service != workload else [])


def issue(authority: Authority, spiffe: str, names: list[str], lifetime: datetime.timedelta,
          not_before: datetime.datetime | None = None) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A workload's key and leaf certificate: client and server auth, not a CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or _now() - BACKDATE
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshcli")]))
            .issuer_name(authority.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + BACKDATE + lifetime)
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(spiffe)] + [x509.DNSName(n) for n in names]), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()),
                           critical=False)
            .sign(authority.key, hashes.SHA256()))
    return key, cert


def identity_pem(key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> bytes:
    """What a sidecar loads with ssl's load_cert_chain(): the key, then the certificate."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()) + cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Leaf:
    workload: str
    spiffe_id: str
    dns_names: tuple[str, ...]
    serial: str  # hex
    not_before: datetime.datetime
    not_after: datetime.datetime
    issuer_fingerprint: str  # of the root that signed it ("" when unknown)
    fingerprint: str

    def to_json(self) -> dict:
        return {"workload": self.workload, "spiffeId": self.spiffe_id, "dnsNames": list(self.dns_names),
                "serial": self.serial, "notBefore": self.not_before.isoformat(),
                "notAfter": self.not_after.isoformat(), "fingerprint": self.fingerprint}


def read_leaf(workspace: Workspace, workload: str, authority: Authority | None = None) -> Leaf | None:
    """The certificate on disk for `workload`, or None."""
    try:
        data = (identity_dir(workspace, workload) / wire.IDENTITY_FILE).read_bytes()
        cert = x509.load_pem_x509_certificate(data[data.index(b"-----BEGIN CERTIFICATE-----"):])
    except (OSError, ValueError):
        return None
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    issuer = ""
    for root in (authority.roots if authority else ()):
        if root.subject == cert.issuer:
            try:
                cert.verify_directly_issued_by(root)
                issuer = fingerprint(root)
            except Exception:  # InvalidSignature (another root of the same name), or not signed as we sign
                continue
            break
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return Leaf(workload, uris[0] if uris else "", tuple(san.get_values_for_type(x509.DNSName)),
                format(cert.serial_number, "x"), cert.not_valid_before_utc, cert.not_valid_after_utc, issuer,
                fingerprint(cert))


def _due(leaf: Leaf | None, authority: Authority, expected_id: str, names: list[str],
         lifetime: datetime.timedelta, now: datetime.datetime) -> str | None:
    """Why `leaf` must be (re)issued, or None."""
    if leaf is None:
        return "new"
    if leaf.issuer_fingerprint != fingerprint(authority.cert):
        return "another root"
    if leaf.spiffe_id != expected_id or list(leaf.dns_names) != names:
        return "identity changed"
    issued_for = leaf.not_after - leaf.not_before - BACKDATE
    if issued_for > lifetime + BACKDATE:
        return "lifetime changed"
    if now >= leaf.not_before + BACKDATE + issued_for * RENEW_AT:
        return "renewal"
    return None


def lifetime_of(mesh: Mesh) -> datetime.timedelta:
    return datetime.timedelta(milliseconds=mesh.security.certificate_lifetime_ms)


def _sidecar_owner() -> int | None:
    """The sidecar runs as SIDECAR_UID: as root we give it its files (mode 0600); else they
    stay ours, readable by our group (mode 0640), which the sidecar runs with
    (compose_rewrite.sidecar_group): never by other local users."""
    return wire.SIDECAR_UID if os.geteuid() == 0 else None


def _write_identity(workspace: Workspace, workload: str, pem: bytes | None, roots: bytes) -> None:
    directory = identity_dir(workspace, workload)
    owner = _sidecar_owner()
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700 if owner is not None else 0o750)
    if owner is not None:
        os.chown(directory, owner, owner)
    mode = 0o600 if owner is not None else 0o640
    if pem is not None:
        _write_private(directory / wire.IDENTITY_FILE, pem, mode, owner)
    trust = directory / wire.TRUST_FILE
    if not trust.exists() or trust.read_bytes() != roots:
        _write_private(trust, roots, mode, owner)


@dataclass(frozen=True)
class Issued:
    workload: str
    reason: str  # new, renewal, another root, ...
    leaf: Leaf


def ensure(workspace: Workspace, mesh: Mesh, force: bool = False,
           now: datetime.datetime | None = None) -> list[Issued]:
    """Make the CA if there is none, (re)issue every workload's certificate that is missing
    or due (all with `force`), and keep every workload's roots current. Returns what was issued."""
    authority, _ = init(workspace)
    now = now or _now()
    lifetime = lifetime_of(mesh)
    roots = authority.roots_pem()
    issued = []
    for workload in sorted(mesh.workloads):
        expected = spiffe_id(mesh, mesh.workloads[workload].service)
        names = dns_names(mesh, workload)
        leaf = read_leaf(workspace, workload, authority)
        reason = "forced" if force else _due(leaf, authority, expected, names, lifetime, now)
        pem = None
        if reason is not None:
            key, cert = issue(authority, expected, names, lifetime)
            pem = identity_pem(key, cert)
        _write_identity(workspace, workload, pem, roots)
        if pem is not None:
            issued.append(Issued(workload, reason, read_leaf(workspace, workload, authority)))
    return issued


def next_renewal(workspace: Workspace, mesh: Mesh) -> float:
    """Seconds until the first leaf is due (0 when one is), for the watcher's timer."""
    authority = load(workspace)
    if authority is None:
        return 0.0
    lifetime = lifetime_of(mesh)
    soonest = None
    for workload in mesh.workloads:
        leaf = read_leaf(workspace, workload, authority)
        if leaf is None:
            return 0.0
        issued_for = leaf.not_after - leaf.not_before - BACKDATE
        due = leaf.not_before + BACKDATE + min(issued_for, lifetime) * RENEW_AT
        soonest = due if soonest is None or due < soonest else soonest
    return max(0.0, (soonest - _now()).total_seconds()) if soonest else 3600.0


# --- rotation ----------------------------------------------------------------------------

WaitFor = Callable[[Callable[[dict], bool], str], None]  # (a check of one sidecar's TLS report, what)


def rotate(workspace: Workspace, mesh: Mesh, wait_for: WaitFor, progress: Progress) -> Authority:
    """A new root, without a failed request: (1) every sidecar trusts old and new roots,
    (2) every leaf is reissued under the new root, (3) the old root is dropped. `wait_for`
    blocks until every running sidecar's report passes a check (or raises)."""
    old = require(workspace)
    fresh = new_root(workspace.project.name)
    both = Authority(fresh.key, fresh.cert, old.cert)
    _save(workspace, both)
    new_fp, old_fp = fingerprint(fresh.cert), fingerprint(old.cert)
    progress("trusting the new root beside the old one")
    for workload in mesh.workloads:
        _write_identity(workspace, workload, None, both.roots_pem())
    wait_for(lambda tls: {new_fp, old_fp} <= set(tls.get("roots") or ()), "to trust both roots")
    progress("reissuing every workload certificate under the new root")
    issued = {i.workload: i.leaf.fingerprint for i in ensure(workspace, mesh)}
    wait_for(lambda tls: tls.get("fingerprint") in issued.values(), "to serve its new certificate")
    progress("dropping the old root")
    final = Authority(fresh.key, fresh.cert)
    _save(workspace, final)
    for workload in mesh.workloads:
        _write_identity(workspace, workload, None, final.roots_pem())
    wait_for(lambda tls: set(tls.get("roots") or ()) == {new_fp}, "to trust only the new root")
    return final


@dataclass(frozen=True)
class RootInfo:
    subject: str
    serial: str
    fingerprint: str
    not_before: datetime.datetime
    not_after: datetime.datetime

    def to_json(self) -> dict:
        return {"subject": self.subject, "serial": self.serial, "fingerprint": self.fingerprint,
                "notBefore": self.not_before.isoformat(), "notAfter": self.not_after.isoformat()}


def root_info(cert: x509.Certificate) -> RootInfo:
    return RootInfo(cert.subject.rfc4514_string(), format(cert.serial_number, "x"), fingerprint(cert),
                    cert.not_valid_before_utc, cert.not_valid_after_utc)


def seconds_left(leaf: Leaf) -> float:
    return (leaf.not_after - _now()).total_seconds()
