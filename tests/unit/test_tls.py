"""The cluster's certificates: who they say a caller is, and that keys stay private."""

import stat

import pytest
from cryptography import x509

from tidebank.common import tls
from tidebank.common.tls import Plaintext, TlsError, TlsFiles


@pytest.fixture
def root(tmp_path):
    path = tmp_path / "tls"
    tls.create_ca(path, "test")
    return path


def _sans(files: TlsFiles) -> list:
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def test_private_keys_are_readable_by_their_owner_only(root):
    node = tls.issue_node(root, "dc1-n1", ["127.0.0.1"])
    person = tls.issue_principal(root, "alice", ["auditor"])
    for key in (root / "ca.key", node.key, person.key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_a_cluster_has_one_ca_and_creating_another_is_refused(root):
    with pytest.raises(TlsError, match="one CA"):
        tls.create_ca(root, "test")


def test_node_certificate_names_its_addresses_and_the_node_role(root):
    files = tls.issue_node(root, "dc1-n1", ["127.0.0.1", "localhost"])
    sans = _sans(files)
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == ["tidebank:role:node"]


def test_principal_certificate_carries_its_roles_and_participants(root):
    files = tls.issue_principal(root, "bank-a", ["participant"], participants=[42])
    uris = _sans(files).get_values_for_type(x509.UniformResourceIdentifier)
    principal = tls.principal_of_sans("bank-a", uris)
    assert principal.roles == {"participant"} and principal.participants == {42}


def test_principal_with_an_unknown_role_is_refused(root):
    with pytest.raises(TlsError, match="unknown role"):
        tls.issue_principal(root, "mallory", ["superuser"])


def test_no_principal_may_claim_the_node_role(root):
    with pytest.raises(TlsError, match="unknown role 'node'"):
        tls.issue_principal(root, "mallory", ["node"])


def test_principal_names_are_restricted_to_a_safe_alphabet(root):
    for bad in ("", "a/b", "x" * 65, "semi;colon"):
        with pytest.raises(TlsError, match="bad principal name"):
            tls.issue_principal(root, bad, ["auditor"])


def test_unknown_uris_and_malformed_participant_ids_grant_nothing():
    principal = tls.principal_of_sans("x", ["tidebank:role:root", "spiffe://a/b", "tidebank:participant:-1",
                                            "tidebank:participant:12ab"])
    assert principal.roles == frozenset() and principal.participants == frozenset()


def test_environment_names_all_three_files_or_none(monkeypatch, tmp_path):
    for env in (tls.CA_ENV, tls.CERT_ENV, tls.KEY_ENV, tls.PLAINTEXT_ENV):
        monkeypatch.delenv(env, raising=False)
    assert tls.client_tls_from_env() is None
    monkeypatch.setenv(tls.CA_ENV, str(tmp_path / "ca.pem"))
    with pytest.raises(TlsError, match="missing: TIDEBANK_CERT, TIDEBANK_KEY"):
        tls.client_tls_from_env()
    monkeypatch.setenv(tls.CERT_ENV, "c.pem")
    monkeypatch.setenv(tls.KEY_ENV, "k.pem")
    assert tls.client_tls_from_env() == TlsFiles(tmp_path / "ca.pem", tls.pathlib.Path("c.pem"),
                                                 tls.pathlib.Path("k.pem"))


def test_plaintext_only_when_asked_for(monkeypatch):
    monkeypatch.setenv(tls.PLAINTEXT_ENV, "1")
    assert tls.client_tls_from_env() == Plaintext()


def test_a_missing_file_is_named_in_the_error(tmp_path):
    files = TlsFiles(tmp_path / "ca.pem", tmp_path / "c.pem", tmp_path / "k.pem")
    with pytest.raises(TlsError, match="ca.pem"):
        files.read()


def test_reissuing_a_principal_replaces_its_certificate(root):
    first = tls.issue_principal(root, "alice", ["auditor"]).cert.read_bytes()
    second = tls.issue_principal(root, "alice", ["auditor", "platform"]).cert.read_bytes()
    assert first != second


def test_a_revoked_serial_is_refused_and_others_are_not(root):
    alice = tls.issue_principal(root, "alice", ["auditor"])
    bob = tls.issue_principal(root, "bob", ["auditor"])
    revoked = tls.RevocationList(tls.revoked_path(root / "ca.pem"))
    alice_serial = tls.serial_of_pem(alice.cert.read_bytes())
    assert not revoked.is_revoked(alice_serial)
    tls.revoke(root, alice.cert)
    fresh = tls.RevocationList(tls.revoked_path(root / "ca.pem"))
    assert fresh.is_revoked(alice_serial)
    assert not fresh.is_revoked(tls.serial_of_pem(bob.cert.read_bytes()))


def test_the_revocation_list_is_reread_when_it_changes(root):
    now = [0.0]
    revoked = tls.RevocationList(tls.revoked_path(root / "ca.pem"), clock=lambda: now[0])
    alice = tls.issue_principal(root, "alice", ["auditor"])
    serial = tls.serial_of_pem(alice.cert.read_bytes())
    assert not revoked.is_revoked(serial)
    tls.revoke(root, alice.cert)
    assert not revoked.is_revoked(serial)  # within the recheck period: the old view
    now[0] += tls.REVOCATION_RECHECK_S
    assert revoked.is_revoked(serial)


def test_a_reissued_certificate_is_not_revoked_with_the_old_one(root):
    old = tls.issue_principal(root, "alice", ["auditor"])
    tls.revoke(root, old.cert)
    new = tls.issue_principal(root, "alice", ["auditor"])
    revoked = tls.RevocationList(tls.revoked_path(root / "ca.pem"))
    assert not revoked.is_revoked(tls.serial_of_pem(new.cert.read_bytes()))


def test_a_malformed_line_revokes_nothing_else_away(root):
    path = tls.revoked_path(root / "ca.pem")
    path.write_text("zz-not-hex\n ab  # a comment\n")
    assert tls.RevocationList(path).is_revoked(0xAB)
