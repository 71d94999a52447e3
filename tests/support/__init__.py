"""What the tests share and are not tests themselves: servers (SSH, TCP echo),
helpers that run code as a worker or a doc page would, and data files.

``golden/`` holds the rendered job file and job headers that the golden tests
compare with (``python -m tests.support.regenerate_golden`` rewrites them);
``recorded/`` holds real scheduler output that the parsers' tests read.
"""
