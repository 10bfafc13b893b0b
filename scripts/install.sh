#!/usr/bin/env bash
# Create .venv (if missing) and install movierec with its training and development extras.
# torch is pinned to 2.13.0, the CPU build; any other spec may pull a multi-GB CUDA build.
#
# One line per step, and pip's own output cut to what a person (or a CI log) needs: the packages it
# installed, and every warning and error (those go to stderr, untouched). No progress bars.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3

step() { printf '[install] %s\n' "$*"; }

# pip's stdout minus its "Requirement already satisfied" / "Collecting" chatter; what it installed stays.
pip_summary() {
    awk '/^Successfully installed/ { installed = 1; print "[install]   " $0 }
         END { if (!installed) print "[install]   nothing new: every requirement was already satisfied" }'
}

if [ -x .venv/bin/python ]; then
    step "reusing .venv ($(.venv/bin/python --version))"
else
    step "creating .venv with $("$PYTHON" --version) ($(command -v "$PYTHON"))"
    "$PYTHON" -m venv .venv
    step "upgrading pip"
    .venv/bin/python -m pip install --progress-bar off --upgrade pip | pip_summary
fi
step "installing movierec[dev] (editable; torch 2.13.0 CPU, PyG, FAISS, gRPC, test tools): a few minutes the first time"
.venv/bin/python -m pip install --progress-bar off -e '.[dev]' | pip_summary
version=$(.venv/bin/recctl --version)  # also proves the entry point imports
step "installed $version at .venv/bin/recctl"
