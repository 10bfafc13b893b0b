#!/usr/bin/env bash
# mypy --strict over the package, its tests and benchmarks.
# The package maps layer folders (trainer/, index/, ...) into one namespace through setuptools'
# package-dir, which mypy cannot follow; so mypy reads a throw-away tree of symlinks laid out the
# way the code is imported (build/typecheck/movierec/trainer/...), and reports paths in that layout.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
tree=build/typecheck
# Updated in place (never removed) so that concurrent runs do not pull the tree from under each other.
mkdir -p "$tree/movierec"
find "$tree" -xtype l -delete
for entry in movierec/*; do
    ln -sfn "$repo/$entry" "$tree/movierec/$(basename "$entry")"
done
for layer in trainer index server clients; do
    ln -sfn "$repo/$layer" "$tree/movierec/$layer"
done
ln -sfn "$repo/clients/generated/movierec/v1" "$tree/movierec/v1"
for extra in tests benchmarks scripts; do
    if [ -d "$extra" ]; then ln -sfn "$repo/$extra" "$tree/$extra"; fi
done
cd "$tree"
mapfile -t sources < <(find -L . -name '*.py' -not -path '*/generated/*' -not -path './movierec/v1/*' -not -path '*/__pycache__/*' | sort)
exec "$repo/.venv/bin/mypy" --config-file "$repo/pyproject.toml" "${sources[@]}"
