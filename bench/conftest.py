"""pytest-benchmark suites. After the run, prints ours/baseline speed-ups for each group, from the
medians measured in this same run."""
import torch


def pytest_configure(config):
    torch.set_num_threads(int(config.getoption("--threads")))


def pytest_addoption(parser):
    parser.addoption("--threads", default="2", help="torch CPU threads for the benchmarks (default 2, the CI machine)")


def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    groups = {}
    for bench in session.benchmarks:
        groups.setdefault(bench.group, {})[bench.extra_info.get("role")] = bench.stats.median
    terminalreporter.write_sep("-", "speed-up of fastformer over the PyTorch baseline (medians, same run)")
    for group, medians in sorted(groups.items()):
        if "ours" in medians and "baseline" in medians:
            terminalreporter.write_line(
                f"{group:<48} {medians['baseline'] / medians['ours']:6.2f}x "
                f"(ours {medians['ours'] * 1e3:.3f} ms, baseline {medians['baseline'] * 1e3:.3f} ms)")
