"""`picochat data`: import, download, list and describe datasets (and `pack-stats`, from the loader)."""
from __future__ import annotations

import argparse
import math
import time

from picochat.config import add_config_args, config_from_args
from picochat.data import pack_stats_cli
from picochat.data.dataset import Dataset, list_datasets, open_dataset
from picochat.data.download import SOURCES, download_dataset
from picochat.data.importer import DatasetImportError, ImportConfig, import_dataset
from picochat.data.pystdlib import PYSTDLIB, build_pystdlib
from picochat.data.shards import MANIFEST_NAME, SPLITS
from picochat.runtime import datasets_dir
from picochat.tokenizer import Tokenizer, TokenizerNotFoundError
from picochat.tokenizer.bpe import available_tokenizers, read_meta

BUILTINS = (PYSTDLIB,)


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="import, download, list and describe datasets",
                                 description=__doc__)
    data_subparsers = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    register_import(data_subparsers)
    register_download(data_subparsers)
    register_list(data_subparsers)
    register_stats(data_subparsers)
    pack_stats_cli.register_pack_stats(data_subparsers)


def register_import(data_subparsers) -> None:
    p = data_subparsers.add_parser(
        "import", help="turn text/jsonl/parquet/WikiExtractor files (plain or .gz) into a dataset",
        description="Import files into datasets_dir()/NAME as parquet shards plus a manifest. Formats: text = "
        "the whole file is ONE document; jsonl = one JSON object per line, text in --field; parquet = one row per "
        "document, text in column --field; wikiextractor = <doc ...>…</doc> blocks, title line kept with the "
        "body (title-only stubs are skipped and counted). "
        "Documents go to val by a stable hash of their text, so reimporting gives the same split. An interrupted "
        "import resumes when rerun with the same arguments; finished shards are kept.")
    p.add_argument("paths", nargs="*", metavar="PATH", help="input files (plain or gzip'd)")
    p.add_argument("--name", help="dataset name (a folder under datasets_dir())")
    p.add_argument("--builtin", choices=BUILTINS, help="build a built-in dataset instead of importing files")
    p.add_argument("--force", action="store_true", help="delete the dataset if it exists and import again")
    add_config_args(p, ImportConfig)
    p.set_defaults(func=run_import)


def register_download(data_subparsers) -> None:
    p = data_subparsers.add_parser(
        "download", help="download pre-shuffled pretraining shards (climbmix, fineweb-edu)",
        description="Download the first N training shards and the last (validation) shard of a published, "
        "pre-shuffled corpus into datasets_dir()/NAME. Partial files resume; rerun with a larger -n to add shards.")
    p.add_argument("--dataset", required=True, choices=list(SOURCES), help="which corpus")
    p.add_argument("-n", "--num-shards", type=int, required=True, help="training shards to download (from shard 0)")
    p.add_argument("--workers", type=int, default=4, help="parallel downloads (default: 4)")
    p.add_argument("--name", help="dataset name (default: the --dataset value)")
    p.add_argument("--force", action="store_true", help="delete the dataset if it exists and download again")
    p.set_defaults(func=run_download)


def register_list(data_subparsers) -> None:
    p = data_subparsers.add_parser("list", help="the datasets in datasets_dir(), with sizes and tokenizers")
    p.set_defaults(func=run_list)


def register_stats(data_subparsers) -> None:
    p = data_subparsers.add_parser(
        "stats", help="documents, characters, tokens (estimated from a sample) and a length histogram")
    p.add_argument("--dataset", required=True, help="dataset name")
    p.add_argument("--tokenizer", help="tokenizer name (default: the one trained on the dataset, if any)")
    p.add_argument("--split", default="train", choices=SPLITS, help="split for the sample (default: train)")
    p.add_argument("--sample-docs", type=int, default=20_000,
                   help="documents to sample for the histogram and the token estimate (default: 20000)")
    p.set_defaults(func=run_stats)


def run_import(args: argparse.Namespace) -> int:
    config = config_from_args(ImportConfig, args)
    if args.builtin:
        build_pystdlib(force=args.force)
        print_summary(open_dataset(PYSTDLIB))
        return 0
    if not args.paths or not args.name:
        raise DatasetImportError("give the input files and --name NAME (or --builtin pystdlib)")
    start = time.monotonic()
    import_dataset(args.paths, args.name, config, force=args.force)
    print_summary(open_dataset(args.name), seconds=time.monotonic() - start)
    return 0


def run_download(args: argparse.Namespace) -> int:
    download_dataset(args.dataset, args.num_shards, workers=args.workers, name=args.name, force=args.force)
    print_summary(open_dataset(args.name or args.dataset))
    return 0


def print_summary(dataset: Dataset, seconds: float | None = None) -> None:
    m = dataset.manifest
    for split in SPLITS:
        print(f"  {split:<5} {dataset.documents(split):>12,} documents  {dataset.characters(split):>16,} characters  "
              f"{len(dataset.shard_paths(split))} shard(s)")
    if m.get("skipped"):
        print("  skipped: " + ", ".join(f"{reason} {n:,}" for reason, n in sorted(m["skipped"].items())))
    if m.get("non_utf8_documents_replaced"):
        print(f"  kept with undecodable bytes replaced (U+FFFD): {m['non_utf8_documents_replaced']:,} documents")
    took = f" in {seconds:.1f}s" if seconds is not None else ""
    print(f"dataset {dataset.name!r} at {dataset.root}{took}")


