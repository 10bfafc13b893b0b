#!/usr/bin/env bash
# Generate the Python stubs for protos/movierec/v1 into clients/generated/
# (installed as the package movierec.v1), with typed .pyi stubs from mypy-protobuf.
#
#   scripts/gen_protos.sh           regenerate in place
#   scripts/gen_protos.sh --check   regenerate into a temporary folder and fail (exit 1)
#                                   if the committed stubs differ: the CI guard that the
#                                   stubs match the .proto files.
#
# The output depends on the grpcio-tools and mypy-protobuf versions, so CI must
# use the versions the committed stubs were made with (see the header of
# clients/generated/movierec/v1/recommender_pb2.py).
# google/rpc/status.proto is only imported: its Python module comes from
# googleapis-common-protos at run time, so it is not generated here.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
plugin="$(dirname "$python")/protoc-gen-mypy"
plugin_grpc="$(dirname "$python")/protoc-gen-mypy_grpc"
committed="$root/clients/generated"

generate() {
    local out="$1"
    (cd "$root/protos" && "$python" -m grpc_tools.protoc \
        -I . \
        --plugin=protoc-gen-mypy="$plugin" \
        --plugin=protoc-gen-mypy_grpc="$plugin_grpc" \
        --python_out="$out" \
        --grpc_python_out="$out" \
        --mypy_out="$out" \
        --mypy_grpc_out="$out" \
        movierec/v1/*.proto)
}

case "${1:-}" in
    "")
        generate "$committed"
        echo "stubs written to ${committed#"$root"/}/movierec/v1"
        ;;
    --check)
        scratch="$(mktemp -d)"
        trap 'rm -rf "$scratch"' EXIT
        generate "$scratch"
        if ! diff -ru --exclude='__init__.py' --exclude='py.typed' --exclude='__pycache__' \
            "$committed/movierec/v1" "$scratch/movierec/v1"; then
            echo "generated stubs are stale: run scripts/gen_protos.sh and commit the result" >&2
            exit 1
        fi
        echo "generated stubs match protos/"
        ;;
    *)
        echo "usage: $0 [--check]" >&2
        exit 2
        ;;
esac
