import os
import sys

import pytest
import torch

from steerlens import io
from steerlens.io import atomic_path, load_tensors, read_jsonl, save_tensors, write_json, write_jsonl

DEAD_PID = 2**22 + 1  # above Linux's largest pid_max: no process has it
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def umask() -> int:
    """The umask, read without setting it."""
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)


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


@linux_only
def test_written_files_get_normal_permissions_without_touching_the_umask(tmp_path, monkeypatch):
    def no_umask(mask):
        raise AssertionError("os.umask changes the umask of every thread")

    monkeypatch.setattr(os, "umask", no_umask)
    write_json(tmp_path / "x.json", {})
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o666 & ~umask()
    with atomic_path(tmp_path / "d", directory=True) as tmp:
        (tmp / "f").write_text("x")
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~umask()


def test_jsonl_rejects_non_objects_and_non_utf8(tmp_path):
    (tmp_path / "list.jsonl").write_text('{"a": 1}\n\n[1, 2]\n')
    with pytest.raises(ValueError, match="list.jsonl:3: expected a JSON object, got list"):
        read_jsonl(tmp_path / "list.jsonl")
    (tmp_path / "latin1.jsonl").write_bytes('{"a": 1}\n{"t": "héllo"}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.jsonl:2: not UTF-8"):
        read_jsonl(tmp_path / "latin1.jsonl")


@pytest.mark.parametrize("damage", ["truncated", "header", "empty", "not safetensors", "metadata"])
def test_load_tensors_names_a_damaged_file(tmp_path, damage):
    from safetensors.torch import save_file

    path = tmp_path / "t.safetensors"
    save_tensors(path, {"v": torch.arange(100.0)}, {"name": "x"})
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[:-7])
    elif damage == "header":
        path.write_bytes(data[:8] + b"#" + data[9:])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "not safetensors":
        path.write_text("just some text that is long enough\n")
    else:
        save_file({"v": torch.zeros(2)}, str(path), metadata={"name": "{not json"})
    with pytest.raises(ValueError, match="t.safetensors") as e:
        load_tensors(path)
    assert type(e.value) is ValueError
    assert "'name' is not valid JSON" in str(e.value) if damage == "metadata" else "not a readable" in str(e.value)


def test_directory_replacement_is_one_exchange(tmp_path, monkeypatch):
    if io._libc_renameat2() is None:
        pytest.skip("no renameat2 here")
    target = tmp_path / "d"
    target.mkdir()
    (target / "old").write_text("old")

    def no_rename(*a):
        raise AssertionError("a rename that leaves nothing at the path for a moment")

    monkeypatch.setattr(os, "rename", no_rename)
    with atomic_path(target, directory=True, check=lambda p: None) as tmp:
        (tmp / "new").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new"] and [p.name for p in tmp_path.iterdir()] == ["d"]


def test_directory_replacement_without_renameat2(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "_libc_renameat2", lambda: None)
    target = tmp_path / "d"
    for text in ("one", "two"):
        with atomic_path(target, directory=True, check=lambda p: None) as tmp:
            (tmp / "f").write_text(text)
    assert (target / "f").read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["d"]


def test_directory_is_not_replaced_unless_checked(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists"):
        with atomic_path(tmp_path / "d", directory=True) as tmp:
            (tmp / "f").write_text("x")
    with atomic_path(tmp_path / "d", directory=True, keep_existing=True) as tmp:
        (tmp / "f").write_text("x")
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


@linux_only
def test_written_files_and_parent_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd)))
    write_json(tmp_path / "x.json", {})
    assert any(os.path.basename(p).startswith(".x.json.tmp-") for p in synced)
    assert str(tmp_path) in synced
    synced.clear()
    with atomic_path(tmp_path / "d", directory=True) as tmp:
        (tmp / "a").mkdir()
        (tmp / "a" / "f").write_text("x")
    names = [os.path.relpath(p, tmp_path).split(os.sep)[1:] for p in synced if p != str(tmp_path)]
    assert ["a", "f"] in names and ["a"] in names and [] in names  # file, subdirectory, the directory
    assert synced[-1] == str(tmp_path)  # the parent, after the rename


def test_stale_temps_of_dead_processes_are_removed(tmp_path):
    host = io._HOST
    stale_file = tmp_path / f".x.json.tmp-{DEAD_PID}-{host}-00aa"
    stale_dir = tmp_path / f".x.json.tmp-{DEAD_PID}-{host}-00bb"
    live = tmp_path / f".x.json.tmp-{os.getpid()}-{host}-00cc"  # a concurrent writer
    other_host = tmp_path / f".x.json.tmp-{DEAD_PID}-{host}zz-00dd"  # its pid means nothing here
    not_ours = [tmp_path / ".x.json.tmp-notes", tmp_path / f".y.json.tmp-{DEAD_PID}-{host}-00ee"]
    stale_file.write_text("half")
    stale_dir.mkdir()
    (stale_dir / "shard").write_text("half")
    for p in [live, other_host, *not_ours]:
        p.write_text("keep")
    write_json(tmp_path / "x.json", {"a": 1})
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(p.name for p in [live, other_host, *not_ours, tmp_path / "x.json"])
