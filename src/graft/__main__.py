"""`python -m graft` runs the `graft` command."""

from graft.cli import main

raise SystemExit(main())
