"""``python -m engine`` runs the CLI."""

from __future__ import annotations

from engine.cli.main import main

raise SystemExit(main())
