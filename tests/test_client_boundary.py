"""The client library is wire-only: importing it loads no server, index or trainer code."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = ("movierec.server", "movierec.index", "movierec.trainer", "faiss", "torch")
PROBE = f"""
import json, sys
import movierec.clients.client
client = movierec.clients.client.RecommenderClient("127.0.0.1:1", token="t0ken")
client.close()
print(json.dumps(sorted(m for m in sys.modules if m.startswith({FORBIDDEN!r}))))
"""


def test_importing_and_using_the_client_loads_no_other_layer() -> None:
    """A fresh interpreter, so modules other tests imported cannot hide a stray import."""
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
