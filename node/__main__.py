"""`python -m tidebank.node --config FILE --node NAME`: run one storage node in the foreground."""

import argparse
import sys

from tidebank.node.server import main


def _cli() -> int:
    parser = argparse.ArgumentParser(prog="python -m tidebank.node", description=__doc__)
    parser.add_argument("--config", required=True, help="cluster topology (TOML)")
    parser.add_argument("--node", required=True, help="name of this node in the topology")
    args = parser.parse_args()
    return main(args.config, args.node)


if __name__ == "__main__":
    sys.exit(_cli())
