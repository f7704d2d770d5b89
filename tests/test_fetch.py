"""picochat.fetch: `.part` then rename, retries with exponential back-off, checksums, the error raised."""
from __future__ import annotations

import hashlib

import pytest

from picochat.errors import PicochatError
from picochat.fetch import DownloadError, download_with_retry, sha256_of

URL = "http://x/file.bin"


def flaky_fetch(failures: int, body: bytes = b"whole"):
    """A fetch that writes a partial file and fails `failures` times, then writes `body`."""
    calls = []

    def fetch(url, destination):
        calls.append(destination)
        destination.write_bytes(b"partial")
        if len(calls) <= failures:
            raise ConnectionResetError("reset")
        destination.write_bytes(body)
    return fetch, calls


def test_retries_with_exponential_back_off_then_renames(tmp_path, capsys):
    fetch, calls = flaky_fetch(2)
    waits = []
    target = download_with_retry(URL, tmp_path / "sub" / "f.bin", fetch, backoff_seconds=1.5, sleep=waits.append)
    assert target == tmp_path / "sub" / "f.bin" and target.read_bytes() == b"whole"
    assert len(calls) == 3 and all(p.name == "f.bin.part" for p in calls)
    assert waits == [1.5, 3.0]
    assert list((tmp_path / "sub").iterdir()) == [target]
    err = capsys.readouterr().err
    assert f"download of {URL} failed (reset); retrying in 2s (1/5)" in err and "(2/5)" in err


def test_gives_up_after_the_last_attempt_with_the_error_class_and_hint(tmp_path):
    class MyError(PicochatError):
        pass

    fetch, calls = flaky_fetch(10)
    waits = []
    with pytest.raises(MyError) as info:
        download_with_retry(URL, tmp_path / "f.bin", fetch, attempts=3, sleep=waits.append, error=MyError,
                            hint=", or fetch it by hand")
    assert str(info.value) == (f"could not download {URL} after 3 attempts (reset); check the network, "
                               f"or fetch it by hand")
    assert isinstance(info.value.__cause__, ConnectionResetError)
    assert len(calls) == 3 and waits == [1.0, 2.0]  # no wait after the last attempt
    assert not list(tmp_path.iterdir())


def test_default_error_is_a_picochat_error(tmp_path):
    fetch, _ = flaky_fetch(10)
    with pytest.raises(DownloadError, match=r"after 2 attempts \(reset\); check the network$"):
        download_with_retry(URL, tmp_path / "f.bin", fetch, attempts=2, sleep=lambda s: None)
    assert issubclass(DownloadError, PicochatError)


def test_a_checksum_mismatch_is_retried_and_reported(tmp_path):
    body = b"the real bytes"
    fetch, calls = flaky_fetch(0, b"tampered")
    with pytest.raises(DownloadError, match=r"after 2 attempts .*f\.bin\.part has SHA-256 [0-9a-f]{64}, expected "
                                            + hashlib.sha256(body).hexdigest()):
        download_with_retry(URL, tmp_path / "f.bin", fetch, sha256=hashlib.sha256(body).hexdigest(), attempts=2,
                            sleep=lambda s: None)
    assert len(calls) == 2 and not list(tmp_path.iterdir())

    fetch, calls = flaky_fetch(0, body)
    target = download_with_retry(URL, tmp_path / "f.bin", fetch, sha256=hashlib.sha256(body).hexdigest())
    assert target.read_bytes() == body and len(calls) == 1 and list(tmp_path.iterdir()) == [target]


def test_sha256_of_reads_in_chunks(tmp_path):
    data = bytes(range(256)) * 10_000  # > 1 MiB: more than one chunk
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_of(path) == hashlib.sha256(data).hexdigest()


def test_post_fetch_file_reuses_an_existing_file_and_waits_2_4_8(tmp_path):
    from picochat.post.download import SourceDownloadError, fetch_file

    existing = tmp_path / "have.txt"
    existing.write_text("kept")
    assert fetch_file(URL, existing, fetch=lambda url, dest: pytest.fail("fetched")) == existing
    fetch, calls = flaky_fetch(10)
    waits = []
    with pytest.raises(SourceDownloadError, match=r"after 4 attempts .*fetch it by hand to .*new\.txt"):
        fetch_file(URL, tmp_path / "new.txt", fetch, attempts=4, sleep=waits.append)
    assert waits == [2.0, 4.0, 8.0] and not (tmp_path / "new.txt.part").exists()
