"""Shared fixtures: a tiny random GPT-2 for unit tests, the embedded Gemma 3 270M for integration tests."""

import pytest

import steerlens


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

