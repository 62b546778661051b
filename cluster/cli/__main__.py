"""`python -m tidebank.cluster.cli` runs the CLI, as `python -m` on the old single module did."""

from tidebank.cluster.cli import main

main()
