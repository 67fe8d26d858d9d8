"""python -m gw -> the gw command line."""

from gw.cli import main

raise SystemExit(main())
