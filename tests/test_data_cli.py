"""``recctl data``: JSON and table output, one-line errors with exit 1, download via --from-zip.

Only the data command module is registered here, so these tests do not depend
on the other command groups being importable.
"""

from __future__ import annotations

import hashlib
import io
import json
import socket
import zipfile
from pathlib import Path

import pytest

from movierec.clients.cli import main

RATINGS_DAT = "1::10::5::100\n1::20::3::101\n2::10::4::102\n2::30::4::103\n3::20::2::104\n3::30::5::105\n"


@pytest.fixture(autouse=True)
def data_command_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(main, "COMMAND_MODULES", ("movierec.clients.cli.data_cmd",))


def recctl(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_dat(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_text(RATINGS_DAT)
    (folder / "movies.dat").write_text("10::Heat (1995)::Action\n20::Up (2009)::Animation\n")
    return folder


def test_stats_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = recctl(capsys, "data", "stats", "--data", str(write_dat(tmp_path / "d")), "--json")
    assert code == 0
    stats = json.loads(out)
    assert {k: stats[k] for k in ("ratings", "users", "items", "movies", "positives")} == {
        "ratings": 6, "users": 3, "items": 3, "movies": 2, "positives": 4,
    }  # fmt: skip
    assert stats["rating_histogram"] == {"2": 1, "3": 1, "4": 2, "5": 2}
    assert (stats["first_timestamp"], stats["last_timestamp"]) == (100, 105)
    assert stats["format"] == "ml-dat" and len(stats["sha256"]) == 64


def test_stats_min_rating(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = str(write_dat(tmp_path / "d"))
    _, out, _ = recctl(capsys, "data", "stats", "--data", folder, "--min-rating", "5", "--json")
    assert json.loads(out)["positives"] == 2


def test_stats_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = recctl(capsys, "data", "stats", "--data", str(write_dat(tmp_path / "d")))
    assert code == 0
    lines = {line.split("  ")[0].strip(): line.split()[-1] for line in out.splitlines()[2:]}
    assert lines["ratings"] == "6" and lines["positives (rating >= 4)"] == "4" and lines["rating 5"] == "2"
    assert "1970-01-01 00:01:40 UTC" in out


def test_stats_on_a_generic_table_with_column_mapping(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = tmp_path / "t.tsv"
    table.write_text("who\twhat\tstars\n1\t2\t4\n1\t3\t5\n2\t2\t1\n")
    code, out, _ = recctl(
        capsys, "data", "stats", "--data", str(table), "--format", "table",
        "--columns", "user=who,item=what,rating=stars", "--json",
    )  # fmt: skip
    assert code == 0
    stats = json.loads(out)
    assert (stats["ratings"], stats["users"], stats["items"], stats["first_timestamp"]) == (3, 2, 2, None)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--data", "{tmp}/missing"], "missing: no such file or folder"),
        (["--data", "{tmp}/bad"], "ratings.dat:2: rating must be a number in [0, 10], got '12'"),
        (["--data", "{tmp}/bad", "--format", "nope"], "unknown format 'nope'"),
        (["--data", "{tmp}/bad", "--columns", "user"], "--columns expects ROLE=NAME"),
    ],
)
def test_stats_errors_are_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "ratings.dat").write_text("1::10::5::100\n1::11::12::101\n")
    code, out, err = recctl(capsys, "data", "stats", *[a.format(tmp=tmp_path) for a in argv])
    assert code == 1 and out == ""
    assert err.startswith("recctl: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_split_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = str(write_dat(tmp_path / "d"))
    code, out, _ = recctl(capsys, "data", "split", "--data", folder, "--test-fraction", "0.25", "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["train"] + summary["test"] == 4 and summary["test"] == 1 and summary["seen"] == 6
    assert summary["protocol"]["seed"] == 42 and summary["protocol"]["test_fraction"] == 0.25


def test_split_refuses_bad_fraction(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = str(write_dat(tmp_path / "d"))
    code, _, err = recctl(capsys, "data", "split", "--data", folder, "--test-fraction", "1.5")
    assert code == 1 and "test fraction must be between 0 and 1" in err


def ml1m_like_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("ml-1m/ratings.dat", RATINGS_DAT)
    return buffer.getvalue()


def test_download_from_zip(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from movierec.trainer.data import download

    data = ml1m_like_zip()
    archive = tmp_path / "ml-1m.zip"
    archive.write_bytes(data)
    monkeypatch.setattr(download, "ML1M_MD5", hashlib.md5(data, usedforsecurity=False).hexdigest())
    dest = tmp_path / "dest"
    argv = ["data", "download", "ml-1m", "--dest", str(dest), "--from-zip", str(archive)]
    code, out, _ = recctl(capsys, *argv, "--json")
    assert code == 0
    assert json.loads(out)["path"] == str(dest / "ml-1m")
    assert (dest / "ml-1m" / "ratings.dat").read_text() == RATINGS_DAT
    code, _, err = recctl(capsys, *argv)
    assert code == 1 and "already exists (pass --force to replace it)" in err


def test_download_from_zip_with_the_wrong_checksum(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = tmp_path / "ml-1m.zip"
    archive.write_bytes(ml1m_like_zip())
    code, _, err = recctl(
        capsys, "data", "download", "ml-1m", "--dest", str(tmp_path / "d"), "--from-zip", str(archive)
    )
    assert code == 1 and "checksum mismatch" in err and "c4d9eecfca2ab87c1945afe126590906" in err
    assert not (tmp_path / "d").exists()


def test_download_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from movierec.trainer.data import download

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(download, "ML1M_URL", f"http://127.0.0.1:{port}/ml-1m.zip")
    monkeypatch.setenv("no_proxy", "*")
    code, _, err = recctl(capsys, "data", "download", "ml-1m", "--dest", str(tmp_path / "d"))
    assert code == 1
    assert err.startswith(f"recctl: error: cannot reach http://127.0.0.1:{port}/ml-1m.zip: ")
    assert err.rstrip().endswith("download ml-1m.zip elsewhere and pass --from-zip")
