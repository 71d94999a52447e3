#!/usr/bin/env bash
# Set up and run sheepdog's whole test suite.
#
# Installs the package with its test and docs extras into .venv, builds the
# docs with warnings as errors, type-checks the package with mypy (and the
# modules embedded in job files with mypy --strict), and runs
# pytest (extra arguments go to pytest). As root on Debian/Ubuntu it first brings up the GridEngine + sshd
# of ci/gridengine-up.sh, then the caller and second execution host of
# ci/nat-up.sh, Slurm, and the browser of ci/browser-up.sh, and runs the tests
# inside the cluster's network namespace,
# where the end-to-end tests must run, not skip.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,docs]'

.venv/bin/sphinx-build -W -q -b html docs docs/_build/html
.venv/bin/mypy sheepdog
.venv/bin/mypy --strict sheepdog/wire sheepdog/worker

runner=()
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    bash ci/gridengine-up.sh
    # The caller behind NAT and the second execution host node1.
    bash ci/nat-up.sh
    # Slurm beside GridEngine, in the same namespace.
    bash ci/slurm-up.sh
    # Headless Chromium and its driver, for the dashboard's browser test.
    bash ci/browser-up.sh
    # shellcheck source=/dev/null
    source "${SHEEPDOG_TEST_STATE:-/var/lib/sheepdog-test}/env"
    export SHEEPDOG_REQUIRE_CLUSTER=1
    runner=(ip netns exec "$SHEEPDOG_NETNS")
else
    echo "test.sh: not root on Debian/Ubuntu, so the GridEngine tests will skip" >&2
fi
"${runner[@]}" .venv/bin/python -m pytest -ra "$@"
