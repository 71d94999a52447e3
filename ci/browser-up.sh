#!/usr/bin/env bash
# Install the browser that the dashboard's test drives: Debian's headless-capable
# chromium and its chromedriver (tests/test_dashboard_browser.py). selenium
# itself comes with the package's test extra.
#
# Run as root. Idempotent and quick when both are already there: apt is only
# asked when one of them is missing.
set -euo pipefail
# shellcheck source=ci/lib.sh
source "$(dirname "$0")/lib.sh"

if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    say "chromium $(chromium --version 2>/dev/null | awk '{print $2}') and chromedriver are installed"
    exit 0
fi
say "installing chromium and chromium-driver"
apt_install chromium chromium-driver
command -v chromium >/dev/null && command -v chromedriver >/dev/null
