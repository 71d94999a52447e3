"""The old name of :mod:`sheepdog.wire.serialisation`, which the documentation promises.

``import sheepdog.serialisation`` gives that very module (this one puts it in
its own place), so that a setting made through the old name, such as
``sheepdog.serialisation.pickle_protocol = 2``, reaches the module in use.
"""

import sys

from .wire import serialisation

sys.modules[__name__] = serialisation
