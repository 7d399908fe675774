"""The command line: ``python -m smoothce [bench | eval]``.

``python -m smoothce`` prints three worked examples of
:func:`~smoothce.soft_target_cross_entropy` (the classic signature, 6 decimals) and one
quick timing; ``python -m smoothce bench`` times smoothce against the naive NumPy code,
the exp floor and PyTorch (when installed) and prints the ratios;
``python -m smoothce eval`` reports the metrics of saved logits and labels.
"""

from __future__ import annotations

import argparse
import math
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import __version__
from ._bench import (
    ALL_KINDS,
    DEFAULT_LOGITS,
    DEFAULT_ROUNDS,
    DEFAULT_SHAPES,
    LM_OPTIONS,
    MIN_SAMPLE_SECONDS,
    SWEEP_K,
    SWEEP_KINDS,
    SWEEP_N,
    Measurement,
    join_and,
    load_average,
    load_note,
    measure,
    measure_linear_head,
)
from ._bench_logits import DISTRIBUTIONS, NAMES
from ._bench_report import format_summary, format_sweep, format_table, print_legend
from ._eval_dask import INSTALL  # a string; Dask is imported only when it runs
from ._loss import soft_target_cross_entropy
from ._validation import TORCH_IGNORE_INDEX
from .calibration import MAX_BINS

#: The one command that regenerates the performance page's data (docs/examples/
#: plot_performance.py reads the file it writes).
PAGE_COMMAND = (
    "python -m smoothce bench --sweep --logits normal,wide,trained,offset --rounds 7 "
    "--json docs/data/performance.json"
)

#: Three worked examples and their expected 6-decimal means: (logits, labels, K, epsilon, mean).
WORKED_EXAMPLES: list[tuple[list[list[float]], list[int], int, float, float]] = [
    ([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]], [0, 2], 3, 0.1, 0.927312),
    ([[1.0, -1.0], [0.5, 0.5]], [0, 1], 2, 0.05, 0.435038),
    ([[3.0, 1.0, 0.0, -1.0]], [0], 4, 0.0, 0.185182),
]


def run_examples(out: Any) -> bool:
    """Print the worked examples; return whether all came out exactly."""
    print("Worked examples (mean loss, 6 decimals):", file=out)
    all_ok = True
    for i, (logits, labels, k, eps, expected) in enumerate(WORKED_EXAMPLES, 1):
        got = soft_target_cross_entropy(logits, labels, k, eps)
        ok = got == expected
        all_ok &= ok
        mark = "ok" if ok else "MISMATCH"
        print(
            f"  {i}. K={k}, epsilon={eps:<4}  loss = {got:.6f}   expected {expected:.6f}   {mark}",
            file=out,
        )
    return all_ok


