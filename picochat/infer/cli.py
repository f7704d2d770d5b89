"""`picochat chat` and `picochat serve`: load a trained run, then talk to it in the terminal or over HTTP."""
from __future__ import annotations

import argparse
import copy
import importlib.util
from pathlib import Path

import torch

from picochat.checkpoint import load_model_from_run
from picochat.config import add_config_args, config_from_args, format_config
from picochat.errors import PicochatError
from picochat.infer.chat_cli import ChatConfig, run_chat
from picochat.infer.engine import Engine
from picochat.infer.limits import ServeConfig, check_serve_config
from picochat.runtime import autodetect_device_type, dtype_name, init_runtime, print0


def load_engine(run: str, step: int | None, device: str | None) -> tuple[Engine, dict]:
    """The thin boundary between a run on disk and the engine, which takes (model, tokenizer) objects."""
    if not run:
        raise PicochatError("--run is required: the name of a run under `picochat_home()/runs` or a checkpoint path")
    runtime = init_runtime(device, inference=True)
    model, tokenizer, meta = load_model_from_run(run, runtime, step)
    return Engine(model, tokenizer), meta


def chat_command(args: argparse.Namespace) -> None:
    cfg = config_from_args(ChatConfig, args)
    engine, _ = load_engine(cfg.run, cfg.step, cfg.device)
    run_chat(engine, cfg)


def serve_command(args: argparse.Namespace) -> None:
    if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
        raise PicochatError("`picochat serve` needs FastAPI and uvicorn: pip install -e '.[serve]'")
    # the optional `serve` extra, loaded only here
    from picochat.infer.server import lane_threads, serve  # noqa: PLC0415

    cfg = config_from_args(ServeConfig, args)
    check_serve_config(cfg)
    device = torch.device(cfg.device or autodetect_device_type())
    lanes = lane_threads(device, cfg)  # an impossible --prefill-threads is refused before the model loads
    print0(format_config(cfg, "serve"))
    engines = worker_engines(*load_engine(cfg.run, cfg.step, cfg.device)[:1], cfg.workers)
    model_name = cfg.model_name or Path(cfg.run).name
    prefill = f"a prefill lane of {lanes} thread(s) beside decoding" if lanes else "prefills between decode steps"
    print0(f"serve: {model_name} on {', '.join(str(e.device) for e in engines)} in {dtype_name(engines[0].model.compute_dtype)}, context "
           f"{engines[0].context_length} tokens, batches of up to {cfg.max_batch} rows, {prefill}; "
           f"chat at http://{cfg.host}:{cfg.port}/ and the API at http://{cfg.host}:{cfg.port}/v1")
    serve(engines, model_name, cfg)


def worker_engines(engine: Engine, workers: int | None) -> list[Engine]:
    """One engine per accelerator: the loaded one, and a copy of its model on each further GPU."""
    if engine.device.type != "cuda":
        if workers not in (None, 1):
            raise PicochatError(f"--workers {workers}: a {engine.device.type} server has one worker; "
                                f"more need one GPU each")
        return [engine]
    available = torch.cuda.device_count()
    workers = workers or available
    if workers > available:
        raise PicochatError(f"--workers {workers} needs {workers} GPUs; {available} are visible")
    copies = [copy.deepcopy(engine.model).to(torch.device("cuda", i)) for i in range(1, workers)]
    return [engine] + [Engine(model, engine.tokenizer) for model in copies]


def register(subparsers) -> None:
    chat = subparsers.add_parser("chat", help="chat with a trained model in the terminal (or one prompt with -p)")
    add_config_args(chat, ChatConfig, skip=("prompt",))
    chat.add_argument("-p", "--prompt", dest="prompt", default=argparse.SUPPRESS,
                      help="one-shot: print the reply to this prompt and exit")
    chat.set_defaults(func=chat_command)
    serve = subparsers.add_parser("serve", help="a web chat and an OpenAI-compatible API for a trained model")
    add_config_args(serve, ServeConfig)
    serve.set_defaults(func=serve_command)
