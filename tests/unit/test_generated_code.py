"""The committed protobuf modules must be what proto/ generates today."""

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _generator():
    spec = importlib.util.spec_from_file_location("proto_generate", ROOT / "proto" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_not_stale(tmp_path):
    written = _generator().generate(tmp_path)
    assert written, "protoc produced nothing"
    for fresh in written:
        committed = ROOT / "proto" / "tidebank" / "v1" / fresh.name
        assert committed.exists(), f"{fresh.name} is not committed: run python proto/generate.py"
        assert committed.read_bytes() == fresh.read_bytes(), f"{fresh.name} is stale: run python proto/generate.py"
