"""`python -m latentforge ...` (and `torchrun -m latentforge ...`) run the CLI."""

from .cli import main

main()