def run_timing(shape: tuple[int, int], epsilon: float, rounds: int, out: Any) -> None:
    """The quick timing: forward + gradient against the naive NumPy code, one thread,
    on standard-normal and trained logits, with the bench's method and wording."""
    from ._parallel import available_cores

    n, k = shape
    cores = available_cores()
    print(
        f"\nForward + gradient, float32 logits of shape ({n}, {k}), epsilon={epsilon}, one "
        f"thread, {rounds} interleaved round(s); median (q1-q3) per call:",
        file=out,
    )
    note = load_note(load_average(), cores)
    if note is not None:
        print(note, file=out)
    results = measure(
        (n, k), logits=DEFAULT_LOGITS, epsilon=epsilon, workers=[1], rounds=rounds,
        kinds={"smoothce fwd+grad", "naive fwd+grad"}, memory=False,
    )  # fmt: skip
    ours, naive = "smoothce fwd+grad w1", "naive fwd+grad"
    for m in results:
        print(f"  {m.logits} logits ({DISTRIBUTIONS[m.logits].formula}):", file=out)
        for key, label in ((ours, "smoothce"), (naive, "naive softmax-then-log")):
            q1, q3 = m.spread[key]
            print(
                f"    {label:24s}{m.times[key] * 1e3:9.2f} ms ({q1 * 1e3:.2f}-{q3 * 1e3:.2f})",
                file=out,
            )
        print(f"    smoothce against naive: {m.verdict(ours, naive)}", file=out)
    print(
        "For every candidate (PyTorch too), more shapes and more logits: python -m smoothce bench",
        file=out,
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number; got {text!r}") from None
    if not value > 0 or not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number; got {text}")
    return value


def _workers(text: str) -> int:
    value = int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be a non-zero integer (-1 = all cores)")
    return value


def _logit_names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    for name in names:
        if name not in NAMES:
            raise argparse.ArgumentTypeError(
                f"invalid distribution {name!r}: choose from {', '.join(NAMES)}"
            )
    return names


def _address(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must be a scheduler address, e.g. tcp://host:8786")
    return text


def _epsilon(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        # Raised as ValueError, argparse would name this function ("invalid _epsilon value").
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1]; got {value}")
    return value


def _bins(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: not an integer") from None
    if not 1 <= value <= MAX_BINS:
        raise argparse.ArgumentTypeError(f"must be in [1, {MAX_BINS}]; got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m smoothce",
        description=(
            "Softmax cross-entropy with label smoothing. Without a command: compute three "
            "worked examples and time smoothce against naive NumPy."
        ),
    )
    parser.add_argument("--version", action="version", version=f"smoothce {__version__}")
    parser.add_argument(
        "--shape", nargs=2, type=_positive, metavar=("N", "K"), default=(4096, 1000),
        help="logits shape for the timing (default: 4096 1000)",
    )  # fmt: skip
    parser.add_argument(
        "--epsilon", type=_epsilon, default=0.1, help="smoothing for the timing (default: 0.1)"
    )
    parser.add_argument(
        "--repeats", type=_positive, default=7,
        help="interleaved rounds of the timing, one sample each; median and quartiles "
        "reported (default: 7)",
    )  # fmt: skip
    parser.add_argument("--no-timing", action="store_true", help="only the worked examples")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench = sub.add_parser(
        "bench",
        help="time smoothce against naive NumPy, NumPy's exp and PyTorch",
        description=textwrap.fill(
            "Time smoothce (forward, and forward+gradient) against the naive "
            "softmax-then-log code, NumPy's exp (one np.exp over the logits) and, when "
            "installed, PyTorch's F.cross_entropy, on the same arrays, for each "
            "distribution of logits asked for (--logits). Each sample times enough calls "
            "to last >= 20 ms; candidates, of every distribution, are interleaved round "
            "by round. Prints each candidate's median and spread, verdicts (faster, "
            "slower, or within noise), extra peak memory, and a summary: one line per "
            "comparison. Progress goes to standard error when it is a terminal.",
            width=79,
            break_on_hyphens=False,
        ),
        epilog=(
            "logits (--logits; seed 0, labels uniform):\n"
            + "".join(
                textwrap.fill(f"{name:8s} {d.formula}: {d.stands_for}", width=79,
                              initial_indent="  ", subsequent_indent=" " * 11) + "\n"
                for name, d in DISTRIBUTIONS.items()
            )
            + "\nthe performance page's data (docs/data/performance.json), one command:\n"
            f"  {PAGE_COMMAND}"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    bench.add_argument(
        "--shape", nargs=2, type=_positive, metavar=("N", "K"), action="append",
        help="a logits shape; repeat for several (default: " + ", ".join(
            f"{n} {k}" for n, k in DEFAULT_SHAPES) + ")",
    )  # fmt: skip
    bench.add_argument(
        "--logits", type=_logit_names, action="extend", metavar="NAME[,NAME...]",
        help="the distributions of the logits: " + ", ".join(NAMES) + "; a comma list, "
        "or repeat the option (default: " + ",".join(DEFAULT_LOGITS) + ")",
    )  # fmt: skip
    bench.add_argument(
        "--sweep", action="store_true",
        help="time smoothce (forward, fwd+grad), NumPy's exp, naive NumPy and PyTorch "
        "over N in {" + ", ".join(map(str, SWEEP_N)) + "} x K in {"
        + ", ".join(map(str, SWEEP_K)) + "} and print grids of speed-ups (one thread "
        "unless --workers is given; takes minutes per distribution)",
    )  # fmt: skip
    bench.add_argument(
        "--lm", action="store_true",
        help="also time the language-model options: fwd+grad with z_loss and with softcap",
    )  # fmt: skip
    bench.add_argument(
        "--linear", nargs=3, type=_positive, metavar=("N", "D", "V"), action="append",
        help="also time the fused linear head on N rows of D features and V classes "
        "against the unfused one and the matrix products alone, on each distribution "
        "(the classifier scaled to its spread); repeat for several",
    )  # fmt: skip
    bench.add_argument(
        "--dtype", choices=["float16", "float32", "float64"], default="float32",
        help="logits dtype (default: float32)",
    )  # fmt: skip
    bench.add_argument(
        "--workers", type=_workers, action="append",
        help="smoothce workers and PyTorch threads; repeat for several "
        "(default: 1 and all cores; 1 for --sweep)",
    )  # fmt: skip
    bench.add_argument("--epsilon", type=_epsilon, default=0.1, help="smoothing (default: 0.1)")
    bench.add_argument(
        "--rounds", type=_positive, default=DEFAULT_ROUNDS,
        help="samples per candidate, one per round; the spread needs at least 3 "
        f"(default: {DEFAULT_ROUNDS}, so that the default run of two distributions "
        "stays under 30 s on 2 cores)",
    )  # fmt: skip
    bench.add_argument(
        "--max-memory", type=_positive_float, default=4.0, metavar="GIB",
        help="skip a candidate whose estimated peak memory exceeds GIB GiB (default: 4)",
    )  # fmt: skip
    bench.add_argument(
        "--min-sample-ms", type=_positive_float, default=MIN_SAMPLE_SECONDS * 1e3,
        metavar="MS", help=f"the least time of one sample (default: "
        f"{MIN_SAMPLE_SECONDS * 1e3:.0f})",
    )  # fmt: skip
    bench.add_argument(
        "--json", nargs="?", const="-", default=None, metavar="FILE",
        help="write the measurements as JSON to FILE, or to standard output without one "
        "(for docs/examples/plot_performance.py)",
    )  # fmt: skip
    bench.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="rewrite a progress line on standard error round by round (default: when "
        "standard error is a terminal)",
    )  # fmt: skip
    ev = sub.add_parser(
        "eval",
        help="metrics of saved logits and labels (.npy, Zarr): loss, NLL, accuracy, ECE",
        description=textwrap.fill(
            "Evaluate saved model outputs: the label-smoothed loss, the NLL "
            "(plain cross-entropy), perplexity, accuracy and expected calibration error. "
            ".npy files are memory-mapped and streamed in chunks, so they may be larger "
            "than memory. A Zarr array (a directory holding .zarray or zarr.json) or a "
            "directory of .npy shards (shard_*.npy, joined in name order along the first "
            "batch axis) is evaluated on Dask, in this process's threads by default; "
            "--dask-workers or "
            "--scheduler run either kind of input on a Dask cluster, whose workers read "
            f"the data themselves (Dask needs the dask extra: {INSTALL}). Every path "
            "gives the same report. Exit status 2, with a one-line message, on a missing "
            "or unreadable file, a wrong shape, bad labels or non-finite logits (a NaN or "
            "+inf logit, or a row of -inf, in a counted row).",
            width=79,
            break_on_hyphens=False,
        ),
        epilog=(
            "examples:\n"
            "  python -m smoothce eval logits.npy labels.npy --epsilon 0.1 --json\n"
            "  python -m smoothce eval logits.zarr labels.zarr\n"
            "  python -m smoothce eval logits.zarr labels.npy --dask-workers 2\n"
            "  python -m smoothce eval logits.zarr labels.zarr --scheduler tcp://host:8786\n"
            "  python -m smoothce eval hidden.npy labels.npy --classifier W.npy --bias b.npy\n"
            "  python -m smoothce eval hidden.zarr labels.zarr --classifier W.zarr \\\n"
            "      --dask-workers 4"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ev.add_argument(
        "logits", metavar="LOGITS.npy",
        help="logits, classes on --axis (or hidden states, with --classifier): a .npy "
        "file, a Zarr array or a directory of shard_*.npy files",
    )  # fmt: skip
    ev.add_argument(
        "labels", metavar="LABELS.npy",
        help="integer class labels, the logits' shape without the class axis: a .npy "
        "file, a Zarr array or a directory of shard_*.npy files",
    )  # fmt: skip
    ev.add_argument(
        "--epsilon", type=_epsilon, default=0.1,
        help="smoothing of the reported smoothed loss (default: 0.1)",
    )  # fmt: skip
    ev.add_argument("--axis", type=int, default=-1, help="the class axis (default: -1)")
    ev.add_argument(
        "--ignore-index", type=int, default=None, metavar="N",
        help="leave out elements whose label is N (e.g. -100 for padding)",
    )  # fmt: skip
    ev.add_argument(
        "--prior", default=None, metavar="uniform|others|PRIOR.npy",
        help="smoothing prior: uniform (default), others (fairseq), or an array: a class "
        "prior (K,) or one distribution per row (the logits' shape, read in chunks like "
        "them), in a .npy file, a Zarr array or a directory of shard_*.npy files",
    )  # fmt: skip
    ev.add_argument(
        "--bins", type=_bins, default=15,
        help=f"confidence bins of the ECE, 1 to {MAX_BINS} (default: 15)",
    )  # fmt: skip
    ev.add_argument(
        "--json", action="store_true",
        help="print one JSON object (strict JSON: an infinite loss or perplexity is null)",
    )  # fmt: skip
    ev.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="progress bar on standard error (default: for logits over 256 MiB on a terminal)",
    )  # fmt: skip
    cluster = ev.add_mutually_exclusive_group()
    cluster.add_argument(
        "--scheduler", type=_address, metavar="ADDRESS",
        help="run on the Dask cluster whose scheduler is at ADDRESS (e.g. "
        "tcp://host:8786); its workers must see the files at the same paths",
    )  # fmt: skip
    cluster.add_argument(
        "--dask-workers", type=_positive, metavar="N",
        help="run on a local Dask cluster of N single-threaded worker processes, "
        "started for this evaluation and stopped after it",
    )  # fmt: skip
    head = ev.add_argument_group(
        "a linear head's hidden states",
        textwrap.fill(
            "With --classifier, LOGITS is a file of hidden states (..., d) of a model whose "
            "logits are hidden @ W.T + B (soft-capped with --softcap): the report is that of "
            "the materialised logits, which are never stored "
            "(smoothce.metrics.evaluate_linear; on Dask smoothce.dask.evaluate_linear, a "
            "Zarr classifier chunked along its vocabulary split over the workers).",
            width=79,
            break_on_hyphens=False,
        ),
    )
    head.add_argument(
        "--classifier", metavar="W.npy",
        help="the output layer's weight (V, d): a .npy file, a Zarr array or a directory "
        "of shard_*.npy files (rows of classes)",
    )  # fmt: skip
    head.add_argument(
        "--bias", metavar="B.npy", help="the output layer's bias (V,), a .npy file or Zarr"
    )
    head.add_argument(
        "--softcap", type=_positive_float, metavar="C",
        help="logit soft-capping: C * tanh(logits / C), as Gemma 2's",
    )  # fmt: skip
    ev.add_argument("--chunk-elements", type=_positive, default=None, help=argparse.SUPPRESS)
    return parser


def _as_options(message: str) -> str:
    """A library message in the command line's words: its hint for PyTorch's padding
    names the keyword ``ignore_index=-100``, which is ``--ignore-index -100`` here."""
    return message.replace(
        f"pass ignore_index={TORCH_IGNORE_INDEX}", f"pass --ignore-index {TORCH_IGNORE_INDEX}"
    )


def run_eval(args: argparse.Namespace) -> int:
    import json

    from ._eval import CHUNK_ELEMENTS, EvalError, evaluate_files, named_prior
    from ._eval_dask import evaluate_dask, is_shards, is_zarr  # Dask only when it runs

    options: dict[str, Any] = dict(
        epsilon=args.epsilon, axis=args.axis, ignore_index=args.ignore_index,
        prior=args.prior, bins=args.bins, progress=args.progress,
        chunk_elements=args.chunk_elements or CHUNK_ELEMENTS,
    )  # fmt: skip
    if args.classifier is None and (args.bias is not None or args.softcap is not None):
        print(
            "error: --bias and --softcap belong to --classifier (hidden states)", file=sys.stderr
        )
        return 2
    paths = [args.logits, args.labels]
    if args.prior is not None and not named_prior(args.prior):
        paths.append(args.prior)  # a per-sample prior may be a Zarr array or shards too
    on_dask = (
        args.scheduler is not None
        or args.dask_workers is not None
        or any(is_zarr(path) or is_shards(path) for path in paths)
    )
    try:
        if args.classifier is not None:
            from ._eval_linear import evaluate_hidden

            report = evaluate_hidden(
                args.logits, args.labels, classifier=args.classifier, bias=args.bias,
                softcap=args.softcap, scheduler=args.scheduler,
                dask_workers=args.dask_workers, **options,
            )  # fmt: skip
        elif on_dask:
            report = evaluate_dask(
                args.logits, args.labels, scheduler=args.scheduler,
                dask_workers=args.dask_workers, **options,
            )  # fmt: skip
        else:
            report = evaluate_files(args.logits, args.labels, **options)
    except KeyboardInterrupt:
        # A local cluster is closed by then; no traceback for a deliberate stop.
        print("error: interrupted", file=sys.stderr)
        return 130
    except EvalError as exc:
        print(f"error: {_as_options(str(exc))}", file=sys.stderr)
        return 2
    except MemoryError as exc:
        print(
            f"error: not enough memory to evaluate {args.logits!r}: {' '.join(str(exc).split())}",
            file=sys.stderr,
        )
        return 2
    if args.json:
        # JSON has no NaN or infinity; a legitimately infinite loss (a -inf logit on the
        # label) or perplexity is written as null. NaN cannot occur: such files are refused.
        fields = {
            k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in report.as_dict().items()
        }
        print(json.dumps(fields, allow_nan=False))
    else:
        print(report.format())
    return 0


def _json_path_problem(path: str | None) -> str | None:
    """Why ``--json PATH`` could not be written, found before minutes of timing."""
    import os

    if path is None or path == "-":
        return None
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        return f"--json {path}: is a directory, not a file"
    if not os.path.isdir(folder):
        return f"--json {path}: the directory {folder} does not exist"
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        return f"--json {path}: not writable"
    return None


def _bench_setup(
    args: argparse.Namespace, cores: int
) -> tuple[list[tuple[int, int]], set[str], list[int] | None] | str:
    """The shapes, candidates and workers of a bench run, or an error message."""
    workers = None
    if args.workers:
        workers = sorted({w if w > 0 else max(1, cores + 1 + w) for w in args.workers})
    problem = _json_path_problem(args.json)
    if problem is not None:
        return problem
    if args.sweep:
        if args.shape:
            return "--sweep times its own grid of shapes; drop --shape"
        if args.linear:
            return "--sweep times its own grid of shapes; drop --linear"
        return [(n, k) for n in SWEEP_N for k in SWEEP_K], set(SWEEP_KINDS), workers or [1]
    shapes = [(int(n), int(k)) for n, k in args.shape] if args.shape else DEFAULT_SHAPES
    kinds = set(ALL_KINDS) | (set(LM_OPTIONS) if args.lm else set())
    return shapes, kinds, workers


def run_bench(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from ._parallel import available_cores

    cores = available_cores()
    setup = _bench_setup(args, cores)
    if isinstance(setup, str):
        print(f"error: {setup}", file=sys.stderr)
        return 2
    shapes, kinds, workers = setup
    names = list(dict.fromkeys(args.logits or DEFAULT_LOGITS))
    to_stdout = args.json == "-"
    info = sys.stderr if to_stdout else sys.stdout
    show = sys.stderr.isatty() if args.progress is None else args.progress
    progress = sys.stderr if show else None
    print(
        f"smoothce {__version__} bench: {len(shapes)} shape(s), {join_and(names)} logits, "
        f"{args.dtype}, epsilon={args.epsilon}, {cores} core(s), {args.rounds} round(s)",
        file=info,
        flush=True,
    )
    load = load_average()
    note = load_note(load, cores)
    if note is not None:
        print(note, file=info)
    if args.rounds < 3:
        print(
            f"note: {args.rounds} round(s) give {args.rounds} sample(s) per candidate: "
            "no spread, so no verdict can tell a difference from noise (use --rounds >= 3)",
            file=info,
        )
    if not to_stdout:
        print_legend(sys.stdout, sweep=args.sweep, logits=names)
    results: list[Measurement] = []
    for shape in shapes:
        results += measure(
            shape, logits=names, dtype=args.dtype, epsilon=args.epsilon, workers=workers,
            rounds=args.rounds, kinds=kinds, min_sample_seconds=args.min_sample_ms / 1e3,
            max_memory_bytes=args.max_memory * 2**30, memory=not args.sweep,
            progress=progress,
        )  # fmt: skip
    for n, d, v in args.linear or []:
        results += measure_linear_head(
            int(n), int(d), int(v), logits=names, dtype=args.dtype, epsilon=args.epsilon,
            rounds=args.rounds, min_sample_seconds=args.min_sample_ms / 1e3,
            progress=progress,
        )  # fmt: skip
    if args.json is not None:
        _write_json(args.json, results, cores, load, names, argv, sweep=bool(args.sweep))
    if to_stdout:
        return 0
    if results:
        print(f"Threads: {results[0].blas}; smoothce's and torch's set per candidate, "
              "outside the timed region.", file=sys.stdout)  # fmt: skip
    if args.sweep:
        for w in workers or [1]:
            format_sweep(results, w, sys.stdout)
    else:
        format_table(results, sys.stdout)
        format_summary(results, sys.stdout)
    return 0


def _write_json(
    path: str,
    results: list[Measurement],
    cores: int,
    load: float | None,
    names: list[str],
    argv: Sequence[str],
    *,
    sweep: bool,
) -> None:
    """The measurements and how they were taken, as JSON, to ``path`` ("-": stdout)."""
    import json
    import shlex
    from dataclasses import asdict

    doc = {
        "smoothce": __version__,
        "command": shlex.join(["python", "-m", "smoothce", *argv]),
        "cores": cores,
        "sweep": sweep,
        "load_average": load,  # before the run: how busy the machine was
        "logits": {n: {"formula": DISTRIBUTIONS[n].formula,
                       "stands_for": DISTRIBUTIONS[n].stands_for} for n in names},
        "results": [asdict(m) for m in results],
    }  # fmt: skip
    text = json.dumps(doc, indent=1)
    if path == "-":
        print(text)
        return
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.command == "bench":
        return run_bench(args, argv)
    if args.command == "eval":
        return run_eval(args)
    n, k = args.shape
    print(f"smoothce {__version__}: softmax cross-entropy with soft targets\n")
    ok = run_examples(sys.stdout)
    if not args.no_timing:
        run_timing((n, k), args.epsilon, args.repeats, sys.stdout)
    return 0 if ok else 1
