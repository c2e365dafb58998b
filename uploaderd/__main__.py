"""``python -m uploaderd`` is the ``uploaderd`` command."""

from uploaderd.cli import main

raise SystemExit(main())
