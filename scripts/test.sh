#!/usr/bin/env bash
# Install (if needed) and run the whole test suite. MovieLens-1M is read from $MOVIEREC_DATA,
# else ../shared/data/ml-1m; the ML-1M tests fail rather than skip when it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/pytest ] || scripts/install.sh
exec .venv/bin/pytest -q "$@"
