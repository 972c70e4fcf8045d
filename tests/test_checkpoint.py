"""Tests of radocc.checkpoint: atomic save, checked load, state-dict fitting, RNG resume (CPU)."""

from __future__ import annotations

import os
import random
import stat
from collections import OrderedDict, namedtuple

import numpy as np
import pytest
import torch
from torch import nn

from radocc import checkpoint as ckpt
from radocc.checkpoint import (
    CheckpointError, check_state_dict, link_checkpoint, load_checkpoint, load_into,
    load_state_dict_file, rng_state, save_checkpoint, set_rng_state,
)

torch.set_num_threads(1)


def tiny_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


def trained_state() -> dict:
    torch.manual_seed(0)
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.01)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(2, 3, 3, 3)).sum().backward()
        opt.step()
    return dict(model=model.state_dict(), optimizer=opt.state_dict(), epoch=3, best_miou=-1.5,
                nested={"a": [torch.arange(3), (1, "x", None)], "b": {"c": torch.ones(2, 2)}},
                rng=rng_state())


def assert_same(a, b) -> None:
    """Deep equality with exact tensor comparison."""
    assert type(a) is type(b) or (isinstance(a, dict) and isinstance(b, dict)), (a, b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


# ----------------------------------------------------------------------------- round trip
def test_round_trip_model_optimizer_nested(tmp_path):
    state = trained_state()
    path = tmp_path / "runs" / "x" / "last.pt"  # parents created
    save_checkpoint(path, state)
    loaded = load_checkpoint(path)
    assert_same(loaded, state)  # the format tags are not returned
    raw = torch.load(path, weights_only=True)
    assert (raw["format"], raw["version"]) == ("radocc-checkpoint", 1)
    # the optimizer state resumes: the same next step from the loaded state
    model, opt = tiny_model(), None
    model.load_state_dict(loaded["model"])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.01)
    opt.load_state_dict(loaded["optimizer"])
    assert int(opt.state_dict()["state"][0]["step"]) == 2
    # the file is readable like any other new file, not private like a temporary one
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~ckpt._umask()
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_rng_state_restores_every_generator(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.gauss(0, 1)  # python caches a second gaussian: part of the state
    np.random.standard_normal()
    save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state()})
    expected = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)],
                random.gauss(0, 1), np.random.standard_normal())
    torch.rand(100), np.random.rand(100), random.random()  # move every generator on
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    got = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)],
           random.gauss(0, 1), np.random.standard_normal())
    assert torch.equal(got[0], expected[0])
    assert np.array_equal(got[1], expected[1])
    assert got[2:] == expected[2:]


def test_rng_state_restores_repeatedly_and_rejects_garbage():
    state = rng_state()
    first = torch.rand(3), np.random.rand(), random.random()
    set_rng_state(state)
    again = torch.rand(3), np.random.rand(), random.random()
    assert torch.equal(first[0], again[0]) and first[1:] == again[1:]
    with pytest.raises(ValueError, match=r"RNG state must have a 'numpy' entry"):
        set_rng_state({"python": state["python"]})
    with pytest.raises(ValueError, match=r"RNG state is malformed"):
        set_rng_state({**state, "torch": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"RNG state is malformed"):
        set_rng_state({**state, "numpy": {"name": "MT19937"}})


# ----------------------------------------------------------------------------- atomicity
def test_failed_save_keeps_the_old_checkpoint_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1, "w": torch.ones(3)})
    before = path.read_bytes()
    real_save = torch.save

    def broken_save(obj, f, *args, **kwargs):
        real_save({"partial": torch.zeros(1000)}, f)  # some bytes reach the temp file
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"epoch": 2, "w": torch.zeros(3)})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert load_checkpoint(path)["epoch"] == 1

    monkeypatch.setattr(torch, "save", real_save)
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"epoch": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert path.read_bytes() == before


