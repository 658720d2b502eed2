"""Output of the model benchmark: the terminal table, JSON, CSV, the latency plot and a progress bar."""
import csv
import json
import os
import sys

# CSV columns: the row's own fields, then the run's facts repeated on every row so a CSV alone says
# where and with what it was measured.
ROW_FIELDS = ("model", "model_type", "device", "dtype", "batch", "seq", "padded_seq", "real_tokens", "padded_tokens",
              "backend", "ours", "quantized", "status", "reason", "median_ms", "p90_ms", "p99_ms", "reps", "timing",
              "tokens_per_s", "peak_mem_MiB", "first_call_s", "speedup", "max_abs_diff", "reference_error",
              "load_average_1m")
META_FIELDS = ("time_utc", "machine", "cpu", "cpu_isa_detected", "fastformer_compiled_cpu_isa", "gpu", "torch_threads",
               "git_sha", "baseline")
LOAD_FIELDS = ("load_average_1m_before", "load_average_1m_during_max", "busy")
VERSION_FIELDS = ("fastformer", "torch", "triton", "transformers", "onnxruntime")


class ProgressBar:
    """One line on stderr: grid points done, the current point and its timed round; silent when stderr
    is not a terminal (logs, CI)."""

    def __init__(self, total_points: int, stream=sys.stderr, width: int = 24):
        self.total, self.started, self.rounds, self.label = max(total_points, 1), 0, 0, ""
        self.stream, self.width, self.enabled = stream, width, stream.isatty()

    def point(self, label: str):
        self.started, self.rounds, self.label = self.started + 1, 0, label
        self._draw()

    def round(self):
        self.rounds += 1
        self._draw()

    def _draw(self):
        if self.enabled:
            filled = self.width * (self.started - 1) // self.total
            line = f"[{'#' * filled}{'.' * (self.width - filled)}] {self.started}/{self.total} {self.label}"
            self.stream.write(f"\r{line + (f' round {self.rounds}' if self.rounds else ''):<90.90}")
            self.stream.flush()

    def close(self):
        if self.enabled:
            self.stream.write("\r" + " " * 90 + "\r")
            self.stream.flush()


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _point_title(r: dict) -> str:
    title = f"{r['device']} {r['dtype']} batch {r['batch']}"
    if r.get("real_tokens") is None:
        return f"{title} x seq {r['seq']}"
    if r["real_tokens"] == r["padded_tokens"]:
        return f"{title} x seq {r['padded_seq']} ({r['real_tokens']} tokens, no padding)"
    return (f"{title}, real lengths padded to {r['padded_seq']} tokens (at most {r['seq']}): {r['real_tokens']} real "
            f"tokens of {r['padded_tokens']} positions ({100 * (1 - r['real_tokens'] / r['padded_tokens']):.0f}% padding)")


def _summary_table(summary: dict) -> list[str]:
    head = (f"{'point':<28} {'fastest':<17} {'ms':>9} {'fastformer ms':>13} {'ratio':>6}  "
            f"{'fastest full-precision other':<28} {'ratio':>6}")
    lines = ["", "summary (ratio: fastformer's median / the other's; above 1.00 fastformer is slower)", head,
             "-" * len(head)]
    for v in summary["points"]:
        point = f"{v['device']} {v['dtype']} b{v['batch']}" + (f" (padded {v['padded_seq']})" if v["padded_seq"] else "")
        lines.append(f"{point:<28} {v['fastest'] or '-':<17} {_fmt(v['fastest_ms'], '9.2f'):>9} "
                     f"{_fmt(v['fastformer_ms'], '13.2f'):>13} {_fmt(v['fastformer_vs_fastest_other'], '5.2f'):>5}x  "
                     f"{v['fastest_full_precision_other'] or '-':<28} "
                     f"{_fmt(v['fastformer_vs_fastest_full_precision_other'], '5.2f'):>5}x")
    lines.append(f"fastformer is fastest at {summary['fastformer_fastest']} of {summary['points_with_fastformer']} "
                 f"points, and fastest among full-precision backends at "
                 f"{summary['fastformer_fastest_full_precision']} of {summary['points_with_fastformer']}")
    if summary.get("points_with_quantized_rows"):
        lines.append(f"fastformer's quantized rows beat the fastest quantized peer at "
                     f"{summary['fastformer_quantized_fastest_quantized']} of {summary['points_with_quantized_rows']} "
                     "points")
    return lines


def _load_line(meta: dict) -> str:
    load = meta.get("load")
    if not load:
        return f"torch threads {meta['torch_threads']}, load average {meta['load_average_1m']}"
    line = (f"torch threads {meta['torch_threads']}; 1-minute load average (every runnable thread, ours included) "
            f"{_fmt(load['load_average_1m_before'], '.1f')} before the run, up to "
            f"{_fmt(load['load_average_1m_during_max'], '.1f')} during it (above {load['threads']}: other processes "
            f"shared the cores)")
    waited = load.get("wait_quiet")
    if waited:
        line += (f"; waited {waited['waited_s']:g} s for a quiet machine"
                 + ("" if waited["quiet"] else f" (not reached in {waited['max_s']:g} s)"))
    return line


