"""``aosk bench NAME``: measured figures, written to docs/benchmarks.md."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aosk.cli._flags import (
    add_agents,
    add_batch_max,
    add_events,
    add_no_progress,
    add_output,
    add_processes,
    add_repeat,
    field_default,
    param_default,
)
from aosk.config import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from aosk.bench.api import bench_api
    from aosk.bench.growth import bench_growth
    from aosk.bench.ingest import bench_ingest
    from aosk.bench.memory import bench_memory
    from aosk.bench.project import bench_project
    from aosk.bench.reads import bench_reads
    from aosk.bench.replay import bench_replay
    from aosk.bench.runtime import bench_runtime
    from aosk.bench.worker import bench_worker
    from aosk.projectors.replay import ReplayOptions

    bench = sub.add_parser("bench", help="run a benchmark and record it in docs/benchmarks.md")
    kinds = bench.add_subparsers(dest="kind", metavar="NAME", required=True)
    ingest = kinds.add_parser("ingest", help="SDK encode+produce vs. Kafka's ProducerPerformance")
    add_events(ingest, default=param_default(bench_ingest, "events"))
    add_no_progress(ingest)
    add_output(ingest)
    ingest.set_defaults(run=_ingest)
    project = kinds.add_parser("project", help="journal -> every projection end to end vs. raw COPY of the same rows")
    add_events(project, default=param_default(bench_project, "events"))
    add_agents(project, default=param_default(bench_project, "agents"))
    add_processes(project, default=param_default(bench_project, "processes"), help="aosk project processes")
    add_repeat(project, default=param_default(bench_project, "repeat"),
               help="runs with the journal written first, each with and without the vector index; the medians "
                    "are reported")
    add_no_progress(project)
    add_output(project)
    project.set_defaults(run=_project)
    gr = kinds.add_parser("growth", help="events/s, PostgreSQL bytes per event and state_at latency against "
                                         "journal size")
    sizes = param_default(bench_growth, "sizes")
    gr.add_argument("--sizes", type=_sizes, default=sizes, metavar="N1,N2,...",
                    help=f"journal sizes in events (default {','.join(map(str, sizes))}; the documented longer run "
                         "adds 1000000)")
    gr.add_argument("--events-per-agent", type=int, default=param_default(bench_growth, "events_per_agent"),
                    metavar="N", help="records per agent: the agents scale with the journal (default %(default)s)")
    add_processes(gr, default=param_default(bench_growth, "processes"), help="aosk project processes")
    gr.add_argument("--compare-untuned", action="store_true",
                    help="project each size a second time with agent_state's storage settings as before migration "
                         "0008, to measure what they change in the same run")
    gr.add_argument("--state-at-samples", type=int, default=param_default(bench_growth, "state_at_samples"),
                    metavar="N", help="state_at reads timed per size, after 10 warm-up reads (default %(default)s)")
    add_no_progress(gr)
    add_output(gr)
    gr.add_argument("--plot", type=Path, default=None, metavar="PATH",
                    help="the plot (PNG; default growth.png next to --output)")
    gr.set_defaults(run=_growth)
    rp = kinds.add_parser("replay", help="aosk replay's rebuild rate vs. the live projection rate, same journal")
    add_events(rp, default=param_default(bench_replay, "events"))
    add_agents(rp, default=param_default(bench_replay, "agents"))
    # --processes counts the live aosk project processes, as in `aosk bench project`.
    add_processes(rp, default=param_default(bench_replay, "processes"), help="live aosk project processes")
    add_batch_max(rp, default=field_default(ReplayOptions, "batch_max"), help="aosk replay --batch-max")
    rp.add_argument("--replay-processes", type=int, default=field_default(ReplayOptions, "processes"), metavar="N",
                    help="aosk replay --processes (default %(default)s)")
    add_repeat(rp, default=param_default(bench_replay, "repeat"),
               help="runs of live, rebuild and limit on the same journal; the medians are reported")
    add_no_progress(rp)
    add_output(rp)
    rp.set_defaults(run=_replay)
    wk = kinds.add_parser("worker", help="aosk worker's verdicts/s and latency vs. the in-process fold and a "
                                         "Kafka pass-through")
    add_events(wk, default=param_default(bench_worker, "events"))
    add_agents(wk, default=param_default(bench_worker, "agents"))
    add_repeat(wk, default=param_default(bench_worker, "repeat"),
               help="runs with 1 and with 2 workers each; the median is reported")
    rates = param_default(bench_worker, "rates")
    wk.add_argument("--rates", type=_rates, default=rates, metavar="R1,R2,...",
                    help="offered rates (events/s) of the open-loop latency runs (default "
                         f"{','.join(f'{r:g}' for r in rates)})")
    wk.add_argument("--latency-seconds", type=float, default=param_default(bench_worker, "latency_seconds"),
                    metavar="SECONDS", help="how long each latency run offers its rate (default %(default)s)")
    add_no_progress(wk)
    add_output(wk)
    wk.add_argument("--plot", type=Path, default=None, metavar="PATH",
                    help="latency plot (PNG; default worker-latency.png next to --output)")
    wk.set_defaults(run=_worker)
    api = kinds.add_parser("api", help="aosk api's authenticated POST .../events (max/s closed loop, p50/p99 at half "
                                       "load open loop) vs. a bare FastAPI endpoint")
    api.add_argument("--duration", type=float, default=param_default(bench_api, "duration"), metavar="SECONDS",
                     help="each closed-loop (wrk) run (default %(default)s)")
    api.add_argument("--open-seconds", type=float, default=param_default(bench_api, "open_seconds"),
                     metavar="SECONDS", help="each open-loop run, after 1 s of warm-up (default %(default)s)")
    add_repeat(api, default=param_default(bench_api, "repeat"),
               help="closed-loop runs at the best connection count; the median is reported")
    conns = param_default(bench_api, "connections")
    api.add_argument("--connections", type=_counts, default=conns, metavar="N1,N2,...",
                     help=f"wrk connection counts tried (default {','.join(map(str, conns))})")
    api.add_argument("--workers", type=int, default=param_default(bench_api, "workers"), metavar="N",
                     help="uvicorn workers of each server (default %(default)s)")
    api.add_argument("--quick", action="store_true",
                     help="a short run (2 s closed loops, one connection count, 3 s open loop, no repeats)")
    add_no_progress(api)
    add_output(api)
    api.set_defaults(run=_api)
    rt = kinds.add_parser("runtime", help="aosk runtime's scheduling overhead (step end -> next write, 1 s model) and "
                                          "step rate (instant model) vs. producing and folding the same records")
    add_agents(rt, default=param_default(bench_runtime, "agents"))
    rt.add_argument("--tasks", type=int, default=param_default(bench_runtime, "tasks_per_agent"), metavar="N",
                    help="tasks per agent, at most 8 (default %(default)s)")
    rt.add_argument("--delay-ms", type=int, default=param_default(bench_runtime, "delay_ms"), metavar="MS",
                    help="the stand-in's answer delay in the overhead runs (default %(default)s)")
    add_repeat(rt, default=param_default(bench_runtime, "repeat"),
               help="overhead and rate runs each; the median is reported")
    rt.add_argument("--quick", action="store_true", help="a short run (20 agents, 2 tasks, 200 ms model, no repeats)")
    add_no_progress(rt)
    add_output(rt)
    rt.set_defaults(run=_runtime)
    rd = kinds.add_parser("reads", help="ProjectionReader.state_at at random offsets and latest state (p50/p99), "
                                        "in process, vs. state_at from the journal")
    add_agents(rd, default=param_default(bench_reads, "agents"))
    rd.add_argument("--events-per-agent", type=int, default=param_default(bench_reads, "events_per_agent"),
                    metavar="N", help="records per agent, about (default %(default)s)")
    rd.add_argument("--samples", type=int, default=param_default(bench_reads, "samples"), metavar="N",
                    help="timed reads of each kind per run (default %(default)s)")
    rd.add_argument("--journal-samples", type=int, default=param_default(bench_reads, "journal_samples"),
                    metavar="N", help="timed state_at reads from the journal per run, each checked against "
                                      "PostgreSQL's (default %(default)s)")
    rd.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                    help="records of an agent between checkpoints (default: a new schema's, 50)")
    add_repeat(rd, default=param_default(bench_reads, "repeat"), help="timed runs; the median is reported")
    add_no_progress(rd)
    add_output(rd)
    rd.set_defaults(run=_reads)
    mem = kinds.add_parser("memory", help="memory vector index candidates: build time, size, insert CPU, recall@10 "
                                          "and query p50/p99 with and without filters, vs. today's HNSW")
    mem.add_argument("--vectors", type=int, default=param_default(bench_memory, "vectors"), metavar="N",
                     help="memories per data set (default %(default)s; the documented longer run: 1000000)")
    mem.add_argument("--queries", type=int, default=param_default(bench_memory, "queries"), metavar="N",
                     help="timed recalls per filter and candidate (default %(default)s)")
    mem.add_argument("--inserts", type=int, default=param_default(bench_memory, "inserts"), metavar="N",
                     help="memories inserted into each built index to time insertion (default %(default)s)")
    mem.add_argument("--candidates", type=_kinds, default=param_default(bench_memory, "candidates"),
                     metavar="K1,K2,...", help="indexes to measure, of hnsw, hnsw_bq, halfvec, ivfflat (default: all)")
    mem.add_argument("--data", type=_data_sets, default=param_default(bench_memory, "data"), metavar="D1,D2",
                     help="data sets: clustered (the workload's shape), uniform (random directions, the worst "
                          "case); default both")
    add_no_progress(mem)
    add_output(mem)
    mem.set_defaults(run=_memory)
    _register_cluster(kinds)


def _register_cluster(kinds: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from aosk.bench.cluster_load import LoadOptions
    from aosk.projectors.db import DEFAULT_SCHEMA

    d = LoadOptions()
    cl = kinds.add_parser("cluster", help="load through nginx against the running `aosk cluster`, one node SIGKILLed "
                                          "whole mid-load and started again, then nothing lost, nothing doubled, "
                                          "projections equal the fold, audit verify")
    cl.add_argument("--duration", type=float, default=d.duration_s, metavar="SECONDS",
                    help="seconds of load (default %(default)s)")
    cl.add_argument("--clients", type=int, default=d.clients, metavar="N",
                    help="closed-loop clients (default %(default)s)")
    cl.add_argument("--kill-at", type=float, default=d.kill_at_s, metavar="SECONDS",
                    help="seconds into the load to SIGKILL the node; negative: no kill (default %(default)s)")
    cl.add_argument("--down", type=float, default=d.down_s, metavar="SECONDS",
                    help="seconds the node stays down (default %(default)s)")
    cl.add_argument("--node", default=d.node, metavar="NODE", help="the node to kill (default %(default)s)")
    cl.add_argument("--events-per-agent", type=int, default=d.events_per_agent, metavar="N",
                    help="events posted to each agent created (default %(default)s)")
    cl.add_argument("--request-deadline", type=float, default=d.request_deadline_s, metavar="SECONDS",
                    help="give a request up after retrying this long (default %(default)s)")
    cl.add_argument("--key", default=None, metavar="KEY",
                    help="an API key with the write scope (default: one made for tenant 'load')")
    cl.add_argument("--schema", default=DEFAULT_SCHEMA, metavar="NAME",
                    help="the cluster's projection schema (default %(default)s)")
    cl.add_argument("--requests-log", type=Path, default=None, metavar="FILE",
                    help="write every request (key, times, attempts, answer) as JSON lines")
    add_repeat(cl, default=1, help="runs, each with its own kill; the report gives each and their median")
    cl.add_argument("--no-publish", action="store_true", help="print the report, leave docs/benchmarks.md alone")
    add_output(cl)
    cl.set_defaults(run=_cluster)


def _ingest(settings: Settings, args: argparse.Namespace) -> int:
    from aosk.bench.ingest import bench_ingest, report_markdown
    from aosk.bench.report import machine_line

    result = bench_ingest(settings, events=args.events, progress=not args.no_progress)
    return _publish(args.output, "ingest", report_markdown(result, machine_line()))


def _project(settings: Settings, args: argparse.Namespace) -> int:
    from aosk.bench.project import bench_project, report_markdown
    from aosk.bench.report import machine_line

    result = bench_project(settings, events=args.events, agents=args.agents, processes=args.processes,
                           repeat=args.repeat, progress=not args.no_progress)
    return _publish(args.output, "project", report_markdown(result, machine_line()))


def _replay(settings: Settings, args: argparse.Namespace) -> int:
    from aosk.bench.replay import bench_replay, report_markdown
    from aosk.bench.report import machine_line

    result = bench_replay(settings, events=args.events, agents=args.agents, processes=args.processes,
                          batch_max=args.batch_max, replay_processes=args.replay_processes, repeat=args.repeat,
                          progress=not args.no_progress)
    return _publish(args.output, "replay", report_markdown(result, machine_line()))


def _growth(settings: Settings, args: argparse.Namespace) -> int:
    import os

    from aosk.bench.growth import bench_growth, growth_plot, report_markdown
    from aosk.bench.plot import INSTALL_HINT
    from aosk.bench.report import machine_line

    result = bench_growth(settings, sizes=args.sizes, events_per_agent=args.events_per_agent,
                          processes=args.processes, compare_untuned=args.compare_untuned,
                          state_at_samples=args.state_at_samples, progress=not args.no_progress)
    machine = machine_line()
    plot_path = args.plot or args.output.with_name("growth.png")
    drawn = growth_plot(result, plot_path, title=f"aosk bench growth: {args.events_per_agent} records per agent, "
                                                 f"{args.processes} aosk project processes\n{machine}")
    print(f"growth plot written to {plot_path}" if drawn else f"no growth plot: matplotlib is missing ({INSTALL_HINT})")
    command = (f"aosk bench growth --sizes {','.join(map(str, args.sizes))} --events-per-agent "
               f"{args.events_per_agent} --processes {args.processes}"
               + (" --compare-untuned" if args.compare_untuned else ""))
    relative = os.path.relpath(plot_path, args.output.parent) if drawn else None
    return _publish(args.output, "growth", report_markdown(result, machine, command=command, plot=relative))


def _rates(text: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        rates = ()
    if not rates or any(r <= 0 for r in rates):
        raise argparse.ArgumentTypeError(f"{text!r}: give positive events/s separated by commas, e.g. 300,1000")
    return rates


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        sizes = ()
    if not sizes or any(n < 1 for n in sizes):
        raise argparse.ArgumentTypeError(f"{text!r}: give journal sizes in events separated by commas, e.g. "
                                         "10000,100000")
    return sizes


def _counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        counts = ()
    if not counts or any(c < 1 for c in counts):
        raise argparse.ArgumentTypeError(f"{text!r}: give connection counts separated by commas, e.g. 16,64")
    return counts


def _api(settings: Settings, args: argparse.Namespace) -> int:
    from aosk.bench.api import bench_api, report_markdown
    from aosk.bench.report import machine_line

    if args.quick:
        args.duration, args.open_seconds, args.repeat, args.connections = 2.0, 3.0, 1, args.connections[-1:]
    result = bench_api(settings, workers=args.workers, duration=args.duration, repeat=args.repeat,
                       connections=args.connections, open_seconds=args.open_seconds, progress=not args.no_progress)
    command = ("aosk bench api --quick" if args.quick else
               f"aosk bench api --duration {args.duration:g} --repeat {args.repeat} --open-seconds "
               f"{args.open_seconds:g} --connections {','.join(map(str, args.connections))}")
    return _publish(args.output, "api", report_markdown(result, machine_line(), command))


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    import os

    from aosk.bench.plot import INSTALL_HINT, latency_plot
    from aosk.bench.report import machine_line
    from aosk.bench.worker import bench_worker, report_markdown

    result = bench_worker(settings, events=args.events, agents=args.agents, repeat=args.repeat, rates=args.rates,
                          latency_seconds=args.latency_seconds, progress=not args.no_progress)
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


def _runtime(settings: Settings, args: argparse.Namespace) -> int:
    from aosk.bench.report import machine_line
    from aosk.bench.runtime import bench_runtime, command_line, report_markdown

    if args.quick:
        args.agents, args.tasks, args.delay_ms, args.repeat = 20, 2, 200, 1
    result = bench_runtime(settings, agents=args.agents, tasks_per_agent=args.tasks, delay_ms=args.delay_ms,
                           repeat=args.repeat, progress=not args.no_progress)
    return _publish(args.output, "runtime", report_markdown(result, machine_line(), command_line(result, args.quick)))


def _memory(settings: Settings, args: argparse.Namespace) -> int:
    from aosk.bench.memory import bench_memory, report_markdown
    from aosk.bench.report import machine_line

    result = bench_memory(settings, vectors=args.vectors, queries=args.queries, inserts=args.inserts,
                          candidates=args.candidates, data=args.data, progress=not args.no_progress)
    # the longer runs, and runs of one data set, keep their own sections next to the default's
    section = "memory" + ("" if args.vectors == 100_000 else f"-{args.vectors}") + (
        "" if args.data == param_default(bench_memory, "data") else "-" + "-".join(args.data))
    return _publish(args.output, section, report_markdown(result, machine_line()))


def _kinds(text: str) -> tuple[str, ...]:
    from aosk.projectors.memory_index import KINDS

    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise argparse.ArgumentTypeError(f"unknown index {', '.join(bad) or '(none)'}; of {', '.join(KINDS)}")
    return kinds


def _data_sets(text: str) -> tuple[str, ...]:
    from aosk.bench.memory import DATA

    sets = tuple(d.strip() for d in text.split(",") if d.strip())
    if not sets or any(d not in DATA for d in sets):
        raise argparse.ArgumentTypeError(f"data sets are {', '.join(DATA)}, got {text!r}")
    return sets


def _reads(settings: Settings, args: argparse.Namespace) -> int:
    from aosk.bench.reads import bench_reads, report_markdown
    from aosk.bench.report import machine_line

    result = bench_reads(settings, agents=args.agents, events_per_agent=args.events_per_agent,
                         samples=args.samples, journal_samples=args.journal_samples, repeat=args.repeat,
                         checkpoint_every=args.checkpoint_every, progress=not args.no_progress)
    # a run with another checkpoint spacing keeps its own section next to the default's
    section = "reads" if args.checkpoint_every is None else f"reads-checkpoint-every-{args.checkpoint_every}"
    return _publish(args.output, section, report_markdown(result, machine_line()))
def _cluster(settings: Settings, args: argparse.Namespace) -> int:
    from aosk.bench import cluster_load as cl
    from aosk.bench.report import machine_line

    options = cl.LoadOptions(duration_s=args.duration, clients=args.clients, kill_at_s=args.kill_at,
                             down_s=args.down, node=args.node, events_per_agent=args.events_per_agent,
                             request_deadline_s=args.request_deadline)
    runs = []
    for i in range(args.repeat):
        if args.repeat > 1:
            print(f"run {i + 1} of {args.repeat}", flush=True)
        result = cl.run_cluster_load(settings, options, api_key=args.key)
        for line in cl.summary_lines(result):
            print(line, flush=True)
        if args.requests_log:
            log = args.requests_log if args.repeat == 1 else args.requests_log.with_suffix(f".{i + 1}.jsonl")
            cl.write_requests(result, log)
        check = cl.check_cluster_load(settings, result, schema=args.schema)
        for line in cl.check_lines(check):
            print(line, flush=True)
        runs.append((result, check))
    command = cl.command_line(options) + (f" --repeat {args.repeat}" if args.repeat > 1 else "")
    text = cl.report_markdown(runs, machine_line(), command)
    if args.no_publish:
        print(text)
    else:
        _publish(args.output, "cluster", text)
    failed = [p for _, c in runs for p in c.problems()]
    if failed:
        print("aosk bench cluster: CHECKS FAILED:\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    return 0


def _publish(output: Path, section: str, text: str) -> int:
    """Print a benchmark's report and rewrite its section of ``output``."""
    from aosk.bench.report import write_section

    print(text)
    write_section(output, section, text)
    print(f"written to {output}")
    return 0