def test_link_shares_the_file_until_the_source_is_saved_again(tmp_path, monkeypatch):
    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    save_checkpoint(last, {"epoch": 1, "w": torch.ones(3)})
    save_checkpoint(best, {"epoch": 0})
    link_checkpoint(last, best)
    assert best.stat().st_ino == last.stat().st_ino  # one file on disk, not two
    save_checkpoint(last, {"epoch": 2, "w": torch.zeros(3)})
    assert load_checkpoint(best)["epoch"] == 1 and load_checkpoint(last)["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]

    def no_links(*args):
        raise OSError("hard links not supported")

    monkeypatch.setattr(os, "link", no_links)  # e.g. a FAT or some network file systems
    link_checkpoint(last, best)
    assert load_checkpoint(best)["epoch"] == 2 and best.stat().st_ino != last.stat().st_ino
    with pytest.raises(FileNotFoundError, match="source"):
        link_checkpoint(tmp_path / "missing.pt", best)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


def test_save_refuses_what_weights_only_cannot_load(tmp_path):
    Point = namedtuple("Point", "x y")
    for bad, where in [({"a": np.zeros(3)}, r"state\['a'\] is a numpy\.ndarray"),
                       ({"a": {"b": [1, np.float64(2.0)]}}, r"state\['a'\]\['b'\]\[1\]"),
                       ({"p": Point(1, 2)}, r"state\['p'\] is a .*Point"),
                       ({"f": lambda: 1}, r"state\['f'\] is a builtins\.function")]:
        with pytest.raises(TypeError, match=where):
            save_checkpoint(tmp_path / "x.pt", bad)
    assert not any(tmp_path.iterdir())  # nothing written
    with pytest.raises(ValueError, match=r"reserved key\(s\) \['format'\]"):
        save_checkpoint(tmp_path / "x.pt", {"format": "mine"})
    with pytest.raises(TypeError, match="state must be a dict with str keys"):
        save_checkpoint(tmp_path / "x.pt", {1: torch.ones(1)})
    # what weights_only does read is accepted
    ok = {"od": OrderedDict(a=torch.ones(1)), "misc": [torch.float16, torch.device("cpu"),
                                                       torch.Size([2]), {1, 2}, b"x", 1j]}
    save_checkpoint(tmp_path / "ok.pt", ok)
    assert_same(load_checkpoint(tmp_path / "ok.pt"), ok)


# ----------------------------------------------------------------------------- bad files
def test_missing_truncated_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"checkpoint not found: {tmp_path / 'no.pt'}"):
        load_checkpoint(tmp_path / "no.pt")
    path = tmp_path / "last.pt"
    save_checkpoint(path, trained_state())
    data = path.read_bytes()
    for cut in (len(data) // 2, 100, 0):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=rf"{path} cannot be read: truncated"):
            load_checkpoint(path)
    path.write_text("hello")
    with pytest.raises(CheckpointError, match=rf"{path} cannot be read"):
        load_checkpoint(path)

    plain = tmp_path / "weights.pth"
    torch.save(tiny_model().state_dict(), plain)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(plain)
    assert f"{plain} is not a radocc checkpoint" in str(info.value)
    assert "format='radocc-checkpoint'" in str(info.value)
    assert "load_state_dict_file" in str(info.value)
    torch.save([torch.ones(1)], plain)
    with pytest.raises(CheckpointError, match=r"found a list"):
        load_checkpoint(plain)
    torch.save({"format": "radocc-checkpoint", "version": 2}, plain)
    with pytest.raises(CheckpointError, match=r"version 2; this radocc reads versions 1\.\.1"):
        load_checkpoint(plain)
    torch.save({"x": np.zeros(2)}, plain)  # a pickled numpy array: code weights_only refuses
    with pytest.raises(CheckpointError, match=r"refuses"):
        load_checkpoint(plain)


def test_plain_state_dict_files(tmp_path):
    model = tiny_model()
    plain = tmp_path / "weights.pth"
    torch.save(model.state_dict(), plain)
    loaded = load_state_dict_file(plain)
    assert_same(loaded, dict(model.state_dict()))
    save_checkpoint(tmp_path / "run.pt", {"model": model.state_dict()})
    with pytest.raises(CheckpointError, match=r"is a radocc checkpoint, not a plain state_dict"):
        load_state_dict_file(tmp_path / "run.pt")
    torch.save({"w": torch.ones(1), "step": 3}, plain)
    with pytest.raises(CheckpointError, match=r"1 entries are not, e.g. 'step': int"):
        load_state_dict_file(plain)
    with pytest.raises(FileNotFoundError):
        load_state_dict_file(tmp_path / "none.pth")


# ----------------------------------------------------------------------------- fitting a module
def test_check_state_dict_names_the_differing_tensors():
    model = tiny_model()
    check_state_dict(model, model.state_dict(), "ok")  # a perfect fit passes
    state = dict(model.state_dict())
    del state["1.running_var"]
    state["3.weight"] = torch.zeros(5, 4)  # a wider head
    state["0.weight"] = torch.zeros(4, 3, 5, 5)
    state["extra.bias"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as info:
        check_state_dict(model, state, "teacher checkpoint t.pt (teacher config c.toml)")
    lines = str(info.value).splitlines()
    assert lines[0].startswith("teacher checkpoint t.pt (teacher config c.toml) does not match")
    assert lines[1] == "  1 missing key(s): 1.running_var"
    assert lines[2] == "  1 unexpected key(s): extra.bias"
    assert lines[3] == ("  2 shape mismatch(es): 0.weight: checkpoint [4, 3, 5, 5] vs model "
                        "[4, 3, 3, 3], 3.weight: checkpoint [5, 4] vs model [2, 4]")


def test_check_state_dict_lists_at_most_ten_of_each():
    big = nn.Sequential(*[nn.Linear(2, 2) for _ in range(15)])
    with pytest.raises(CheckpointError) as info:
        check_state_dict(big, {}, "empty")
    message = str(info.value)
    assert "30 missing key(s): 0.weight, 0.bias, 1.weight" in message
    assert "4.bias, ... (20 more)" in message and "5.weight" not in message


def test_load_into_checks_then_loads():
    source, target = tiny_model(), tiny_model()
    load_into(target, source.state_dict(), "copy")
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(),
                                                 target.state_dict().values()))
    before = [t.clone() for t in target.state_dict().values()]
    bad = dict(source.state_dict())
    bad["3.bias"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"3\.bias: checkpoint \[3\] vs model \[2\]"):
        load_into(target, {k: v + 1 for k, v in bad.items()}, "bad")
    assert all(torch.equal(a, b) for a, b in zip(before, target.state_dict().values()))


def test_cuda_generators_are_saved_and_restored_per_device(monkeypatch):
    # No GPU here: torch.cuda's RNG calls are replaced to check the plumbing (states saved per
    # device; restored on the CPU-side tensors for the devices both sides have).
    saved = [torch.full((4,), i, dtype=torch.uint8) for i in range(3)]
    restored = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: saved)
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda t, device: restored.__setitem__(device, t))
    state = rng_state()
    assert state["cuda"] is saved
    set_rng_state(state)
    assert sorted(restored) == [0, 1]  # the third saved device is absent here
    assert all(torch.equal(restored[i], saved[i]) and restored[i].device.type == "cpu"
               for i in restored)
