"""``qualiclip score``: score image files and folders, results in input order (also under torchrun).

A run has three steps, kept apart so that another scorer can take the middle one's place: :func:`plan_job`
says which files to score (the inputs, less what ``--resume`` keeps), :func:`score_here` yields their results
(:class:`~qualiclip_metric.batch.FileScore`, in the order of ``job.todo``) and :func:`write_results` writes
them; with ``--ray``, :func:`score_on_ray` yields them from a Ray cluster instead. SIGTERM stops a run as
Ctrl-C does.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qualiclip_metric.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOME_FAILED,
    CommandError,
    load_model,
    load_weights,
    positive_int,
    score_paths,
    scoring_arguments,
)

if TYPE_CHECKING:
    from qualiclip_metric.score_writer import ResumePlan

#: tqdm's bar with the rate always in images per second (tqdm's default turns a slow rate into s/img).
PROGRESS_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}{postfix}]"


def add_parser(commands: Any) -> None:
    score = commands.add_parser(
        "score", help="score image files and folders", description="Score images; results keep the input order."
    )
    score.add_argument(
        "paths", nargs="*", metavar="PATH", help="image files, folders or quoted glob patterns ('photos/**/*.jpg')"
    )
    score.add_argument(
        "--files-from",
        metavar="LIST",
        help="also score the paths listed in LIST, one a line ('-': standard input; blank and # lines are skipped)",
    )
    score.add_argument("--recursive", "-r", action="store_true", help="descend into sub-folders")
    scoring_arguments(score)
    score.add_argument(
        "--prompt-pair",
        nargs=2,
        action="append",
        metavar=("POSITIVE", "NEGATIVE"),
        help="custom antonym pair (repeatable)",
    )
    score.add_argument("--per-pair", action="store_true", help="also report the probability of every antonym pair")
    score.add_argument(
        "--output", "-o", type=Path, help="write results to FILE.csv, .json or .jsonl (default: CSV on stdout)"
    )
    score.add_argument(
        "--resume",
        action="store_true",
        help="continue --output (.csv or .jsonl): keep the images it already scored and score the rest",
    )
    score.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="score on a Ray cluster: auto (the one this machine is in), ray://HOST:10001, HOST:PORT, or local "
        "(a new one here); the output is written here, as a local run writes it",
    )
    score.add_argument(
        "--ray-actors",
        type=positive_int,
        metavar="N",
        help="with --ray: scoring actors, one model each (default: one per GPU, or one per --threads CPUs)",
    )
    score.add_argument("--quiet", "-q", action="store_true", help="no progress bar and no summary")
    score.set_defaults(run=run)


@dataclass
class Job:
    """What a run scores: every input in order, and ``todo``, those this run scores (all without ``--resume``)."""

    inputs: list[Path]
    todo: list[Path]
    resume: ResumePlan | None = None  #: what ``--resume`` keeps (None without it)

    @property
    def kept(self) -> int:
        return self.resume.kept if self.resume is not None else 0


def run(args: argparse.Namespace) -> int:
    """Plan, score and write; the exit code of :mod:`qualiclip_metric.cli` (130 after Ctrl-C or SIGTERM)."""
    from qualiclip_metric.distributed import ranks_from_environment

    ranks = ranks_from_environment()
    with sigterm_stops_like_ctrl_c():
        check_arguments(args, ranks.is_main)
        job = plan_job(args) if ranks.is_main else None  # under torchrun, rank 0 sends the others its todo
        model = None
        if args.ray is not None and job.todo:  # the actors load their own; this one checks the weights (exit 3)
            model = load_weights(args, prompts=args.prompt_pair, device="cpu")
        elif ranks.enabled or job.todo:  # a complete --resume output needs no model
            model = load_model(args, prompts=args.prompt_pair, local_rank=ranks.local_rank)
        start = time.perf_counter()
        pair_names = pair_columns(args, model, job)
        # The scorer: any iterator of FileScore for job.todo, in that order, can take this line's place.
        results = score_on_ray(args, job) if args.ray is not None else score_here(args, model, job, ranks)
        if results is None:  # a rank other than 0 under torchrun: rank 0 writes
            return EXIT_OK
        return write_results(args, job, results, pair_names, start)


def check_arguments(args: argparse.Namespace, is_main: bool = True) -> None:
    """Refuse, before anything is read or loaded, options that cannot work together or an unwritable output."""
    from qualiclip_metric.score_writer import OutputError, check_output

    if not args.paths and args.files_from is None:
        raise CommandError("give the images to score: PATH... or --files-from LIST")
    if args.resume and args.output is None:
        raise CommandError("--resume continues an --output file: give --output FILE.csv or FILE.jsonl")
    check_ray_arguments(args)
    try:
        if args.output is not None and is_main:
            check_output(args.output, resume=args.resume)
        if args.prompt_pair:
            from qualiclip_metric.config import validate_prompt_pairs

            validate_prompt_pairs(args.prompt_pair)
    except (OutputError, ValueError) as err:
        raise CommandError(str(err)) from err


def check_ray_arguments(args: argparse.Namespace) -> None:
    """What ``--ray`` cannot do: run under torchrun, name a GPU, or let ``--fast`` choose for another machine."""
    from qualiclip_metric.distributed import ranks_from_environment

    if args.ray is None:
        if args.ray_actors is not None:
            raise CommandError("--ray-actors sets the actors of --ray: give --ray ADDRESS")
        return
    if ranks_from_environment().enabled:
        raise CommandError("--ray cannot run under torchrun: start one process, and Ray runs the cluster's")
    if args.fast or args.compile:
        raise CommandError("--fast and --compile choose for the machine they run on: with --ray, give --precision")
    if args.device.startswith("cuda:"):
        raise CommandError(f"--device {args.device} with --ray: Ray gives each actor its GPU, give --device cuda")


def plan_job(args: argparse.Namespace) -> Job:
    """The inputs (PATH arguments, then ``--files-from``) and, with ``--resume``, those the output lacks.

    Raises:
        CommandError: no image files, a pattern that matches nothing, an unreadable list, or an output that
            ``--resume`` cannot continue (exit 2; nothing is changed).
    """
    from qualiclip_metric.inputs import collect_image_files
    from qualiclip_metric.score_writer import OutputError, ScoreFileError, plan_resume

    try:
        inputs = collect_image_files(args.paths, recursive=args.recursive, files_from=args.files_from)
    except ValueError as err:
        raise CommandError(str(err)) from err
    except OSError as err:
        raise CommandError(f"--files-from {args.files_from}: {err.strerror or err}") from err
    if not inputs:
        named = [*args.paths, *([f"--files-from {args.files_from}"] if args.files_from is not None else [])]
        raise CommandError("no image files found in " + ", ".join(named))
    if not args.resume:
        return Job(inputs, inputs)
    try:
        plan = plan_resume(args.output, inputs, per_pair=args.per_pair)
    except (ScoreFileError, OutputError) as err:
        raise CommandError(f"{err}; nothing was changed") from err
    if not args.quiet:
        retried = f" ({plan.retried} that failed before)" if plan.retried else ""
        foreign = f"; {plan.foreign} rows of other files stay at the end" if plan.foreign else ""
        print(
            f"qualiclip: resuming {args.output}: kept {plan.kept} of {plan.kept + len(plan.todo)} images, "
            f"{len(plan.todo)} to score{retried}{foreign}",
            file=sys.stderr,
        )
    return Job(inputs, plan.todo, plan)


def pair_columns(args: argparse.Namespace, model: Any, job: Job | None) -> list[str]:
    """The per-pair columns: the model's pairs (checked against a resumed file's), or the file's without a model."""
    from qualiclip_metric.score_writer import ScoreFileError

    if not args.per_pair:
        return []
    if model is None:
        return job.resume.stored.pair_names
    if job is not None and job.resume is not None:
        try:
            job.resume.stored.check_columns(per_pair=True, pair_names=model.pair_names)
        except ScoreFileError as err:
            raise CommandError(f"{err}; nothing was changed") from err
    return model.pair_names


