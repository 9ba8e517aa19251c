"""``notebooks/tour.ipynb`` runs top to bottom on the embedded Gemma (conftest's ``run_notebook``)."""

import pytest

pytestmark = pytest.mark.gemma


def test_tour_notebook_runs(run_notebook):
    run_notebook("tour")
