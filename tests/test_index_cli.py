"""``recctl index build | rebuild | info`` through the real entry point: output, JSON, and one-line errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from bundle_factory import make_bundle, make_model_bundle

from movierec.bundle import VersionedStore, write_model_bundle

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return make_model_bundle(tmp_path / "model", n_users=8, n_items=30, dim=4, seen_per_user=3, seed=0)


def test_build_then_info(recctl: Run, model: Path, tmp_path: Path) -> None:
    root = tmp_path / "index"
    code, out, _err = recctl("index", "build", "--model", model, "--out", root)
    assert code == 0 and "v0001" in out and "CURRENT now points at it" in out
    hnsw_options = ("--kind", "hnsw", "--hnsw-m", "8", "--no-switch", "--json")
    code, out, _err = recctl("index", "build", "--model", model, "--out", root, *hnsw_options)
    built = json.loads(out)
    assert code == 0 and built["version"] == "v0002" and built["kind"] == "hnsw" and not built["current"]
    assert VersionedStore(root).current_version() == "v0001"
    code, out, _err = recctl("index", "info", "--index", root)
    assert code == 0 and "current = v0001" in out and "hnsw" in out
    code, out, _err = recctl("index", "info", "--index", root, "--json")
    info = json.loads(out)
    assert info["current"] == "v0001"
    assert [(v["version"], v["kind"], v["n_items"], v["ok"]) for v in info["versions"]] == [
        ("v0001", "flat", 30, True),
        ("v0002", "hnsw", 30, True),
    ]


def test_rebuild_switches_current_to_the_new_version(recctl: Run, model: Path, tmp_path: Path) -> None:
    root = tmp_path / "index"
    recctl("index", "build", "--model", model, "--out", root)
    code, out, _err = recctl("index", "rebuild", "--models", tmp_path, "--out", root, "--json")
    assert code == 0 and json.loads(out)["version"] == "v0002"
    assert VersionedStore(root).current_version() == "v0002"


def test_info_shows_a_corrupt_version_with_its_reason(recctl: Run, model: Path, tmp_path: Path) -> None:
    root = tmp_path / "index"
    recctl("index", "build", "--model", model, "--out", root)
    (root / "v0001" / "model" / "user_vectors.npy").write_bytes(b"x")
    code, out, _err = recctl("index", "info", "--index", root)
    assert code == 0 and "CORRUPT" in out and "user_vectors.npy" in out


def test_a_corrupt_model_is_one_line_naming_the_file(recctl: Run, model: Path, tmp_path: Path) -> None:
    (model / "seen_indptr.npy").write_bytes(b"broken")
    code, out, err = recctl("index", "build", "--model", model, "--out", tmp_path / "index")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "seen_indptr.npy" in err and "Traceback" not in err
    assert VersionedStore(tmp_path / "index").versions() == []


def test_ranked_depth_is_what_build_and_rebuild_store_and_info_shows(recctl: Run, model: Path, tmp_path: Path) -> None:
    root = tmp_path / "index"
    assert recctl("index", "build", "--model", model, "--out", root, "--ranked-depth", "5")[0] == 0
    assert recctl("index", "build", "--model", model, "--out", root, "--ranked-depth", "0")[0] == 0
    assert recctl("index", "rebuild", "--models", tmp_path, "--out", root, "--ranked-depth", "7")[0] == 0
    code, out, _err = recctl("index", "info", "--index", root, "--json")
    versions = json.loads(out)["versions"]
    assert code == 0 and [v["ranked_depth"] for v in versions] == [5, 0, 7]
    for version in versions:
        stored = sorted((root / version["version"]).glob("ranked_*.npy"))
        assert version["ranked_bytes"] == sum(path.stat().st_size for path in stored)
        assert bool(stored) == bool(version["ranked_depth"])
    code, out, _err = recctl("index", "info", "--index", root)
    rows = {line.lstrip("* ").split()[0]: line for line in out.splitlines() if " v000" in line}
    assert "depth 5, 0.0 MiB" in rows["v0001"] and "depth 7, 0.0 MiB" in rows["v0003"] and "MiB" not in rows["v0002"]
    with pytest.raises(SystemExit) as caught:
        recctl("index", "build", "--model", model, "--out", root, "--ranked-depth", "-1")
    assert caught.value.code == 2


def test_ranked_depth_help_shows_the_index_layer_default(recctl: Run, capsys: pytest.CaptureFixture[str]) -> None:
    from movierec.index.ranked import DEFAULT_DEPTH

    for action in ("build", "rebuild"):
        with pytest.raises(SystemExit):
            recctl("index", action, "--help")
        assert f"(default {DEFAULT_DEPTH})" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("index", "build", "--model", "{model}", "--out", "{out}", "--ef-search", "5"), "need --kind hnsw"),
        (("index", "build", "--model", "{out}/nothing", "--out", "{out}"), "not a directory"),
        (("index", "rebuild", "--models", "{out}/nothing", "--out", "{out}"), "no such models directory"),
        (("index", "info", "--index", "{out}/nothing"), "no such index store"),
        (("index", "build", "--model", "{model}", "--out", "{out}", "--kind", "hnsw", "--hnsw-m", "0"), "positive"),
    ],
)
def test_user_errors_exit_1_with_one_line(
    recctl: Run, model: Path, tmp_path: Path, argv: tuple[str, ...], message: str
) -> None:
    code, _out, err = recctl(*(a.format(model=model, out=tmp_path) for a in argv))
    assert code == 1 and message in err and err.count("\n") == 1


def test_argument_errors_exit_2(recctl: Run, model: Path) -> None:
    with pytest.raises(SystemExit) as caught:
        recctl("index", "build", "--model", model, "--out", "x", "--kind", "ivf")
    assert caught.value.code == 2


def test_info_flattens_nested_model_metrics(recctl: Run, tmp_path: Path) -> None:
    bundle = replace(make_bundle(4, 10, 3, 2, 0), metrics={"test": {"recall@10": 0.25, "ndcg@10": 0.125}, "epochs": 7})
    write_model_bundle(bundle, tmp_path / "model")
    recctl("index", "build", "--model", tmp_path / "model", "--out", tmp_path / "index")
    code, out, _err = recctl("index", "info", "--index", tmp_path / "index")
    assert code == 0 and "epochs=7 test.ndcg@10=0.1250 test.recall@10=0.2500" in out


def test_info_shows_recall_at_20_first(recctl: Run, tmp_path: Path) -> None:
    metrics = {"ndcg@10": 0.2, "ndcg@20": 0.25, "precision@10": 0.1, "recall@10": 0.2, "recall@20": 0.3125}
    write_model_bundle(replace(make_bundle(4, 10, 3, 2, 0), metrics=metrics), tmp_path / "model")
    recctl("index", "build", "--model", tmp_path / "model", "--out", tmp_path / "index")
    code, out, _err = recctl("index", "info", "--index", tmp_path / "index")
    assert code == 0 and "recall@20=0.3125 ndcg@20=0.2500" in out and "precision@10" not in out


@pytest.mark.parametrize("folder", ["empty", "index/v0001", "model"])
def test_info_refuses_a_folder_that_is_not_an_index_store(
    recctl: Run, model: Path, tmp_path: Path, folder: str
) -> None:
    recctl("index", "build", "--model", model, "--out", tmp_path / "index")
    (tmp_path / "empty").mkdir()
    code, out, err = recctl("index", "info", "--index", tmp_path / folder)
    assert code == 1 and out == "" and err.count("\n") == 1 and "not an index store" in err


def test_prune(recctl: Run, model: Path, tmp_path: Path) -> None:
    root = tmp_path / "index"
    for _ in range(3):
        recctl("index", "build", "--model", model, "--out", root, "--json")
    code, out, _err = recctl("index", "prune", "--index", root, "--keep", "1", "--json")
    assert code == 0 and json.loads(out) == {"removed": ["v0001", "v0002"]}
    code, _out, err = recctl("index", "prune", "--index", root, "--keep", "0")
    assert code == 1 and "keep must be at least 1" in err
