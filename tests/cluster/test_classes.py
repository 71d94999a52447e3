"""Classes defined in a script or a notebook travel by value to real workers and back."""

import subprocess
import sys

import pytest

import sheepdog

from ..support.main_script import SCRIPT, run_as_main

pytestmark = pytest.mark.cluster


def test_instances_of_main_classes_are_arguments_and_results(cluster_conf):
    conf = {**cluster_conf, "callback": "direct"}
    main = run_as_main(SCRIPT)
    Point, Colour, Slotted = main["Point"], main["Colour"], main["Slotted"]
    [(point, colour, slotted, twice)] = sheepdog.map(
        main["transform"], [(Point(3, 4), Colour.RED, Slotted(1))], conf)
    assert type(point) is Point and point == Point(15.0, 1)
    assert colour is Colour.GREEN and type(slotted) is Slotted and slotted.value == 2
    assert twice == 2


def test_a_later_session_reads_the_errors_of_tasks_given_main_class_instances(cluster_conf):
    conf = {**cluster_conf, "callback": "direct"}
    main = run_as_main(SCRIPT + "\ndef fail(point):\n    raise ValueError(point.norm())\n")
    request_id = sheepdog.map_async(main["fail"], [(main["Point"](3, 4),)], conf)
    sheepdog.get_results(request_id, conf["dbfile"])
    program = f"import sheepdog; print(sheepdog.get_errors({request_id}, {conf['dbfile']!r}))"
    output = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            check=True).stdout
    assert output.startswith("[((Point(x=3, y=4),), 'Traceback") and "ValueError: 15.0" in output
