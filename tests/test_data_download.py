"""``download_ml1m``: local zip, resume over HTTP Range, checksum mismatch, offline, unsafe archives.

Every URL points at 127.0.0.1: these tests never leave the machine.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import socket
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from movierec.errors import DataError
from movierec.trainer.data import load_dataset
from movierec.trainer.data.download import download_ml1m

RATINGS = "".join(f"{u}::{i}::{(u + i) % 5 + 1}::{1000 + i}\n" for u in range(1, 30) for i in range(1, 40))


def make_zip(extra: dict[str, str] | None = None) -> bytes:
    """A small stand-in for ml-1m.zip, laid out like the real one (everything under ml-1m/)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("ml-1m/", "")
        archive.writestr("ml-1m/ratings.dat", RATINGS)
        archive.writestr("ml-1m/movies.dat", "1::Toy Story (1995)::Animation\n")
        for name, text in (extra or {}).items():
            archive.writestr(name, text)
    return buffer.getvalue()


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


class RangeServer:
    """Serves one payload; honours ``Range: bytes=N-`` unless told not to; can cut a response short."""

    def __init__(self, payload: bytes, *, honour_range: bool = True, cut_after: int | None = None) -> None:
        self.payload = payload
        self.honour_range = honour_range
        self.cut_after = cut_after
        self.ranges: list[str | None] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/ml-1m.zip":
                    self.send_error(404)
                    return
                requested = self.headers.get("Range")
                outer.ranges.append(requested)
                start = 0
                if requested and outer.honour_range:
                    start = int(requested.removeprefix("bytes=").rstrip("-"))
                    if start >= len(outer.payload):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(outer.payload)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(outer.payload) - 1}/{len(outer.payload)}")
                else:
                    self.send_response(200)
                body = outer.payload[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if outer.cut_after is not None:
                    body = body[: outer.cut_after]
                    outer.cut_after = None  # only the first response is cut
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ml-1m.zip"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> RangeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Keep urllib from routing 127.0.0.1 through a proxy configured in the environment."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    yield


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_from_zip_verifies_and_extracts_loadable_data(tmp_path: Path) -> None:
    data = make_zip()
    archive = tmp_path / "copy.zip"
    archive.write_bytes(data)
    result = download_ml1m(tmp_path / "dest", from_zip=archive, md5=md5(data), progress=False)
    assert result.path == tmp_path / "dest" / "ml-1m"
    assert (result.path / "ratings.dat").read_text() == RATINGS
    assert len(load_dataset(result.path).ratings) == RATINGS.count("\n")
    assert archive.exists()  # the user's own copy is left alone


def test_from_zip_with_wrong_checksum_leaves_nothing(tmp_path: Path) -> None:
    archive = tmp_path / "copy.zip"
    archive.write_bytes(make_zip())
    with pytest.raises(DataError, match=r"checksum mismatch .* expected 0{32}; nothing was extracted"):
        download_ml1m(tmp_path / "dest", from_zip=archive, md5="0" * 32, progress=False)
    assert not (tmp_path / "dest").exists()


def test_default_checksum_is_read_at_call_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from movierec.trainer.data import download

    data = make_zip()
    archive = tmp_path / "copy.zip"
    archive.write_bytes(data)
    with pytest.raises(DataError, match=f"expected {download.ML1M_MD5}"):
        download_ml1m(tmp_path / "a", from_zip=archive, progress=False)
    monkeypatch.setattr(download, "ML1M_MD5", md5(data))
    assert download_ml1m(tmp_path / "b", from_zip=archive, progress=False).md5 == md5(data)


def test_fresh_download_over_http(tmp_path: Path) -> None:
    data = make_zip()
    with RangeServer(data) as server:
        result = download_ml1m(tmp_path, url=server.url, md5=md5(data), progress=False)
    assert server.ranges == [None]
    assert (result.resumed_from, result.fetched) == (0, len(data))
    assert (tmp_path / "ml-1m" / "ratings.dat").read_text() == RATINGS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ml-1m"]  # no .part or staging left


def test_partial_download_resumes_with_range(tmp_path: Path) -> None:
    data = make_zip()
    half = len(data) // 2
    (tmp_path / "ml-1m.zip.part").write_bytes(data[:half])
    with RangeServer(data) as server:
        result = download_ml1m(tmp_path, url=server.url, md5=md5(data), progress=False)
    assert server.ranges == [f"bytes={half}-"]
    assert (result.resumed_from, result.fetched) == (half, len(data) - half)
    assert (tmp_path / "ml-1m" / "ratings.dat").read_text() == RATINGS


def test_interrupted_download_keeps_the_part_and_the_next_run_resumes(tmp_path: Path) -> None:
    data = make_zip()
    with RangeServer(data, cut_after=1000) as server:
        with pytest.raises(DataError, match=r"interrupted .* run the same command again to resume"):
            download_ml1m(tmp_path, url=server.url, md5=md5(data), progress=False, timeout=5)
        assert (tmp_path / "ml-1m.zip.part").stat().st_size == 1000
        assert not (tmp_path / "ml-1m").exists()
        download_ml1m(tmp_path, url=server.url, md5=md5(data), progress=False)
    assert server.ranges == [None, "bytes=1000-"]
    assert (tmp_path / "ml-1m" / "ratings.dat").read_text() == RATINGS


def test_server_ignoring_range_restarts_cleanly(tmp_path: Path) -> None:
    data = make_zip()
    (tmp_path / "ml-1m.zip.part").write_bytes(b"stale bytes from another file")
    with RangeServer(data, honour_range=False) as server:
        result = download_ml1m(tmp_path, url=server.url, md5=md5(data), progress=False)
    assert result.resumed_from == 0 and (tmp_path / "ml-1m" / "ratings.dat").is_file()


def test_complete_part_is_not_fetched_again(tmp_path: Path) -> None:
    data = make_zip()
    (tmp_path / "ml-1m.zip.part").write_bytes(data)
    with RangeServer(data) as server:
        result = download_ml1m(tmp_path, url=server.url, md5=md5(data), progress=False)
    assert result.fetched == 0 and server.ranges == [f"bytes={len(data)}-"]


def test_corrupt_download_is_removed_and_nothing_extracted(tmp_path: Path) -> None:
    data = make_zip()
    with RangeServer(data) as server, pytest.raises(DataError, match=r"checksum mismatch .* download was removed"):
        download_ml1m(tmp_path, url=server.url, md5="f" * 32, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_server_says_how_to_proceed(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/ml-1m.zip"
    with pytest.raises(DataError) as err:
        download_ml1m(tmp_path / "dest", url=url, md5="0" * 32, progress=False, timeout=5)
    message = str(err.value)
    assert message.startswith(f"cannot reach {url}: ")
    assert message.endswith("download ml-1m.zip elsewhere and pass --from-zip")
    assert not (tmp_path / "dest").exists()


def test_http_error_is_reported(tmp_path: Path) -> None:
    data = make_zip()
    with RangeServer(data) as server, pytest.raises(DataError, match="HTTP 404"):
        download_ml1m(tmp_path, url=server.url.replace("ml-1m.zip", "missing.zip"), md5=md5(data), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_existing_dataset_needs_force(tmp_path: Path) -> None:
    data = make_zip()
    archive = tmp_path / "copy.zip"
    archive.write_bytes(data)
    (tmp_path / "ml-1m").mkdir()
    (tmp_path / "ml-1m" / "keep.txt").write_text("old")
    with pytest.raises(DataError, match="already exists"):
        download_ml1m(tmp_path, from_zip=archive, md5=md5(data), progress=False)
    assert (tmp_path / "ml-1m" / "keep.txt").exists()
    download_ml1m(tmp_path, from_zip=archive, md5=md5(data), progress=False, force=True)
    assert not (tmp_path / "ml-1m" / "keep.txt").exists() and (tmp_path / "ml-1m" / "ratings.dat").exists()


@pytest.mark.parametrize("bad_name", ["../escape.txt", "/etc/evil", "ml-1m/../../evil", "C:/evil"])
def test_unsafe_member_paths_are_refused(tmp_path: Path, bad_name: str) -> None:
    data = make_zip({bad_name: "x"})
    archive = tmp_path / "bad.zip"
    archive.write_bytes(data)
    with pytest.raises(DataError, match="unsafe path in the archive"):
        download_ml1m(tmp_path / "dest", from_zip=archive, md5=md5(data), progress=False)
    assert not (tmp_path / "dest").exists() and not (tmp_path / "escape.txt").exists()


def test_symlink_member_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("ml-1m/ratings.dat", RATINGS)
        link = zipfile.ZipInfo("ml-1m/movies.dat")
        link.external_attr = 0o120777 << 16
        archive.writestr(link, "/etc/passwd")
    path = tmp_path / "link.zip"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(DataError, match="unsafe path"):
        download_ml1m(tmp_path / "dest", from_zip=path, md5=md5(buffer.getvalue()), progress=False)


def test_not_a_zip_or_no_ratings(tmp_path: Path) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match="not a readable zip archive"):
        download_ml1m(tmp_path / "a", from_zip=junk, md5=md5(junk.read_bytes()), progress=False)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("ml-1m/README", "hi")
    empty = tmp_path / "empty.zip"
    empty.write_bytes(buffer.getvalue())
    with pytest.raises(DataError, match=r"holds no ratings\.dat"):
        download_ml1m(tmp_path / "b", from_zip=empty, md5=md5(buffer.getvalue()), progress=False)
    assert not (tmp_path / "b").exists() or list((tmp_path / "b").iterdir()) == []


def test_missing_local_zip(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read: No such file"):
        download_ml1m(tmp_path / "dest", from_zip=tmp_path / "absent.zip", md5="0" * 32, progress=False)
    assert not (tmp_path / "dest").exists()
