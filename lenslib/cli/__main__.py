"""``python -m lenslib.cli``: the same as the ``lenslib`` command."""

from lenslib.cli.main import main

raise SystemExit(main())
