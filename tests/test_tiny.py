import os

import torch

import steerlens
from steerlens import io


def weights(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.original_model.parameters()]


def test_tiny_model_leaves_the_global_rng_alone(monkeypatch, tmp_path):
    for cache in ("miss", "hit"):  # a fresh cache builds the checkpoint; the second call reuses it
        monkeypatch.setenv("STEERLENS_CACHE", str(tmp_path))
        torch.manual_seed(123)
        state = torch.random.get_rng_state()
        steerlens.tiny_model(n_layers=1, d_model=16, seed=7)
        assert torch.equal(torch.random.get_rng_state(), state), cache
    assert (tmp_path / "tiny" / "tiny-gpt2-L1-d16-h4-c256-s7").is_dir()


def test_same_seed_same_weights_in_any_cache(monkeypatch, tmp_path):
    built = []
    for cache, seed in (("a", 7), ("b", 7), ("c", 8)):
        monkeypatch.setenv("STEERLENS_CACHE", str(tmp_path / cache))
        torch.manual_seed(len(built))  # the caller's RNG state does not matter
        built.append(weights(steerlens.tiny_model(n_layers=1, d_model=16, seed=seed)))
    assert all(torch.equal(x, y) for x, y in zip(built[0], built[1]))
    assert not all(torch.equal(x, y) for x, y in zip(built[0], built[2]))


def test_killed_builds_leftovers_are_removed(monkeypatch, tmp_path):
    monkeypatch.setenv("STEERLENS_CACHE", str(tmp_path))
    name = "tiny-gpt2-L1-d16-h4-c256-s7"
    stale = tmp_path / "tiny" / f".{name}.tmp-{2**22 + 1}-{io._HOST}-0a1b"  # a dead pid
    live = tmp_path / "tiny" / f".{name}.tmp-{os.getpid()}-{io._HOST}-0a1c"  # a build still running
    for d in (stale, live):
        d.mkdir(parents=True)
        (d / "config.json").write_text("{")
    steerlens.tiny_model(n_layers=1, d_model=16, seed=7)
    assert sorted(p.name for p in (tmp_path / "tiny").iterdir()) == sorted([name, live.name])
