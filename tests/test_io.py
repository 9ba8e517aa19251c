import pytest
import torch

from steerlens.io import atomic_path, load_tensors, read_jsonl, save_tensors, write_json, write_jsonl


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "x.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text().strip().replace(" ", "").replace("\n", "") == '{"a":1}'
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_jsonl_roundtrip_and_errors(tmp_path):
    rows = [{"text": "héllo", "label": 1}, {"text": "b", "label": 0}]
    write_jsonl(tmp_path / "r.jsonl", rows)
    assert read_jsonl(tmp_path / "r.jsonl") == rows
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{oops\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        read_jsonl(tmp_path / "bad.jsonl")


def test_tensors_with_metadata(tmp_path):
    t = {"v": torch.arange(6.0).view(2, 3)}
    save_tensors(tmp_path / "t.safetensors", t, {"layers": [1, 2], "name": "x"})
    back, meta = load_tensors(tmp_path / "t.safetensors")
    assert torch.equal(back["v"], t["v"]) and meta == {"layers": [1, 2], "name": "x"}


def test_written_files_get_normal_permissions(tmp_path):
    import os

    write_json(tmp_path / "x.json", {})
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o666 & ~mask