def score_here(args: argparse.Namespace, model: Any, job: Job | None, ranks: Any) -> Iterable[Any] | None:
    """The results of ``job.todo`` in order, scored by this process (under torchrun, by every rank).

    Under torchrun each rank scores a shard of rank 0's todo and rank 0 gets every result, in order; the
    other ranks get None.
    """
    from qualiclip_metric.distributed import gather_in_order, init_process_group, shard

    if not ranks.enabled:
        return score_paths(args, model, job.todo, per_pair=args.per_pair) if job.todo else iter(())
    import torch.distributed as dist

    init_process_group(ranks, model.device)
    todo = [job.todo if job is not None else None]
    dist.broadcast_object_list(todo, src=0, device=model.device if model.device.type == "cuda" else None)
    shard_results = score_paths(args, model, shard(todo[0], ranks), per_pair=args.per_pair)
    results = gather_in_order(shard_results, ranks, len(todo[0]))
    return results if ranks.is_main else None


def score_on_ray(args: argparse.Namespace, job: Job) -> Iterator[Any]:
    """The results of ``job.todo`` in order, scored on the Ray cluster ``--ray`` names (``docs/scale.md``).

    This process joins the cluster (``local`` starts one) and gets the results back as :func:`score_here`
    gives them; the actors load the weights and read the files, which every node must reach by the same paths.

    Raises:
        CommandError: the cluster cannot be joined, has no GPUs for ``--device cuda``, or fails while scoring (exit 2).
    """
    import ray

    from qualiclip_metric.inputs import DEFAULT_MAX_PIXELS
    from qualiclip_metric.ray import score_files_with_ray

    if not job.todo:
        return iter(())
    try:
        ray.init(address=args.ray, log_to_driver=False, logging_level="WARNING")
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise CommandError(f"--ray {args.ray}: cannot join the cluster: {err}") from err
    if args.device == "cuda" and not ray.cluster_resources().get("GPU"):  # Ray would wait for GPUs forever
        raise CommandError(f"--device cuda: the Ray cluster at {args.ray} has no GPUs")
    _ray_data_console_errors_only()
    results = score_files_with_ray(
        job.todo,
        weights=args.weights,
        device=args.device,
        precision=args.precision or "fp32",
        backend=args.backend or "torch",
        per_pair=args.per_pair,
        batch_size=args.batch_size,
        max_size=args.max_size,
        max_pixels=DEFAULT_MAX_PIXELS if args.max_pixels is None else args.max_pixels,
        actors=args.ray_actors,
        num_cpus=args.threads or 1,
        threads=args.threads,
        prompts=args.prompt_pair,
        temperature=args.temperature,
        prompt_learner=args.prompt_learner,
        revision=args.revision,
        cache_dir=args.cache_dir,
        local_files_only=args.offline,
    )
    return _cluster_errors_stop(results, args.ray)


