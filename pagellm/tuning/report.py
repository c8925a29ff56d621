"""The outputs of ``pagellm tune``: the best configuration (a ``pagellm serve --config`` YAML
file and the equivalent command), the report (Markdown, and HTML on request) with the trial
table, the Pareto front of throughput vs P99 latency (a PNG drawn with matplotlib) and the
comparison with the baseline (the guide's preset)."""

from __future__ import annotations

import html
import math
import shlex
from collections.abc import Sequence
from pathlib import Path

from pagellm.tuning.baseline import Baseline
from pagellm.tuning.tuner import TrialRecord, TuneSetup

BEST_CONFIG_FILE = "best_config.yaml"
REPORT_FILE = "report.md"
HTML_REPORT_FILE = "report.html"
PARETO_FILE = "pareto.png"


def serve_command(config: dict) -> str:
    """The ``pagellm serve`` command line of a serve config mapping."""
    parts = ["pagellm", "serve", shlex.quote(str(config["model"]))]
    for key, value in config.items():
        if key == "model" or value is None:
            continue
        if isinstance(value, bool):
            parts.append(f"--{key}" if value else f"--no-{key}")
        else:
            parts += [f"--{key}", shlex.quote(str(value))]
    return " ".join(parts)


def pareto_points(records: Sequence[TrialRecord], latency: str = "e2el"
                  ) -> list[tuple[int, float, float]]:
    """(trial number, output tokens/s, P99 ``latency`` ms) of every trial whose scored run
    finished (a run stopped early has no whole-run numbers)."""
    points = []
    for record in records:
        run = record.best
        if run is not None and not run["early_stopped"]:
            points.append((record.number, run["output_throughput"],
                           run["latencies_ms"][latency]["p99"]))
    return points


def pareto_front(points: Sequence[tuple[int, float, float]]) -> list[tuple[int, float, float]]:
    """The points no other point beats on both throughput (higher) and latency (lower),
    by throughput ascending."""
    front = []
    for point in sorted(points, key=lambda p: (-p[1], p[2])):
        if not front or point[2] < front[-1][2]:
            front.append(point)
    return sorted(front, key=lambda p: p[1])


