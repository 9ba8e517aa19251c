"""Shared fixtures: a tiny random GPT-2 for unit tests, the embedded Gemma 3 270M for integration tests."""

import os
from pathlib import Path

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


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory):
    """A folder every pytest-xdist worker of this run shares (the parent of the workers' own
    temporary folders), for what is expensive to compute and the same on every worker."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _capture_dataset(model, name: str, shared: Path):
    """Last-token ``resid_post`` at every layer for every row of a shipped dataset (labels, groups
    and families kept in the rows), captured by the first worker that asks and read back from
    ``shared`` by the others (a file lock makes the second one wait instead of capturing twice)."""
    import torch
    from filelock import FileLock

    from probes import labelled_rows

    path = shared / f"{model.cfg.model_name.replace('/', '_')}-{name}-resid_post-last"
    with FileLock(f"{path}.lock"):
        if path.is_dir():
            return steerlens.Activations.load(path)
        rows = labelled_rows(name)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # on a shared 2-core machine one thread is several times faster
        try:
            acts = steerlens.capture(model, [r["prompt"] for r in rows], "resid_post", pool="last", rows=rows,
                                     batch_size=32, progress=False)
        finally:
            torch.set_num_threads(threads)
        acts.save(path)
        return acts


@pytest.fixture(scope="session")
def gemma_truth_acts(gemma, shared_dir):
    """Gemma activations of the truthfulness statements, captured once per session."""
    return _capture_dataset(gemma, "truthfulness", shared_dir)


@pytest.fixture(scope="session")
def gemma_negations_acts(gemma, shared_dir):
    """Gemma activations of the negated truthfulness statements."""
    return _capture_dataset(gemma, "negations", shared_dir)


@pytest.fixture(scope="session")
def gemma_harm_acts(gemma, shared_dir):
    """Gemma activations of the harmfulness instructions, captured once per session."""
    return _capture_dataset(gemma, "harmfulness", shared_dir)


NOTEBOOKS = Path(__file__).parent.parent / "notebooks"


@pytest.fixture
def run_notebook(tmp_path, monkeypatch):
    """Execute ``notebooks/<name>.ipynb`` top to bottom (DESIGN: executed in CI) and check that no
    cell raised and a plotly figure rendered; the notebook's ``assert`` cells state what each
    section must show. One notebook per test file (``tests/test_notebook_<name>.py``), so
    ``--dist loadfile`` spreads them over the workers."""

    def run(name: str) -> None:
        import nbformat
        import torch
        from nbclient import NotebookClient

        nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        # the kernel is a process of its own: give it this worker's share of the cores, as
        # pytest_configure gives the worker (two threads per core spin under load)
        monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
        # it starts in a scratch directory, so nothing the notebook writes lands in the clone
        NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        assert not [o for o in outputs if o.get("output_type") == "error"]
        # its plotly figures rendered (as a plotly MIME bundle)
        assert any("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs)

    return run
