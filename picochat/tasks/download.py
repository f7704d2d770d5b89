"""Fetch each chat task's public source into $PICOCHAT_HOME/tasks/<folder>/ (or --data-dir).

Each file is fetched to `<name>.part`, retried with exponential back-off, checked against its
SHA-256 where one is pinned, then renamed; archives are unpacked into a staging folder that is
renamed when complete, so an interrupted download never leaves half a dataset behind. No source
publishes checksums; the pinned ones were computed from the files as published (ARC-Easy-Test's
also appears in other projects' pins).
"""
from __future__ import annotations

import shutil
import sys
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

from picochat import fetch as _fetch
from picochat.fetch import ATTEMPTS, Fetch, sha256_of, urlopen_fetch  # noqa: F401 (sha256_of: public name)
from picochat.tasks.base import TaskDataError


@dataclass(frozen=True)
class Source:
    url: str
    kind: str  # "file", "zip" or "tar"
    sha256: dict[str, str] = field(default_factory=dict)  # pinned checksums of files in the task folder
    required: tuple[str, ...] = ()  # paths in the task folder whose presence means "downloaded"


ARC_URL = "https://ai2-public-datasets.s3.amazonaws.com/arc/ARC-V1-Feb2018.zip"
MMLU_URL = "https://people.eecs.berkeley.edu/~hendrycks/data.tar"
GSM8K_URL = "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data/{split}.jsonl"
HUMANEVAL_URL = "https://github.com/openai/human-eval/raw/master/data/HumanEval.jsonl.gz"

MMLU_FOLDERS = ("dev", "val", "test", "auxiliary_train")
ARC_SHA256 = {
    "ARC-Challenge-Dev.jsonl": "55224364abd2477f66a9a57c5cbef109fb71d83019aa5e37aec0e7ab757746ca",
    "ARC-Challenge-Test.jsonl": "9fa8ffb3e3a1f88cb302d53dd95aae81e39209ad9bcf974376b319d8fd35717c",
    "ARC-Challenge-Train.jsonl": "e02837c53ee86f6d73c259f91c77725c5062ef4531130b7f473a9d9b01118a77",
    "ARC-Easy-Dev.jsonl": "f4364b808a68df6bf500ce1070fb0105d40cacd2391c210deb00ff83ba75d1f4",
    "ARC-Easy-Test.jsonl": "ce32a0774b4beb1977d2c6b16dda5dd2b24fdc9c7f506882c452678676bd09be",
    "ARC-Easy-Train.jsonl": "c62e5482d8c01f2d5a7f24239ac9db3b12f9e47267c4e3f088c6ffe41d5545ef",
}
SOURCES: dict[str, list[Source]] = {
    "arc": [Source(ARC_URL, "zip", ARC_SHA256, tuple(ARC_SHA256))],
    "mmlu": [Source(MMLU_URL, "tar", {}, ("dev", "val", "test"))],
    "gsm8k": [
        Source(GSM8K_URL.format(split="train"), "file",
               {"train.jsonl": "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465"}, ("train.jsonl",)),
        Source(GSM8K_URL.format(split="test"), "file",
               {"test.jsonl": "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14"}, ("test.jsonl",)),
    ],
    "humaneval": [Source(HUMANEVAL_URL, "file",
                         {"HumanEval.jsonl.gz": "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef"},
                         ("HumanEval.jsonl.gz",))],
}


class DownloadError(TaskDataError, _fetch.DownloadError):
    """A task's source that could not be fetched, verified or unpacked."""


def verify(path: Path, expected: str | None) -> None:
    _fetch.verify(path, expected, error=DownloadError)


def download_with_retry(url: str, destination: Path, fetch: Fetch = urlopen_fetch, sha256: str | None = None,
                        attempts: int = ATTEMPTS, backoff_seconds: float = 1.0) -> Path:
    """`fetch(url, path)` into `destination.part`, checked, renamed when whole; retried with back-off."""
    return _fetch.download_with_retry(url, destination, fetch, sha256, attempts=attempts,
                                      backoff_seconds=backoff_seconds, error=DownloadError,
                                      hint=f", or fetch it by hand into {destination.parent}")


def arc_destination(member: str) -> str | None:
    """ARC-V1-Feb2018-2/ARC-Easy/ARC-Easy-Test.jsonl -> ARC-Easy-Test.jsonl; other members are skipped."""
    name = PurePosixPath(member).name
    return name if name in ARC_SHA256 else None


def mmlu_destination(member: str) -> str | None:
    """data/test/anatomy_test.csv -> test/anatomy_test.csv (dev, val, test, auxiliary_train)."""
    parts = PurePosixPath(member).parts
    if len(parts) == 3 and parts[0] == "data" and parts[1] in MMLU_FOLDERS and parts[2].endswith(".csv"):
        return f"{parts[1]}/{parts[2]}"
    return None


def unpack(archive: Path, kind: str, staging: Path, destination_of: Callable[[str], str | None]) -> None:
    """Copy the wanted members of a zip or tar to `staging/<destination>`; names are mapped, never trusted."""
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as z:
                for member in z.namelist():
                    if (target := destination_of(member)) is not None:
                        _write(staging / target, z.read(member))
        else:
            with tarfile.open(archive) as t:
                for member in t.getmembers():
                    if member.isfile() and (target := destination_of(member.name)) is not None:
                        _write(staging / target, t.extractfile(member).read())
    except (zipfile.BadZipFile, tarfile.TarError) as e:
        raise DownloadError(f"{archive} is not a valid {kind} archive ({e}); delete it and download again") from e


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def is_downloaded(folder: Path, sources: list[Source]) -> bool:
    return all((folder / required).exists() for source in sources for required in source.required)


def ensure_task_data(folder_name: str, data_root: Path, fetch: Fetch = urlopen_fetch,
                     backoff_seconds: float = 1.0) -> Path:
    """`data_root/folder_name`, fetched and unpacked first when incomplete."""
    if folder_name not in SOURCES:
        raise DownloadError(f"no public source is known for {folder_name!r}; known: {', '.join(SOURCES)}")
    folder, sources = Path(data_root) / folder_name, SOURCES[folder_name]
    if is_downloaded(folder, sources):
        return folder
    staging = folder.with_name(folder.name + ".downloading")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for source in sources:
        print(f"downloading {source.url} -> {folder}", file=sys.stderr, flush=True)
        if source.kind == "file":
            name = source.required[0]
            download_with_retry(source.url, staging / name, fetch, source.sha256.get(name),
                                backoff_seconds=backoff_seconds)
            continue
        archive = download_with_retry(source.url, staging / PurePosixPath(source.url).name, fetch,
                                      backoff_seconds=backoff_seconds)
        unpack(archive, source.kind, staging, arc_destination if folder_name == "arc" else mmlu_destination)
        archive.unlink()
        for name, sha256 in source.sha256.items():
            verify(staging / name, sha256)
    if not is_downloaded(staging, sources):
        missing = [r for s in sources for r in s.required if not (staging / r).exists()]
        raise DownloadError(f"the download of {folder_name} lacks {', '.join(missing)}; the source's layout changed")
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder
