"""``python -m edgesplit`` runs the CLI."""

from edgesplit.cli import main

main()
