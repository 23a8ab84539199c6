"""The local CA and the workloads' certificates (meshcli/ca.py): file modes, what a leaf says,
when it is renewed, and rotation's steps."""

from __future__ import annotations

import datetime
import os
import stat
import time

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshproxy import config as wire

from meshcli import ca, compose_rewrite, workspace as ws

COMPOSE = """
    services:
      payment-v1: {image: pay, expose: ["8080"]}
      frontend: {image: web, expose: ["8080"]}
"""
HOUR = datetime.timedelta(hours=1)


@pytest.fixture
def project(files):
    project = files.compose(COMPOSE)
    workspace = ws.for_project(project)
    return workspace, files.resolve(COMPOSE)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def leaf_cert(workspace, workload: str) -> x509.Certificate:
    data = (ca.identity_dir(workspace, workload) / wire.IDENTITY_FILE).read_bytes()
    return x509.load_pem_x509_certificate(data[data.index(b"-----BEGIN CERTIFICATE-----"):])


def test_the_ca_key_is_0600_in_a_0700_directory_that_git_ignores(project):
    workspace, _ = project
    authority, created = ca.init(workspace)
    assert created and ca.init(workspace)[1] is False  # kept, not replaced
    directory = ca.ca_dir(workspace)
    assert mode(directory) == 0o700
    assert mode(directory / ca.CA_KEY) == 0o600
    assert (workspace.state_root / ".gitignore").read_text().strip().endswith("*")
    assert b"PRIVATE KEY" in (directory / ca.CA_KEY).read_bytes()
    assert b"PRIVATE KEY" not in (directory / ca.CA_CERT).read_bytes()


def test_the_root_is_a_ca_that_can_only_sign_certificates(project):
    workspace, _ = project
    root = ca.init(workspace)[0].cert
    constraints = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = root.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert root.not_valid_after_utc - root.not_valid_before_utc > datetime.timedelta(days=3000)


def test_a_leaf_names_its_workload_by_spiffe_id_and_dns_and_serves_both_ends_of_tls(project):
    workspace, mesh = project
    issued = ca.ensure(workspace, mesh)
    assert [(i.workload, i.reason) for i in issued] == [("frontend", "new"), ("payment-v1", "new")]
    cert = leaf_cert(workspace, "payment-v1")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [
        f"spiffe://cluster.local/ns/{mesh.project}/sa/payment"]
    assert san.value.get_values_for_type(x509.DNSName) == ["payment-v1", "payment"]
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign
    assert set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime == datetime.timedelta(hours=24) + ca.BACKDATE  # 24 h from now, valid from 5 min ago
    cert.verify_directly_issued_by(ca.load(workspace).cert)


def test_sidecar_files_belong_to_the_sidecar_user_as_root(project):
    workspace, mesh = project
    ca.ensure(workspace, mesh)
    directory = ca.identity_dir(workspace, "frontend")
    key_file = directory / wire.IDENTITY_FILE
    if os.geteuid() == 0:
        assert (mode(directory), mode(key_file)) == (0o700, 0o600)
        assert os.stat(key_file).st_uid == wire.SIDECAR_UID
    else:
        assert (mode(directory), mode(key_file)) == (0o750, 0o640)
    assert (directory / wire.TRUST_FILE).read_bytes() == ca.load(workspace).roots_pem()


def test_as_another_user_keys_are_for_the_users_group_which_the_sidecar_runs_with(project, monkeypatch):
    workspace, mesh = project
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # meshcli run by an ordinary user
    ca.ensure(workspace, mesh)
    directory = ca.identity_dir(workspace, "frontend")
    # Never readable by other local users; the sidecar reads them through the group.
    assert (mode(directory), mode(directory / wire.IDENTITY_FILE)) == (0o750, 0o640)
    assert compose_rewrite.sidecar_group() == os.getgid()


def test_a_leaf_is_renewed_at_half_its_lifetime_and_when_its_identity_changes(project, files):
    workspace, mesh = project
    ca.ensure(workspace, mesh)
    assert ca.ensure(workspace, mesh) == []
    assert 11.9 * 3600 < ca.next_renewal(workspace, mesh) <= 12 * 3600
    later = datetime.datetime.now(datetime.timezone.utc) + 12 * HOUR + datetime.timedelta(minutes=1)
    assert {i.reason for i in ca.ensure(workspace, mesh, now=later)} == {"renewal"}
    other_domain = files.resolve(COMPOSE, "apiVersion: meshcli/v1\nmtls:\n  trustDomain: example.org\n")
    assert {i.reason for i in ca.ensure(workspace, other_domain)} == {"identity changed"}
    assert leaf_cert(workspace, "frontend").extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)[0].startswith(
        "spiffe://example.org/")
    short = files.resolve(COMPOSE, "apiVersion: meshcli/v1\nmtls:\n  trustDomain: example.org\n"
                                   "  certificateLifetime: 30s\n")
    issuing = time.monotonic()
    assert {i.reason for i in ca.ensure(workspace, short)} == {"lifetime changed"}
    # Due 15 s after issuance: less the time issuing took (a loaded machine takes seconds to make
    # the keys) and up to 1 s more, as a certificate's validity counts whole seconds.
    assert 14 - (time.monotonic() - issuing) < ca.next_renewal(workspace, short) <= 15


def test_rotation_trusts_both_roots_then_reissues_then_drops_the_old_root(project):
    workspace, mesh = project
    ca.ensure(workspace, mesh)
    old = ca.load(workspace).cert
    steps = []

    def wait_for(check, what):  # what a running sidecar would report at each step
        directory = ca.identity_dir(workspace, "frontend")
        roots = [ca.fingerprint(c) for c in x509.load_pem_x509_certificates((directory / wire.TRUST_FILE).read_bytes())]
        report = {"roots": roots, "fingerprint": ca.read_leaf(workspace, "frontend").fingerprint}
        steps.append((what, len(roots)))
        assert check(report)

    new = ca.rotate(workspace, mesh, wait_for, lambda _: None)
    assert [n for _, n in steps] == [2, 2, 1]
    assert new.previous is None and ca.fingerprint(new.cert) != ca.fingerprint(old)
    assert ca.load(workspace).previous is None and not (ca.ca_dir(workspace) / ca.PREVIOUS_CERT).exists()
    leaf_cert(workspace, "payment-v1").verify_directly_issued_by(new.cert)
