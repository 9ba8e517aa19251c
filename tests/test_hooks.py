import pytest

from steerlens.hooks import hook_depth, hook_kind, resolve_hooks, resolve_layers


def test_resolve_layers(tiny):
    assert resolve_layers(tiny, None) == resolve_layers(tiny, "all") == [0, 1, 2]
    assert resolve_layers(tiny, -1) == [2]
    assert resolve_layers(tiny, [2, -3, 2]) == [0, 2]
    for bad, err in [(3, ValueError), (-4, ValueError), ([], ValueError), ("first", ValueError), ([1.0], TypeError)]:
        with pytest.raises(err):
            resolve_layers(tiny, bad)


def test_resolve_hooks(tiny):
    assert resolve_hooks(tiny, "resid_post", [0, 2]) == ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]
    assert resolve_hooks(tiny, ["blocks.1.hook_out", "mlp_post"], 1) == ["blocks.1.hook_out", "blocks.1.mlp.hook_post"]
    assert len(resolve_hooks(tiny, "resid_pre")) == 3
    with pytest.raises(ValueError, match="Close matches"):
        resolve_hooks(tiny, "blocks.1.hook_resid_pots")
    with pytest.raises(ValueError, match="empty"):
        resolve_hooks(tiny, [])


def test_depth_and_kind(tiny):
    assert hook_depth(tiny, "hook_embed") == -1
    assert hook_depth(tiny, "blocks.2.attn.hook_z") == 2
    assert hook_depth(tiny, "ln_final.hook_normalized") == 3
    assert hook_kind("blocks.6.hook_resid_post") == "resid_post"
    assert hook_kind("blocks.6.mlp.hook_post") == "mlp_post"
    assert hook_kind("hook_embed") == "hook_embed"