def format_table(result: dict) -> str:
    meta, rows = result["meta"], result["results"]
    model = meta["model"]
    lines = [f"model {model['name']} ({model['model_type']}, {model['kind']}; weights {model['weights']})",
             f"timed call: {meta['timed_call']}; inputs: {meta['inputs']}",
             f"up to {meta['reps']} timed calls per backend and point"
             + (f" (fewer once they pass {meta['budget_s_per_point']:g} s, but at least 5)"
                if meta['budget_s_per_point'] and meta['reps'] > 5 else "")
             + f" after {_count(meta['warmup_rounds'], 'warm-up round')}; speed-up vs {meta['baseline']}",
             *(f"timing on {device}: {how}" for device, how in meta["timing"].items()),
             f"max|diff|: {meta['units']['max_abs_diff']}",
             _load_line(meta),
             *([f"WARNING: {meta['load']['warning']}"] if meta.get("load", {}).get("warning") else []),
             f"peak memory: " + "; ".join(f"{d}: {how}" for d, how in meta["memory"].items())]
    head = (f"{'backend':<17} {'median ms':>10} {'p90 ms':>9} {'p99 ms':>9} {'reps':>4} {'tokens/s':>10} "
            f"{'peak MiB':>9} {'speedup':>8} {'max|diff|':>9}")
    verdicts = {(v["device"], v["dtype"], v["batch"], v["seq"]): v for v in result.get("summary", {}).get("points", [])}
    group = None
    for i, r in enumerate(rows):
        key = (r["device"], r["dtype"], r["batch"], r["seq"])
        if key != group:
            group = key
            lines += ["", _point_title(r), head, "-" * len(head)]
        if r["status"] != "ok":
            lines.append(f"{r['backend']:<17} {r['status']}: {r['reason']}")
        else:
            speedup = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
            lines.append(f"{r['backend']:<17} {r['median_ms']:>10.2f} {r['p90_ms']:>9.2f} {r['p99_ms']:>9.2f} "
                         f"{r['reps']:>4} {r['tokens_per_s']:>10.0f} {_fmt(r['peak_mem_MiB'], '9.1f')} {speedup:>8} "
                         f"{_fmt(r['max_abs_diff'], '9.1e')}" + ("  quantized" if r.get("quantized") else "")
                         + (f"  (no accuracy check: {r['reference_error']})" if r["reference_error"] else ""))
        last_of_point = i + 1 == len(rows) or key != (rows[i + 1]["device"], rows[i + 1]["dtype"],
                                                       rows[i + 1]["batch"], rows[i + 1]["seq"])
        if last_of_point and key in verdicts:
            lines.append(f"verdict: {verdicts[key]['text']}")
    if verdicts:
        lines += _summary_table(result["summary"])
    return "\n".join(lines)


def check_writable(path: str, option: str):
    """Raises ValueError naming `option` when `path` cannot be written (checked before a long run); leaves
    no file behind."""
    existed = os.path.exists(path)
    try:
        with open(path, "a"):
            pass
    except OSError as e:
        raise ValueError(f"{option} {path}: cannot write there ({e.strerror or e})") from None
    if not existed:
        os.remove(path)


def write_json(result: dict, path: str):
    with open(path, "w") as f:
        json.dump(result, f, indent=2)


def write_csv(result: dict, path: str):
    meta = result["meta"]
    run_facts = ({k: meta.get(k) for k in META_FIELDS} | {k: meta["versions"].get(k) for k in VERSION_FIELDS}
                 | {f"machine_{k}" if k == "busy" else k: meta.get("load", {}).get(k) for k in LOAD_FIELDS})
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*ROW_FIELDS, *run_facts])
        writer.writeheader()
        for r in result["results"]:
            writer.writerow({**{k: r.get(k) for k in ROW_FIELDS}, **run_facts})


def require_matplotlib():
    """Raises ImportError with the fix when matplotlib is missing (checked before a long run)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError("--plot needs matplotlib: pip install matplotlib (or the test extras: "
                          "pip install -e '.[test]')") from None


def write_plot(result: dict, path: str):
    """Median latency per backend against batch x seq (ordered by tokens), one panel per device and dtype."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    ok = [r for r in result["results"] if r["status"] == "ok"]
    panels = sorted({(r["device"], r["dtype"]) for r in ok}) or [("no successful runs", "")]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (device, dtype) in zip(axes[0], panels):
        mine = [r for r in ok if (r["device"], r["dtype"]) == (device, dtype)]
        shapes = sorted({(r["batch"], r["seq"]) for r in mine}, key=lambda s: (s[0] * s[1], s))
        for backend in dict.fromkeys(r["backend"] for r in mine):
            points = {(r["batch"], r["seq"]): r["median_ms"] for r in mine if r["backend"] == backend}
            xs = [i for i, s in enumerate(shapes) if s in points]
            ax.plot(xs, [points[shapes[i]] for i in xs], marker="o", label=backend)
        ax.set_xticks(range(len(shapes)), [f"{b}x{s}" for b, s in shapes], rotation=45)
        ax.set_yscale("log")
        ax.set_xlabel("batch x seq")
        ax.set_ylabel("median latency (ms)")
        ax.set_title(f"{result['meta']['model']['name']} {device} {dtype}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
