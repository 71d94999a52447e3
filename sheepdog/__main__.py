"""``python -m sheepdog`` is the ``sheepdog`` command."""

import sys

from .cli import main

sys.exit(main())
