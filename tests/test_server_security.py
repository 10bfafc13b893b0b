"""``recctl serve`` with TLS, a bearer token and the metrics port, end to end over real processes."""

from __future__ import annotations

import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from bundle_factory import user_id_of_row
from server_harness import RECCTL, ServeProcess, make_index
from test_auth import Pki, pki  # noqa: F401  (pki is the fixture: a throw-away CA and server certificate)

from movierec.clients.client import (
    InvalidArgumentError,
    RecommenderClient,
    ServerUnavailableError,
    StreamQuery,
    UnauthenticatedError,
)

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[tuple[str, int, Path]]:  # noqa: F811
    """A TLS + token server; yields its target, its metrics port and the token file."""
    folder = tmp_path_factory.mktemp("secured")
    index_root = make_index(folder, n_users=8, n_items=30, dim=4, seen_per_user=3)
    token_file = folder / "token"
    token_file.write_text(TOKEN + "\n")
    process = ServeProcess(
        "--index", str(index_root), "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
        "--token-file", str(token_file), "--metrics-port", "0",
    )  # fmt: skip
    try:
        events = process.wait_serving()
        assert events["listening"]["tls"] is True
        yield f"localhost:{events['listening']['port']}", events["metrics"]["metrics_port"], token_file
    finally:
        process.close()


@pytest.mark.slow
def test_tls_and_token_are_required(secured: tuple[str, int, Path], pki: Pki) -> None:  # noqa: F811
    target, _, _ = secured
    with RecommenderClient(target, tls_ca=pki.ca, token=TOKEN) as client:
        assert len(client.recommend(user_id_of_row(0), 3).items) == 3
    with RecommenderClient(target, tls_ca=pki.ca) as client, pytest.raises(UnauthenticatedError):
        client.recommend(user_id_of_row(0), 3)
    with RecommenderClient(target, tls_ca=pki.ca, token="wrong") as client, pytest.raises(UnauthenticatedError):
        client.recommend(user_id_of_row(0), 3)
    with RecommenderClient(target, timeout=2) as plaintext, pytest.raises(ServerUnavailableError):
        plaintext.recommend(user_id_of_row(0), 3)


@pytest.mark.slow
def test_recctl_speaks_tls_with_a_token_file(secured: tuple[str, int, Path], pki: Pki) -> None:  # noqa: F811
    target, _, token_file = secured
    base = [RECCTL, "recommend", "--server", target, "--user", str(user_id_of_row(1)), "-k", "2", "--json"]
    ok = subprocess.run([*base, "--tls-ca", str(pki.ca), "--token-file", str(token_file)], capture_output=True,
                        text=True, timeout=60, check=False)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert '"items"' in ok.stdout
    refused = subprocess.run([*base, "--tls-ca", str(pki.ca)], capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_metrics_count_calls_by_method_and_code(secured: tuple[str, int, Path], pki: Pki) -> None:  # noqa: F811
    target, metrics_port, _ = secured
    with RecommenderClient(target, tls_ca=pki.ca, token=TOKEN) as client:
        client.recommend(user_id_of_row(2), 3)
        with pytest.raises(InvalidArgumentError):
            client.recommend(user_id_of_row(2), 0)
        (bad,) = client.recommend_stream([StreamQuery("bad", user_id_of_row(2), k=0)])
        assert isinstance(bad, InvalidArgumentError)
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()

    def handled(method: str, code: str, prefix: str = "grpc_server_handled_total{") -> float:
        for line in text.splitlines():
            if line.startswith(prefix) and f'grpc_method="{method}"' in line and f'grpc_code="{code}"' in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    assert handled("Recommend", "OK") >= 1
    assert handled("Recommend", "INVALID_ARGUMENT") >= 1
    assert handled("RecommendStream", "INVALID_ARGUMENT", "movierec_stream_message_errors_total{") >= 1
    assert handled("RecommendStream", "OK") >= 1
    assert 'index_version="v0001"' in text
