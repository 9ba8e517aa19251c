"""``notebooks/serving.ipynb`` runs top to bottom on the embedded Gemma (conftest's ``run_notebook``)."""

import pytest

pytestmark = pytest.mark.gemma


def test_serving_notebook_runs(run_notebook):
    run_notebook("serving")
