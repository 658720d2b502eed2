"""CPU kernel benchmarks (pytest-benchmark): each fused op and the unfused PyTorch expression it
replaces, at the issue's target shapes, fp32. Run: pytest bench/test_ops_cpu.py --threads 2"""
import pytest

from fastformer import opbench

CASES = opbench.cases()


@pytest.mark.parametrize("role", ["ours", "baseline"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c.name}-{'x'.join(map(str, c.shape))}" for c in CASES])
def test_op(benchmark, case, role):
    benchmark.group = f"{case.name} {'x'.join(map(str, case.shape))} fp32"
    benchmark.extra_info["role"] = role
    benchmark.extra_info["baseline"] = case.baseline_name
    benchmark(case.ours if role == "ours" else case.baseline)
