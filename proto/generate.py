"""Generate the Python protobuf/gRPC modules from proto/ into proto/tidebank/v1/,
beside the .proto files they come from.

Run `python proto/generate.py` after editing a .proto file. The generated code is
committed; tests/unit/test_generated_code.py fails when it is stale.
"""

from __future__ import annotations

import pathlib
import sys
import tempfile

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = PROTO_DIR / "tidebank" / "v1"


def generate(into: pathlib.Path) -> list[pathlib.Path]:
    """Write the generated modules for every proto into `into`; return their paths."""
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / "tidebank" / "v1").glob("*.proto"))
    import grpc_tools

    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{PROTO_DIR}", f"-I{well_known}", f"--python_out={tmp}", f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}", *protos]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        written = []
        into.mkdir(parents=True, exist_ok=True)
        for src in sorted((pathlib.Path(tmp) / "tidebank" / "v1").iterdir()):
            dst = into / src.name
            dst.write_bytes(src.read_bytes())
            written.append(dst)
        return written


if __name__ == "__main__":
    for path in generate(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else OUT_DIR):
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
