"""`python -m tidebank.node --config FILE --node NAME`: run one storage node in the foreground."""

import argparse
import pathlib
import sys

from tidebank.common.tls import TlsFiles
from tidebank.node.server import main


def _cli() -> int:
    parser = argparse.ArgumentParser(prog="python -m tidebank.node", description=__doc__)
    parser.add_argument("--config", required=True, help="cluster topology (TOML)")
    parser.add_argument("--node", required=True, help="name of this node in the topology")
    parser.add_argument("--tls-ca", type=pathlib.Path, help="cluster CA (PEM); with --tls-cert and --tls-key, "
                        "overrides [tls] of the topology")
    parser.add_argument("--tls-cert", type=pathlib.Path, help="this node's certificate (PEM)")
    parser.add_argument("--tls-key", type=pathlib.Path, help="this node's private key (PEM, mode 0600)")
    args = parser.parse_args()
    given = [args.tls_ca, args.tls_cert, args.tls_key]
    if any(given) and not all(given):
        parser.error("give all of --tls-ca, --tls-cert and --tls-key, or none")
    return main(args.config, args.node, TlsFiles(*given) if all(given) else None)


if __name__ == "__main__":
    sys.exit(_cli())
