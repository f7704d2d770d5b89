"""Fetch the published CORE bundle and unpack it into $PICOCHAT_HOME/eval_bundle.

The bundle is the one nanochat's speedrun downloads (eval_bundle.zip, top folder `eval_bundle/`).
Download to a `.part` file, retry with exponential back-off, rename when complete; unpack into
a temporary folder and rename, so an interrupted run never leaves a half bundle behind.
"""
from __future__ import annotations

import shutil
import sys
import zipfile
from pathlib import Path

from picochat import fetch as _fetch
from picochat.eval.core_data import default_bundle_dir
from picochat.fetch import ATTEMPTS, DownloadError, Fetch, urlopen_fetch

BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"
BY_HAND = ", or download it by hand and pass the unpacked folder with --bundle"


def download_with_retry(url: str, destination: Path, fetch: Fetch = urlopen_fetch,
                        attempts: int = ATTEMPTS, backoff_seconds: float = 1.0) -> Path:
    """`fetch(url, path)` into `destination.part`, retried with back-off, renamed when whole."""
    return _fetch.download_with_retry(url, destination, fetch, attempts=attempts, backoff_seconds=backoff_seconds,
                                      error=DownloadError, hint=BY_HAND)


def unpack_bundle(zip_path: Path, bundle_dir: Path) -> Path:
    """Unzip `zip_path` (whose top folder holds core.yaml) into `bundle_dir`, atomically."""
    staging = bundle_dir.with_name(bundle_dir.name + ".unpacking")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            for name in archive.namelist():  # refuse members that would land outside the folder
                if Path(name).is_absolute() or ".." in Path(name).parts:
                    raise DownloadError(f"{zip_path} holds an unsafe path {name!r}; not unpacking it")
            archive.extractall(staging)
    except zipfile.BadZipFile as e:
        raise DownloadError(f"{zip_path} is not a valid zip ({e}); delete it and download again") from e
    configs = sorted(staging.glob("**/core.yaml"), key=lambda p: len(p.parts))
    if not configs:
        shutil.rmtree(staging, ignore_errors=True)
        raise DownloadError(f"{zip_path} has no core.yaml; it is not a CORE eval bundle")
    shutil.rmtree(bundle_dir, ignore_errors=True)
    configs[0].parent.rename(bundle_dir)
    shutil.rmtree(staging, ignore_errors=True)
    return bundle_dir


def ensure_bundle(bundle_dir: Path | None = None, url: str = BUNDLE_URL,
                  fetch: Fetch = urlopen_fetch, backoff_seconds: float = 1.0) -> Path:
    """The bundle folder, downloaded and unpacked first if it has no core.yaml."""
    bundle_dir = Path(bundle_dir) if bundle_dir is not None else default_bundle_dir()
    if (bundle_dir / "core.yaml").is_file():
        return bundle_dir
    zip_path = bundle_dir.with_name("eval_bundle.zip")
    print(f"downloading the CORE bundle {url} -> {zip_path}", file=sys.stderr, flush=True)
    download_with_retry(url, zip_path, fetch, backoff_seconds=backoff_seconds)
    unpack_bundle(zip_path, bundle_dir)
    zip_path.unlink(missing_ok=True)
    return bundle_dir
