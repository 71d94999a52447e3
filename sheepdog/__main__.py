"""``python -m sheepdog`` is the ``sheepdog`` command."""

import sys

from .cli.commands import main

sys.exit(main())