def tokenizers_by_dataset() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name in available_tokenizers():
        found.setdefault(read_meta(name).get("dataset"), []).append(name)
    return found


def run_list(args: argparse.Namespace) -> int:
    names = list_datasets()
    root = datasets_dir()
    unfinished = sorted(p.name for p in root.iterdir() if p.is_dir() and not (p / MANIFEST_NAME).exists()
                        and not p.name.startswith(".")) if root.is_dir() else []
    if not names and not unfinished:
        print(f"no datasets in {root}; create one with `picochat data import PATH... --name NAME`, "
              f"`picochat data download --dataset climbmix -n 8`, or use the built-in {PYSTDLIB!r}")
        return 0
    tokenizers = tokenizers_by_dataset()
    print(f"{'name':<20} {'train docs':>12} {'train chars':>16} {'shards':>6} {'val docs':>10} {'val chars':>14} "
          f"{'shards':>6}  tokenizers")
    for name in names:
        d = open_dataset(name, verify=False)  # listing reads manifests only
        print(f"{name:<20} {d.documents('train'):>12,} {d.characters('train'):>16,} {len(d.shard_paths('train')):>6} "
              f"{d.documents('val'):>10,} {d.characters('val'):>14,} {len(d.shard_paths('val')):>6}  "
              f"{', '.join(tokenizers.get(name, [])) or '-'}")
    for name in unfinished:
        print(f"{name:<20} (unfinished: rerun the import or download that made it)")
    return 0


def sample_documents(dataset: Dataset, split: str, max_docs: int) -> tuple[list[str], bool]:
    """Documents from row groups spread evenly over the split; also whether that is all of it."""
    groups = [(s, g) for s, n in enumerate(dataset.row_group_counts(split)) for g in range(n)]
    total = dataset.documents(split)
    if not groups:
        return [], True
    wanted_groups = max(1, math.ceil(len(groups) * min(1.0, max_docs / max(total, 1))))
    stride = max(1, len(groups) // wanted_groups)
    docs: list[str] = []
    for shard, group in groups[::stride]:
        docs.extend(dataset.read_row_group(split, shard, group))
        if len(docs) >= max_docs:
            break
    return docs, len(docs) >= total


def length_histogram(lengths: list[int], base: int = 4) -> list[tuple[int, int, int]]:
    """(low, high, count) over log-spaced bins [base^k, base^(k+1)); empty documents fall in [0, 1)."""
    counts: dict[int, int] = {}
    for n in lengths:
        k = -1 if n < 1 else int(math.log(n, base) + 1e-9)
        counts[k] = counts.get(k, 0) + 1
    if not counts:
        return []
    return [(0 if k < 0 else base ** k, 1 if k < 0 else base ** (k + 1), counts.get(k, 0))
            for k in range(min(counts), max(counts) + 1)]


def format_histogram(bins: list[tuple[int, int, int]], width: int = 40) -> str:
    top = max((c for _, _, c in bins), default=0) or 1
    bar = lambda count: "#" * max(1 if count else 0, round(width * count / top))
    return "\n".join(f"  {low:>9,} - {high - 1:>9,} chars {count:>9,}  {bar(count)}" for low, high, count in bins)


def find_tokenizer(dataset_name: str, name: str | None) -> Tokenizer | None:
    if name:
        return Tokenizer.load(name)
    try:
        return Tokenizer.default_for_dataset(dataset_name)
    except TokenizerNotFoundError:
        return None


def run_stats(args: argparse.Namespace) -> int:
    dataset = open_dataset(args.dataset)
    print_summary(dataset)
    docs, complete = sample_documents(dataset, args.split, args.sample_docs)
    label = "all" if complete else "a sample of"
    print(f"{args.split} document lengths ({label} {len(docs):,} documents):")
    print(format_histogram(length_histogram([len(d) for d in docs])))
    tokenizer = find_tokenizer(args.dataset, args.tokenizer)
    if tokenizer is None:
        print(f"tokens: no tokenizer trained on {args.dataset!r}; train one with "
              f"`picochat tokenizer train --dataset {args.dataset}` or pass --tokenizer NAME")
        return 0
    sample_chars = sum(len(d) for d in docs)
    sample_tokens = sum(len(ids) for ids in tokenizer.encode_batch(docs))
    chars_per_token = sample_chars / max(sample_tokens, 1)
    for split in SPLITS:
        if complete and split == args.split:
            print(f"  {split:<5} {sample_tokens:,} tokens with {tokenizer.name!r} "
                  f"({chars_per_token:.2f} chars/token, counted)")
            continue
        tokens = dataset.characters(split) / chars_per_token
        print(f"  {split:<5} ~{tokens:,.0f} tokens with {tokenizer.name!r} ({chars_per_token:.2f} chars/token, "
              f"estimated from {len(docs):,} {args.split} documents)")
    return 0
