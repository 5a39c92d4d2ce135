"""``python -m mlmoat.load``."""

from mlmoat.load.cli import main

raise SystemExit(main())
