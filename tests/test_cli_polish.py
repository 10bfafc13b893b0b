"""What a new user sees of ``recctl``: help texts, the tables of recommend/similar/info, --json, serve's checks."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from bundle_factory import item_id_of_row, make_bundle, user_id_of_row
from server_harness import ServerThread, serving

from movierec.bundle import write_model_bundle
from movierec.clients.cli import main as cli
from movierec.clients.cli.help import HelpFormatter
from movierec.index import build_index, open_index
from movierec.server.app import ServerConfig

K = 4
METRICS = {"recall@20": 0.304938, "users_evaluated": 6022, "training": {"seconds": 122.5312}}


@pytest.fixture(scope="module")
def index_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("polish")
    write_model_bundle(replace(make_bundle(8, 40, 4, 4, 0), metrics=METRICS), root / "model")
    build_index(root / "model", root / "index")
    return root / "index"


@pytest.fixture(scope="module")
def server(index_root: Path) -> Iterator[ServerThread]:
    with serving(ServerConfig(index_root, poll_seconds=0)) as running:
        yield running


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as shown:
        cli.main([*argv, "--help"])
    assert shown.value.code == 0
    return capsys.readouterr().out


def _every_parser(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _every_parser(sub, (*path, name))


def test_top_level_help_describes_the_tool_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys)
    assert "Entry point" not in text  # not the module docstring
    assert "trains LightGCN" in text and "serves them over gRPC" in text
    assert "recctl recommend --user 1" in text and "recctl serve --index" in text


def test_every_option_with_a_default_names_it_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    parser = cli.build_parser()
    commands = [path for path in _every_parser(parser) if path]
    assert {("recommend",), ("serve",), ("index", "build"), ("data", "stats"), ("train",)} <= set(commands)
    for command in commands:
        sub = parser
        for name in command:
            sub = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
        assert isinstance(sub.formatter_class(prog="x"), HelpFormatter), command
        assert sub.description, f"recctl {' '.join(command)} --help has no description"
        _help(capsys, *command)  # renders without error
        for action in sub._actions:
            has_default = action.default not in (None, False, [], "", argparse.SUPPRESS)
            if action.option_strings and action.help and has_default:
                rendered = sub._get_formatter()._expand_help(action)
                assert "default" in rendered, (command, rendered)


def test_data_default_is_named_precisely(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOVIEREC_DATA", "/some/where/ml-1m")
    text = " ".join(_help(capsys, "data", "stats").split())
    assert "$MOVIEREC_DATA = /some/where/ml-1m" in text
    monkeypatch.delenv("MOVIEREC_DATA")
    monkeypatch.setattr("movierec.clients.cli.help.default_ml1m_dir", lambda: Path("/shared/copy/ml-1m"))
    text = " ".join(_help(capsys, "data", "split").split())
    assert "$MOVIEREC_DATA (unset), else the shared MovieLens-1M copy at /shared/copy/ml-1m" in text


def test_recommend_table_shows_year_and_the_because_movie_by_title(
    server: ServerThread, index_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    user = user_id_of_row(2)
    code, out, _err = _run(capsys, "recommend", "--server", server.target, "--user", str(user), "-k", str(K))
    assert code == 0
    header, _rule, *rows = out.splitlines()[1:]
    assert header.split()[:4] == ["rank", "title", "year", "genres"] and header.rstrip().endswith("because you liked")
    model = open_index(index_root).model
    titles = dict(zip(model.item_ids.tolist(), model.items.titles, strict=True))
    years = dict(zip(model.item_ids.tolist(), model.items.years, strict=True))
    code, out, _err = _run(capsys, "recommend", "--server", server.target, "--user", str(user), "-k", str(K), "--json")
    items = json.loads(out)["items"]
    assert len(rows) == len(items) == K
    for row, item in zip(rows, items, strict=True):
        because = item["because_item_id"]
        assert str(years[item["item_id"]]) in row
        assert row.rstrip().endswith(f"{titles[because]} (movie {because})"), row


def test_similar_names_the_query_movie_by_title(
    server: ServerThread, index_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    item = item_id_of_row(5)
    code, out, _err = _run(capsys, "similar", "--server", server.target, "--item", str(item), "-k", str(K))
    title = open_index(index_root).model.items.titles[5]
    assert code == 0 and out.splitlines()[0].startswith(f"{K} movies similar to {title} (movie {item})")
    assert "because" not in out.splitlines()[1]  # similar has no "because": no empty column


def test_liked_heading_names_the_movies(server: ServerThread, capsys: pytest.CaptureFixture[str]) -> None:
    liked = [item_id_of_row(1), item_id_of_row(3)]
    code, out, _err = _run(capsys, "recommend", "--server", server.target, "--liked", *map(str, liked), "-k", "2")
    assert code == 0 and out.startswith(f"Top 2 for someone who liked Movie {liked[0]} (")


@pytest.mark.parametrize(
    "command", [("recommend", "--user", str(user_id_of_row(1))), ("similar", "--item", str(item_id_of_row(0)))]
)
def test_json_has_no_empty_request_id(
    server: ServerThread, capsys: pytest.CaptureFixture[str], command: tuple[str, ...]
) -> None:
    code, out, _err = _run(capsys, *command, "--server", server.target, "-k", "2", "--json")
    answer = json.loads(out)
    assert code == 0 and "request_id" not in answer and len(answer["items"]) == 2


def test_info_prints_integers_as_integers_and_rounds_floats(
    server: ServerThread, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _err = _run(capsys, "info", "--server", server.target)
    rows = {line.split()[-2] if line.startswith("metric") else "": line.split()[-1] for line in out.splitlines()}
    assert code == 0 and rows["users_evaluated"] == "6022" and rows["recall@20"] == "0.3049"
    assert not re.search(r"\d\.0\b", out), out  # no "8.0", "40.0"


def test_serve_refuses_a_missing_index_before_it_listens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], index_root: Path
) -> None:
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "nothing", tmp_path / "empty", index_root.parent / "model"):
        code, out, err = _run(capsys, "serve", "--index", str(path), "--port", "0")
        assert code == 1 and out == "" and err.count("\n") == 1 and str(path) in err, err


def test_serve_accepts_a_store_and_a_version(index_root: Path) -> None:
    from movierec.clients.cli.serve_cmd import check_index_path

    check_index_path(index_root)
    check_index_path(index_root / "v0001")


def test_demo_prints_the_metrics_table_once() -> None:
    """`recctl train` and `recctl evaluate` print the same test-metrics table; the demo runs one of them."""
    demo = (Path(__file__).parent.parent / "scripts" / "demo.sh").read_text()
    commands = [line for line in demo.splitlines() if re.match(r'\s*"\$recctl" (train|evaluate)\b', line)]
    assert len([line for line in commands if "--json" not in line]) == 1, commands


def test_title_lookup_is_best_effort(index_root: Path, server: ServerThread) -> None:
    """Within max_k every title is found; beyond it (or when a call fails) the id stays unnamed, never an error."""
    from movierec.clients import RecommenderClient
    from movierec.clients.cli.query_cmd import look_up_titles
    from movierec.server.limits import Limits

    model = open_index(index_root).model
    ids = model.item_ids.tolist()
    with RecommenderClient(server.target, timeout=5) as client:
        assert look_up_titles(client, set(ids[1:]), anchors=[ids[0]]) == dict(
            zip(ids[1:], model.items.titles[1:], strict=True)
        )
        assert look_up_titles(client, {ids[1]}, anchors=[7]) == {}  # 7: no such movie (NOT_FOUND)
    capped = ServerThread(ServerConfig(index_root, poll_seconds=0, limits=Limits(max_k=2)))
    try:
        capped.start_loading().result(30)
        with RecommenderClient(capped.target, timeout=5) as client:
            nearest = {item.item_id for item in client.similar_items(ids[0], 2).items}
            assert look_up_titles(client, set(ids[1:]), anchors=[ids[0]]).keys() == nearest
    finally:
        capped.stop()
