"""``python -m orchestrator ...`` = ``orch ...``."""
from orchestrator.cli import main

main()
