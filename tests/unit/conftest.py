"""Unit tests talk to in-process fakes (tidebank.client.testing, fake nodes) that serve plaintext;
the few marked `integration` start a real cluster, with TLS, and keep the environment as it is."""

import pytest

from tidebank.common.tls import CA_ENV, CERT_ENV, KEY_ENV, PLAINTEXT_ENV


@pytest.fixture(autouse=True)
def plaintext_fakes(request, monkeypatch):
    if request.node.get_closest_marker("integration"):
        return
    for env in (CA_ENV, CERT_ENV, KEY_ENV):
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setenv(PLAINTEXT_ENV, "1")


@pytest.fixture(autouse=True)
def servicers_called_directly_act_for_a_trusted_caller():
    """Servicer unit tests call a servicer without the gRPC handler that decides access: they act for a
    caller with every role, as on a plaintext cluster (test_access.py tests the decisions themselves)."""
    from tidebank.node.api import access

    access.enter(access.Grant(access.PLAINTEXT_PRINCIPAL, "test", access.Scope.ALL))
    yield
    access.enter(None)
