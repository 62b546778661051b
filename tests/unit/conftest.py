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
