"""python -m jaccli: the same program as ``jac``."""

from jaccli.cli.client import main

main()
