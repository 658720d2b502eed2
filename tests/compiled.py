"""torch.compile(fullgraph=True) of an op call against the same call run eagerly, forward and backward."""
import torch


def assert_compiled_matches_eager(fn, inputs: dict, leaves: list) -> None:
    """fn(**inputs) compiled without graph breaks gives eager's output and gradients for `leaves`."""
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True)
    out = compiled(**inputs)
    grads = torch.autograd.grad(out.sum(), leaves)
    eager = fn(**inputs)
    torch.testing.assert_close(out, eager)
    for got, expected in zip(grads, torch.autograd.grad(eager.sum(), leaves)):
        torch.testing.assert_close(got, expected)
