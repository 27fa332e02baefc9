"""``python -m kdbench.cli`` (what torchrun and the tests launch)."""
from kdbench.cli import main

main()
