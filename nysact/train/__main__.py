"""``python -m nysact.train`` — same as ``nysact-train``."""

from nysact.train.cli import main

raise SystemExit(main())
