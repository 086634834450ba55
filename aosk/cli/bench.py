"""``aosk bench NAME``: measured figures, written to docs/benchmarks.md."""

from __future__ import annotations

import argparse
from pathlib import Path

from aosk.config import Settings


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    bench = sub.add_parser("bench", help="run a benchmark and record it in docs/benchmarks.md")
    kinds = bench.add_subparsers(dest="kind", metavar="NAME", required=True)
    ingest = kinds.add_parser("ingest", help="SDK encode+produce vs. Kafka's ProducerPerformance")
    ingest.add_argument("--events", type=int, default=200_000)
    ingest.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"),
                        help="markdown file to update (default docs/benchmarks.md)")
    ingest.set_defaults(run=_ingest)
    project = kinds.add_parser("project", help="journal -> every projection end to end vs. raw COPY of the same rows")
    project.add_argument("--events", type=int, default=50_000)
    project.add_argument("--agents", type=int, default=200)
    project.add_argument("--processes", type=int, default=2, help="aosk project processes (default %(default)s)")
    project.add_argument("--repeat", type=int, default=3,
                         help="runs with the journal written first; the median is reported (default %(default)s)")
    project.add_argument("--without-hnsw", action="store_true",
                         help="drop the memories' HNSW index first, to see what the rest of the pipeline costs")
    project.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"),
                         help="markdown file to update (default docs/benchmarks.md)")
    project.set_defaults(run=_project)
    rp = kinds.add_parser("replay", help="aosk replay's rebuild rate vs. the live projection rate, same journal")
    rp.add_argument("--events", type=int, default=50_000)
    rp.add_argument("--agents", type=int, default=200)
    rp.add_argument("--processes", type=int, default=2, help="live aosk project processes (default %(default)s)")
    rp.add_argument("--batch-max", type=int, default=5_000, help="replay batch size (default %(default)s)")
    rp.add_argument("--replay-processes", type=int, default=2, help="aosk replay --processes (default %(default)s)")
    rp.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"),
                    help="markdown file to update (default docs/benchmarks.md)")
    rp.set_defaults(run=_replay)
    wk = kinds.add_parser("worker", help="aosk worker's verdicts/s and latency vs. the in-process fold and a "
                                         "Kafka pass-through")
    wk.add_argument("--events", type=int, default=50_000)
    wk.add_argument("--agents", type=int, default=200)
    wk.add_argument("--repeat", type=int, default=3,
                    help="runs with 1 and with 2 workers each; the median is reported (default %(default)s)")
    wk.add_argument("--rates", type=_rates, default=(300.0, 1_000.0, 2_000.0), metavar="R1,R2,...",
                    help="offered rates (events/s) of the open-loop latency runs (default 300,1000,2000)")
    wk.add_argument("--latency-seconds", type=float, default=20.0,
                    help="how long each latency run offers its rate (default %(default)s)")
    wk.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"),
                    help="markdown file to update (default docs/benchmarks.md)")
    wk.add_argument("--plot", type=Path, default=None,
                    help="latency plot (PNG; default worker-latency.png next to --output)")
    wk.set_defaults(run=_worker)


def _ingest(settings: Settings, args: argparse.Namespace) -> int:
    from aosk.bench.ingest import bench_ingest, report_markdown
    from aosk.bench.report import machine_line

    result = bench_ingest(settings, events=args.events)
    return _publish(args.output, "ingest", report_markdown(result, machine_line()))


def _project(settings: Settings, args: argparse.Namespace) -> int:
    from aosk.bench.project import bench_project, report_markdown
    from aosk.bench.report import machine_line

    result = bench_project(settings, events=args.events, agents=args.agents, processes=args.processes,
                           without_hnsw=args.without_hnsw, repeat=args.repeat)
    section = "project-without-hnsw" if args.without_hnsw else "project"
    return _publish(args.output, section, report_markdown(result, machine_line()))


def _replay(settings: Settings, args: argparse.Namespace) -> int:
    from aosk.bench.replay import bench_replay, report_markdown
    from aosk.bench.report import machine_line

    result = bench_replay(settings, events=args.events, agents=args.agents, processes=args.processes,
                          batch_max=args.batch_max, replay_processes=args.replay_processes)
    return _publish(args.output, "replay", report_markdown(result, machine_line()))


def _rates(text: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        rates = ()
    if not rates or any(r <= 0 for r in rates):
        raise argparse.ArgumentTypeError(f"{text!r}: give positive events/s separated by commas, e.g. 300,1000")
    return rates


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    import os

    from aosk.bench.plot import INSTALL_HINT, latency_plot
    from aosk.bench.report import machine_line
    from aosk.bench.worker import bench_worker, report_markdown

    result = bench_worker(settings, events=args.events, agents=args.agents, repeat=args.repeat, rates=args.rates,
                          latency_seconds=args.latency_seconds)
    machine = machine_line()
    plot_path = args.plot or args.output.with_name("worker-latency.png")
    title = f"aosk worker, one process: produce -> verdict, {result.events:,} events\n{machine}"
    drawn = latency_plot(result, plot_path, title=title)
    if drawn:
        print(f"latency plot written to {plot_path}")
    else:
        print(f"no latency plot: matplotlib is missing ({INSTALL_HINT})")
    relative = os.path.relpath(plot_path, args.output.parent) if drawn else None
    return _publish(args.output, "worker", report_markdown(result, machine, plot=relative))


def _publish(output: Path, section: str, text: str) -> int:
    """Print a benchmark's report and rewrite its section of ``output``."""
    from aosk.bench.report import write_section

    print(text)
    write_section(output, section, text)
    print(f"written to {output}")
    return 0
