"""`tidebank principal add|list`: certificates for principals, written beside the cluster's CA."""

import json
import stat

from typer.testing import CliRunner

from tidebank.cluster.cli import app
from tidebank.cluster.launcher import LocalCluster

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_add_writes_a_private_key_and_a_certificate_with_the_roles(tmp_path):
    LocalCluster.create(tmp_path)
    r = invoke("principal", "add", "shop", "--role", "platform", "--role", "auditor", "--dir", str(tmp_path),
               "-o", "json")
    assert r.exit_code == 0, r.output
    made = json.loads(r.output)
    assert stat.S_IMODE((tmp_path / "tls" / "principals" / "shop.key").stat().st_mode) == 0o600
    listed = json.loads(invoke("principal", "list", "--dir", str(tmp_path), "-o", "json").output)
    assert {"principal": "shop", "roles": ["auditor", "platform"]}.items() <= next(
        p for p in listed if p["principal"] == "shop").items()
    assert made["cert"].endswith("shop.pem")


def test_a_participant_principal_names_its_participant_ids(tmp_path):
    LocalCluster.create(tmp_path)
    assert invoke("principal", "add", "bank-a", "--role", "participant", "--participant", "7",
                  "--dir", str(tmp_path)).exit_code == 0
    listed = json.loads(invoke("principal", "list", "--dir", str(tmp_path), "-o", "json").output)
    assert next(p for p in listed if p["principal"] == "bank-a")["participants"] == [7]


def test_a_participant_principal_without_a_participant_is_a_usage_error(tmp_path):
    LocalCluster.create(tmp_path)
    assert invoke("principal", "add", "bank-a", "--role", "participant", "--dir", str(tmp_path)).exit_code == 2


def test_an_unknown_role_is_refused_with_the_known_ones(tmp_path):
    LocalCluster.create(tmp_path)
    r = invoke("principal", "add", "x", "--role", "root", "--dir", str(tmp_path))
    assert r.exit_code == 1 and "unknown role 'root'" in r.output


def test_a_plaintext_cluster_has_no_principals(tmp_path):
    LocalCluster.create(tmp_path, plaintext=True)
    r = invoke("principal", "add", "x", "--role", "auditor", "--dir", str(tmp_path))
    assert r.exit_code == 1 and "plaintext" in r.output


def test_cluster_up_makes_the_admin_principal(tmp_path):
    LocalCluster.create(tmp_path)
    listed = json.loads(invoke("principal", "list", "--dir", str(tmp_path), "-o", "json").output)
    assert [p["roles"] for p in listed if p["principal"] == "admin"] == [["admin", "auditor", "operator", "platform"]]