def plot_pareto(records: Sequence[TrialRecord], path: Path, latency: str = "e2el",
                best: int | None = None, baseline: Baseline | None = None) -> Path:
    """Write the throughput vs P99 latency scatter with its Pareto front to ``path`` (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = pareto_points(records, latency)
    front = pareto_front(points)
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=100)
    if points:
        axes.scatter([p[1] for p in points], [p[2] for p in points], color="#8a8a8a",
                     label="trials", zorder=2)
        for number, x, y in points:
            axes.annotate(str(number), (x, y), textcoords="offset points", xytext=(4, 4),
                          fontsize=8)
    if front:
        axes.plot([p[1] for p in front], [p[2] for p in front], "-o", color="#d62728",
                  label="Pareto front", zorder=3)
    chosen = [p for p in points if p[0] == best]
    if chosen:
        axes.scatter([chosen[0][1]], [chosen[0][2]], marker="*", s=250, color="#2ca02c",
                     label=f"best goodput (trial {best})", zorder=4)
    if baseline is not None and baseline.best is not None and not baseline.best["early_stopped"]:
        axes.scatter([baseline.best["output_throughput"]],
                     [baseline.best["latencies_ms"][latency]["p99"]], marker="s", s=80,
                     color="#1f77b4", label=baseline.name, zorder=4)
    axes.set_xlabel("output throughput (tokens/s)")
    axes.set_ylabel(f"P99 {latency.upper()} (ms)")
    axes.set_title("pagellm tune: throughput vs P99 latency")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best", fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return f"{value:.{digits}f}"
    return str(value)


def _run_cells(run: dict | None) -> list[str]:
    if run is None:
        return ["-"] * 6
    latencies = run["latencies_ms"]
    return [_fmt(run["request_rate"]), _fmt(run["request_throughput"]),
            _fmt(run["output_throughput"], 1), _fmt(latencies["ttft"]["p99"], 1),
            _fmt(latencies["tpot"]["p99"], 1), _fmt(latencies["e2el"]["p99"], 1)]


RUN_COLUMNS = ["rate (req/s)", "req/s", "output tok/s", "P99 TTFT ms", "P99 TPOT ms",
               "P99 E2EL ms"]


def trial_table(records: Sequence[TrialRecord], knob_names: Sequence[str]) -> list[list[str]]:
    """Header row, then one row per trial: number, state, knobs, goodput, the scored run's
    numbers, duration, note."""
    rows = [["trial", "state", *knob_names, "goodput (req/s)", *RUN_COLUMNS, "time (s)",
             "note"]]
    for record in records:
        rows.append([str(record.number), record.state,
                     *(_fmt(record.values.get(name), 3) for name in knob_names),
                     _fmt(record.goodput, 3), *_run_cells(record.best),
                     _fmt(record.duration_s, 1), record.note.replace("\n", " ")[:160]])
    return rows


def comparison_table(best: TrialRecord, baseline: Baseline) -> list[list[str]]:
    """metric | baseline | tuned | tuned / baseline."""
    rows = [["metric", baseline.name, f"tuned (trial {best.number})", "tuned / baseline"]]
    tuned, base = best.best, baseline.best
    rows.append(["goodput (req/s)", _fmt(baseline.goodput, 3), _fmt(best.goodput, 3),
                 _ratio(best.goodput, baseline.goodput)])
    for label, getter in (("output tok/s", lambda r: r["output_throughput"]),
                          ("P99 TTFT ms", lambda r: r["latencies_ms"]["ttft"]["p99"]),
                          ("P99 TPOT ms", lambda r: r["latencies_ms"]["tpot"]["p99"]),
                          ("P99 E2EL ms", lambda r: r["latencies_ms"]["e2el"]["p99"])):
        a = getter(base) if base is not None else None
        b = getter(tuned) if tuned is not None else None
        rows.append([label, _fmt(a, 1), _fmt(b, 1), _ratio(b, a)])
    return rows


def _ratio(numerator, denominator) -> str:
    if numerator is None or denominator is None:
        return "-"
    if denominator == 0:
        return "inf" if numerator > 0 else "-"
    return f"{numerator / denominator:.2f}x"


def markdown_table(rows: list[list[str]]) -> str:
    escape = [[cell.replace("|", "\\|") for cell in row] for row in rows]
    lines = ["| " + " | ".join(escape[0]) + " |", "|" + "---|" * len(escape[0])]
    lines += ["| " + " | ".join(row) + " |" for row in escape[1:]]
    return "\n".join(lines)


def write_outputs(setup: TuneSetup, records: Sequence[TrialRecord], best: TrialRecord | None,
                  baseline: Baseline | None, out_dir: Path, with_html: bool = False,
                  pareto_latency: str = "e2el") -> dict[str, Path]:
    """Write best_config.yaml (when there is a best), pareto.png and report.md (and
    report.html); returns {kind: path}."""
    from pagellm.tuning.tuner import serve_config, write_config

    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    best_config = None
    if best is not None:
        best_config = serve_config(setup.model, setup.fixed, best.values)
        paths["config"] = write_config(out_dir / BEST_CONFIG_FILE, best_config)
    paths["pareto"] = plot_pareto(records, out_dir / PARETO_FILE, pareto_latency,
                                  best.number if best else None, baseline)
    sections = report_sections(setup, records, best, best_config, baseline, pareto_latency)
    paths["report"] = out_dir / REPORT_FILE
    paths["report"].write_text(render_markdown(sections))
    if with_html:
        paths["html"] = out_dir / HTML_REPORT_FILE
        paths["html"].write_text(render_html(sections))
    return paths


def report_sections(setup: TuneSetup, records, best, best_config, baseline, latency: str
                    ) -> list[tuple[str, list]]:
    """[(heading, [paragraph str | table rows | ("image", file)])] shared by both formats."""
    counts = {state: sum(1 for r in records if r.state == state)
              for state in ("COMPLETE", "PRUNED", "FAIL")}
    summary = [f"Model: `{setup.model}`; fixed flags: `{setup.fixed or 'none'}`.",
               f"Workload: `{setup.workload_description}`.",
               f"SLOs: {', '.join(map(str, setup.slos)) or 'none (goodput = throughput)'}.",
               f"Knobs: {', '.join(f'{k.name} in {k.describe()}' for k in setup.knobs)}.",
               f"Trials: {len(records)} ({counts['COMPLETE']} met the SLOs, "
               f"{counts['PRUNED']} pruned: broke an SLO or could not start, "
               f"{counts['FAIL']} failed)."]
    sections: list[tuple[str, list]] = [("pagellm tune report", summary)]
    if best is None:
        sections.append(("Best configuration", ["No trial met every SLO."]))
    else:
        sections.append(("Best configuration", [
            f"Trial {best.number}: goodput {best.goodput:.3f} req/s.",
            f"Command: `{serve_command(best_config)}`",
            f"Config file: `{BEST_CONFIG_FILE}` (`pagellm serve --config {BEST_CONFIG_FILE}`)."]))
    if baseline is not None:
        body = [f"Baseline: {baseline.name}" + (f" ({baseline.reason})" if baseline.reason
                                                 else "") + ".",
                f"Baseline command: `{serve_command(baseline.config)}`"]
        if baseline.note:
            body.append(f"Note: {baseline.note}")
        if best is not None:
            body.append(comparison_table(best, baseline))
        sections.append(("Comparison with the guide's preset", body))
    sections.append(("Trials", [trial_table(records, [k.name for k in setup.knobs])]))
    front = pareto_front(pareto_points(records, latency))
    sections.append((f"Pareto front: output throughput vs P99 {latency.upper()}", [
        ("image", PARETO_FILE),
        "Trials on the front: " + (", ".join(str(p[0]) for p in front) or "none") + "."]))
    return sections


def render_markdown(sections) -> str:
    lines = []
    for index, (heading, body) in enumerate(sections):
        lines += [("# " if index == 0 else "## ") + heading, ""]
        for item in body:
            if isinstance(item, tuple):
                lines += [f"![{item[1]}]({item[1]})", ""]
            elif isinstance(item, list):
                lines += [markdown_table(item), ""]
            else:
                lines += [item, ""]
    return "\n".join(lines)


def render_html(sections) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>pagellm tune report"
             "</title><style>body{font-family:sans-serif;margin:2em}table{border-collapse:"
             "collapse}td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}</style>"
             "</head><body>"]
    for index, (heading, body) in enumerate(sections):
        tag = "h1" if index == 0 else "h2"
        parts.append(f"<{tag}>{html.escape(heading)}</{tag}>")
        for item in body:
            if isinstance(item, tuple):
                parts.append(f"<img src='{html.escape(item[1])}' alt='{html.escape(item[1])}'>")
            elif isinstance(item, list):
                head = "".join(f"<th>{html.escape(cell)}</th>" for cell in item[0])
                rows = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row)
                               + "</tr>" for row in item[1:])
                parts.append(f"<table><tr>{head}</tr>{rows}</table>")
            else:
                parts.append(f"<p>{html.escape(item)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
