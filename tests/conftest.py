"""Shared fixtures: a tiny random GPT-2 for unit tests, the embedded Gemma 3 270M for integration tests."""

import os

import pytest

import steerlens


def pytest_configure(config):
    """Under pytest-xdist (the README's test command runs ``-n 2``), each worker gets its share of
    the cores as torch threads, so two workers do not oversubscribe a 2-core machine."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@pytest.fixture(scope="session")
def tiny():
    """A 3-block random GPT-2 (d_model 64), built offline in well under a second."""
    model = steerlens.tiny_model(n_layers=3, d_model=64, seed=0)
    model("warm up")  # transformer-lens wires its internal hooks on the first forward
    return model


@pytest.fixture(scope="session")
def gemma():
    """The embedded Gemma 3 270M, loaded once per session (float32, CPU unless CUDA is there)."""
    model = steerlens.load_model("gemma-3-270m")
    model("warm up")
    return model


def _capture_dataset(model, name: str):
    """Last-token ``resid_post`` at every layer for every row of a shipped dataset (labels, groups
    and families kept in the rows)."""
    import torch

    from probes import labelled_rows

    rows = labelled_rows(name)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core machine one thread is several times faster
    try:
        return steerlens.capture(model, [r["prompt"] for r in rows], "resid_post", pool="last", rows=rows,
                                 batch_size=32, progress=False)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def gemma_truth_acts(gemma):
    """Gemma activations of the truthfulness statements, captured once per session."""
    return _capture_dataset(gemma, "truthfulness")


@pytest.fixture(scope="session")
def gemma_negations_acts(gemma):
    """Gemma activations of the negated truthfulness statements."""
    return _capture_dataset(gemma, "negations")


@pytest.fixture(scope="session")
def gemma_harm_acts(gemma):
    """Gemma activations of the harmfulness instructions, captured once per session."""
    return _capture_dataset(gemma, "harmfulness")
