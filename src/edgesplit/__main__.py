"""``python -m edgesplit`` runs the CLI."""

from .cli import main

main()
