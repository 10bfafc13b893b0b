"""The wire contract: the committed stubs match protos/, and the fixed fields have the agreed numbers and types."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor

from movierec.v1 import recommender_pb2 as pb

REPO = Path(__file__).resolve().parents[1]

INT64, INT32, STRING, FLOAT, MESSAGE = (
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_STRING,
    FieldDescriptor.TYPE_FLOAT,
    FieldDescriptor.TYPE_MESSAGE,
)
REQUEST_FIELDS = {"request_id": (1, STRING), "user_id": (2, INT64), "k": (3, INT32), "exclude_item_ids": (4, INT64)}
RESPONSE_FIELDS = {
    "request_id": (1, STRING),
    "items": (2, MESSAGE),
    "model_version": (3, STRING),
    "index_version": (4, STRING),
}
ITEM_FIELDS = {
    "item_id": (1, INT64),
    "score": (2, FLOAT),
    "rank": (3, INT32),
    "title": (4, STRING),
    "genres": (5, STRING),
    "year": (6, INT32),
}


def run_check(repo: Path) -> subprocess.CompletedProcess[str]:
    """``scripts/gen_protos.sh --check`` in ``repo`` with this interpreter's grpc_tools and mypy plugins."""
    return subprocess.run(
        ["bash", str(repo / "scripts" / "gen_protos.sh"), "--check"],
        capture_output=True,
        text=True,
        env={"PYTHON": sys.executable, "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        check=False,
    )


def test_committed_stubs_match_the_protos() -> None:
    """The CI guard itself: regenerating into a temporary folder gives the committed files byte for byte."""
    result = run_check(REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_mode_fails_on_a_stale_stub(tmp_path: Path) -> None:
    """--check must notice a difference, or the test above proves nothing."""
    copy = tmp_path / "repo"
    for part in ("protos", "scripts", "clients/generated"):
        shutil.copytree(REPO / part, copy / part)
    stub = copy / "clients/generated/movierec/v1/recommender_pb2.pyi"
    stub.write_text(stub.read_text() + "\n# edited by hand\n")
    result = run_check(copy)
    assert result.returncode == 1
    assert "stale" in result.stderr


def test_vendored_status_proto_is_the_one_the_runtime_uses() -> None:
    """buf reads protos/google/rpc/status.proto; Python uses googleapis-common-protos: they must be one file."""
    import google.rpc

    shipped = Path(next(iter(google.rpc.__path__))) / "status.proto"
    assert (REPO / "protos" / "google" / "rpc" / "status.proto").read_bytes() == shipped.read_bytes()


def _fields(message: type) -> dict[str, tuple[int, int]]:
    return {f.name: (f.number, f.type) for f in message.DESCRIPTOR.fields}  # type: ignore[attr-defined]


@pytest.mark.parametrize("request_type", [pb.RecommendRequest, pb.RecommendStreamRequest])
def test_requests_carry_the_contract_fields(request_type: type) -> None:
    assert REQUEST_FIELDS.items() <= _fields(request_type).items()


@pytest.mark.parametrize("response_type", [pb.RecommendResponse, pb.RecommendStreamResponse])
def test_responses_carry_the_contract_fields(response_type: type) -> None:
    assert RESPONSE_FIELDS.items() <= _fields(response_type).items()


def test_items_and_stream_errors_have_the_contract_shape() -> None:
    assert ITEM_FIELDS.items() <= _fields(pb.RecommendedItem).items()
    error = pb.RecommendStreamResponse.DESCRIPTOR.fields_by_name["error"]
    assert error.message_type is not None and error.message_type.full_name == "google.rpc.Status"


def test_service_methods_and_streaming_shape() -> None:
    service = pb.DESCRIPTOR.services_by_name["RecommenderService"]
    assert service.full_name == "movierec.v1.RecommenderService"
    methods = {m.name: m for m in service.methods}
    assert {"Recommend", "RecommendStream", "SimilarItems", "GetInfo"} <= methods.keys()
    unary, stream = methods["Recommend"], methods["RecommendStream"]
    assert (unary.client_streaming, unary.server_streaming) == (False, False)
    assert (stream.client_streaming, stream.server_streaming) == (True, True)
    assert stream.input_type.name == "RecommendStreamRequest"
    assert stream.output_type.name == "RecommendStreamResponse"


def test_issue_5_additions_keep_every_old_field_number() -> None:
    """Live events, cold start, reload, filters and because were added as new RPCs and fields only."""
    methods = {m.name: m for m in pb.DESCRIPTOR.services_by_name["RecommenderService"].methods}
    for name in ("RecordInteractions", "RecommendForItems", "ReloadIndex"):
        assert (methods[name].client_streaming, methods[name].server_streaming) == (False, False)
    for request in (pb.RecommendRequest, pb.RecommendStreamRequest):
        fields = request.DESCRIPTOR.fields_by_name
        assert [fields[n].number for n in ("request_id", "user_id", "k", "exclude_item_ids")] == [1, 2, 3, 4]
        assert (fields["filter"].number, fields["explain"].number) == (5, 6)
    because = pb.RecommendedItem.DESCRIPTOR.fields_by_name["because_item_id"]
    assert because.number == 7 and because.has_presence  # absent, not 0, when there is no because item
