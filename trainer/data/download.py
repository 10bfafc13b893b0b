"""Fetch MovieLens-1M from GroupLens: resumable, checksum-verified, extracted atomically.

The download goes to ``DEST/ml-1m.zip.part``; a second run sends an HTTP
``Range`` request and appends, so an interrupted download is never started
over. Only after the whole file matches the published MD5 is it extracted,
into a staging folder that is renamed to ``DEST/ml-1m`` at the end: a crash or
a bad archive never leaves a half dataset where the loaders would find it.
Offline, the error says how to proceed (``--from-zip`` with a copy fetched
elsewhere). Only the standard library is used (urllib, zipfile).
"""

from __future__ import annotations

import hashlib
import shutil
import stat
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from movierec.bundle import staged_directory
from movierec.errors import DataError
from movierec.progress import progress_bar

ML1M_URL = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
ML1M_MD5 = "c4d9eecfca2ab87c1945afe126590906"
"""Published by GroupLens next to the download."""
ML1M_NAME = "ml-1m"
MAX_EXTRACTED_BYTES = 2 * 1024**3
"""Refuse archives that would unpack to more than this (ML-1M unpacks to about 25 MB)."""
_CHUNK = 1 << 16


@dataclass(frozen=True)
class DownloadResult:
    """Where the dataset landed and how it got there."""

    path: Path
    source: str
    md5: str
    resumed_from: int
    fetched: int


def download_ml1m(
    dest: Path | str,
    *,
    from_zip: Path | str | None = None,
    url: str | None = None,
    md5: str | None = None,
    force: bool = False,
    progress: bool = True,
    timeout: float = 30.0,
) -> DownloadResult:
    """Put MovieLens-1M in ``DEST/ml-1m`` from GroupLens (or from a local zip) and return where.

    ``url`` and ``md5`` default to :data:`ML1M_URL` and :data:`ML1M_MD5` (read at
    call time, so tests can point them at a local server and a test archive).
    An existing ``DEST/ml-1m`` is only replaced with ``force``.
    """
    url = url or ML1M_URL
    md5 = md5 or ML1M_MD5
    dest = Path(dest)
    final = dest / ML1M_NAME
    if final.exists() and not force:
        raise DataError("already exists (pass --force to replace it)", path=final)
    if from_zip is not None:
        archive = Path(from_zip)
        _verify_md5(archive, md5, source=str(archive), remove_on_mismatch=False)
        _extract(archive, final, force=force)
        return DownloadResult(final, str(archive), md5, resumed_from=0, fetched=0)
    part = dest / f"{ML1M_NAME}.zip.part"
    resumed_from, fetched = fetch_resumable(url, part, progress=progress, timeout=timeout)
    _verify_md5(part, md5, source=url, remove_on_mismatch=True)
    _extract(part, final, force=force)
    part.unlink()
    return DownloadResult(final, url, md5, resumed_from=resumed_from, fetched=fetched)


def fetch_resumable(url: str, part: Path, *, progress: bool, timeout: float) -> tuple[int, int]:
    """Download ``url`` into ``part``, continuing from its current size; returns (resumed_from, fetched).

    A server that ignores ``Range`` (status 200) makes the download start over;
    status 416 for a non-empty ``part`` means there is nothing left to fetch.
    An interrupted transfer keeps ``part`` so the next call resumes it.
    """
    existing = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={existing}-"} if existing else {}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and existing:
            return existing, 0
        raise DataError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise DataError(
            f"cannot reach {url}: {reason}; download {ML1M_NAME}.zip elsewhere and pass --from-zip"
        ) from None
    with response:
        resuming = existing > 0 and response.status == 206
        start = existing if resuming else 0
        length = response.headers.get("Content-Length")
        expected = int(length) if length is not None and length.isdigit() else None
        part.parent.mkdir(parents=True, exist_ok=True)
        with part.open("ab" if resuming else "wb") as out:
            fetched = _copy_with_progress(response, out, url, part, start, expected, progress)
    if expected is not None and fetched < expected:
        raise _interrupted(url, part, f"the server sent {fetched} of {expected} bytes")
    return start, fetched


def _copy_with_progress(
    response: BinaryIO, out: BinaryIO, url: str, part: Path, start: int, expected: int | None, progress: bool
) -> int:
    total = start + expected if expected is not None else None
    fetched = 0
    with progress_bar(total=total, initial=start, unit="B", unit_scale=True, desc=part.name, enabled=progress) as bar:
        while True:
            try:
                chunk = response.read(_CHUNK)
            except OSError as exc:
                out.flush()
                raise _interrupted(url, part, str(exc)) from None
            if not chunk:
                return fetched
            out.write(chunk)
            fetched += len(chunk)
            bar.update(len(chunk))


def _interrupted(url: str, part: Path, reason: str) -> DataError:
    return DataError(f"download of {url} interrupted ({reason}); run the same command again to resume", path=part)


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _verify_md5(path: Path, expected: str, *, source: str, remove_on_mismatch: bool) -> None:
    try:
        actual = file_md5(path)
    except OSError as exc:
        raise DataError(f"cannot read: {exc.strerror}", path=path) from None
    if actual == expected.lower():
        return
    note = "; the download was removed" if remove_on_mismatch else ""
    if remove_on_mismatch:
        path.unlink()
    raise DataError(f"checksum mismatch for {source}: MD5 {actual}, expected {expected}{note}; nothing was extracted")


def _extract(archive: Path, final: Path, *, force: bool) -> None:
    """Unpack into a staging folder beside ``final`` and rename it into place (the zip's top folder is dropped)."""
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = _safe_members(zipped, archive)
            with staged_directory(final, force=force) as staging:
                for member, relative in members:
                    target = staging.joinpath(*relative.parts)
                    if member.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zipped.open(member) as src, target.open("wb") as dst:
                        shutil.copyfileobj(src, dst)
                if not (staging / "ratings.dat").is_file():
                    raise DataError("the archive holds no ratings.dat", path=archive)
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        raise DataError(f"not a readable zip archive: {exc}", path=archive) from None
    except OSError as exc:
        raise DataError(f"cannot extract: {exc}", path=archive) from None


def _safe_members(zipped: zipfile.ZipFile, archive: Path) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Each member with its path below the extraction root; refuses anything that could escape it."""
    infos = zipped.infolist()
    total = sum(info.file_size for info in infos)
    if total > MAX_EXTRACTED_BYTES:
        raise DataError(f"the archive would unpack to {total} bytes; refusing", path=archive)
    paths: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
    for info in infos:
        name = PurePosixPath(info.filename.replace("\\", "/"))
        mode = info.external_attr >> 16
        if name.is_absolute() or ".." in name.parts or ":" in info.filename or stat.S_ISLNK(mode):
            raise DataError(f"unsafe path in the archive: {info.filename!r}", path=archive)
        paths.append((info, name))
    tops = {p.parts[0] for _, p in paths if p.parts}
    if len(tops) == 1 and all(len(p.parts) > 1 or info.is_dir() for info, p in paths):
        paths = [(info, PurePosixPath(*p.parts[1:])) for info, p in paths if len(p.parts) > 1]
    return [(info, p) for info, p in paths if p.parts]
