"""``python -m progaug``: the same as the ``progaug`` console script."""

from progaug.cli import main

raise SystemExit(main())
