"""The `keystroke` command line: serve, complete, models.

Every user-facing failure is a `KeystrokeError`: printed as one line naming
the problem and what to do, exit status 2, no traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from keystroke.engine.errors import KeystrokeError


def add_engine_options(p: argparse.ArgumentParser) -> None:
    """The engine flags, the same for `serve` and `complete`."""
    from keystroke.engine import DEFAULT_MODEL
    p.add_argument("--model", default=None,
                   help=f"model name, .gguf file or Hugging Face folder (default: {DEFAULT_MODEL}; "
                        "for serve, initializationOptions.model overrides it)")
    p.add_argument("--quant", default="auto", choices=["auto", "int8", "fp32", "fp16", "bf16"],
                   help="weight format for linear layers (auto: int8 on CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keystroke", description="Local AI code completion over LSP.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the language server (stdio by default)")
    add_engine_options(serve)
    from keystroke.server import serve as serve_mod
    serve_mod.add_arguments(serve)

    from keystroke.server.config import Config
    comp = sub.add_parser("complete", help="complete a file at LINE:COL (1-based) and print the result")
    comp.add_argument("target", help="FILE:LINE:COL, 1-based line and column (column in characters)")
    add_engine_options(comp)
    comp.add_argument("-n", type=int, default=1, help="number of candidates")
    comp.add_argument("--max-tokens", type=int, default=Config.max_tokens,
                      help=f"longest completion, in tokens (default: the server's, {Config.max_tokens})")
    comp.add_argument("--temperature", type=float, default=0.0)
    comp.add_argument("--seed", type=int, default=None)
    comp.add_argument("--mode", choices=["auto", "line", "block", "free"], default="auto",
                      help="stop at end of line, at end of block, or only on EOS/max tokens "
                           "(auto: as the server chooses from the cursor's place)")

    models = sub.add_parser("models", help="list models, or pull one")
    models.add_argument("action", nargs="?", choices=["list", "pull"], default="list")
    models.add_argument("name", nargs="?", help="model to pull (e.g. smollm2; default: the default model)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            from keystroke.server import serve as serve_mod
            return serve_mod.main(args)
        if args.command == "complete":
            from keystroke.server.complete_cmd import run_complete
            return run_complete(args)
        if args.command == "models":
            return _models(args)
    except KeystrokeError as e:
        print(f"keystroke: {e.problem}", file=sys.stderr)
        if e.hint:
            print(f"  {e.hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 1


def _models(args: argparse.Namespace) -> int:
    from keystroke.engine import registry
    if args.action == "pull":
        name = args.name or registry.DEFAULT_MODEL
        path = registry.pull(name)
        print(f"{name}: {path}")
        return 0
    for m in registry.list_models():
        where = m["path"] if m["available"] else \
            "installed; assembled on first use" if m["installed"] else f"not pulled (keystroke models pull {m['name']})"
        size = f"{m['size_mb']:.0f} MB" if m.get("size_mb") else ""
        default = " (default)" if m["name"] == registry.DEFAULT_MODEL else ""
        print(f"{m['name']}{default}\t{size}\t{where}\n    {m['description']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