def _ray_data_console_errors_only() -> None:
    """Ray Data's notices (each dataset's start and plan) stay in its session log, off this command's stderr."""
    import logging

    import ray.data  # noqa: F401 - configures the "ray.data" logger and its handlers

    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setLevel(logging.ERROR)


def _cluster_errors_stop(results: Iterator[Any], address: str) -> Iterator[Any]:
    """An error of the cluster (an actor that cannot load the weights, a lost node, a file lost or returned
    twice) ends the run with one line."""
    from ray.exceptions import RayError

    from qualiclip_metric.ray import ClusterResultError

    try:
        yield from results
    except (RayError, ClusterResultError) as err:
        lines = [line for line in str(err).splitlines() if line.strip()]
        reason = lines[-1] if lines else type(err).__name__
        raise CommandError(f"--ray {address}: the cluster failed: {reason}") from err


def write_results(
    args: argparse.Namespace, job: Job, results: Iterable[Any], pair_names: list[str], start: float
) -> int:
    """Write the results with a progress bar (images per second, time left) and the summary line."""
    from tqdm import tqdm

    from qualiclip_metric.score_writer import OutputError, ScoreFileError, ScoringInterrupted, write_scores

    progress = tqdm(
        total=len(job.todo),
        unit="img",
        desc=f"{job.kept} kept" if job.resume is not None else None,
        bar_format=PROGRESS_FORMAT,
        file=sys.stderr,
        disable=True if args.quiet else None,
    )
    resume = job.inputs if job.resume is not None else None
    try:
        summary = write_scores(results, args.output, pair_names=pair_names, progress=progress.update, resume=resume)
    except (OutputError, ScoreFileError) as err:
        raise CommandError(f"{err}; nothing was replaced") from err
    except ScoringInterrupted as stop:
        where = f"; the results so far are in {stop.kept} (--resume continues)" if stop.kept else ""
        raise CommandError(
            f"interrupted after {stop.count} of {len(job.todo)} images{where}", EXIT_INTERRUPTED
        ) from None
    finally:
        progress.close()
    elapsed = time.perf_counter() - start
    failed = summary.failed
    if not args.quiet:
        for row in failed:
            print(f"qualiclip: failed: {row['error']}", file=sys.stderr)
        mean = f", mean score {summary.mean:.4f}" if summary.scored else ""
        kept = f"; kept {job.kept} from {args.output}" if job.resume is not None else ""
        print(
            f"qualiclip: scored {summary.scored} of {len(job.todo)} images in {elapsed:.1f} s "
            f"({summary.scored / max(elapsed, 1e-9):.2f} images/s){mean}; {len(failed)} failed{kept}",
            file=sys.stderr,
        )
    return EXIT_SOME_FAILED if failed else EXIT_OK


@contextlib.contextmanager
def sigterm_stops_like_ctrl_c() -> Iterator[None]:
    """SIGTERM (``kill``, ``timeout``, schedulers) raises KeyboardInterrupt: the rows so far are kept, exit 130.

    A second SIGTERM while the run stops is ignored, so that it cannot cut the rewrite of the output short.
    """

    def stop(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread (main() called from a thread): leave SIGTERM alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
