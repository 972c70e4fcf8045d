"""The project's one checkpoint writer and reader.

- `save_checkpoint` writes a dict atomically (temporary file in the same folder, fsync, rename), so
  an interrupted save never leaves a truncated checkpoint, and tags it with ``format`` and
  ``version``. Everything in it must load under ``torch.load(weights_only=True)``: tensors, python
  scalars and strings, and dicts / lists / tuples of them (checked before writing).
  `link_checkpoint` makes a second name for one (``last.pt`` of the epoch that wrote ``best.pt``).
- `load_checkpoint` reads one back with ``weights_only=True`` (no code runs from the file) and
  says clearly when a file is missing, truncated, or not a radocc checkpoint;
  `load_state_dict_file` reads a plain ``state_dict`` file (e.g. released weights).
- `check_state_dict` / `load_into`: a state dict that does not fit a module is reported key by key
  (missing, unexpected, shape mismatches), naming what was being loaded.
- `rng_state` / `set_rng_state`: python, numpy and torch (CPU, CUDA) generators, for exact resume.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "FORMAT", "VERSION", "CheckpointError", "save_checkpoint", "link_checkpoint", "load_checkpoint",
    "load_state_dict_file", "check_state_dict", "load_into", "rng_state", "set_rng_state",
]

FORMAT = "radocc-checkpoint"
VERSION = 1
_TAGS = ("format", "version")
_SHOWN = 10  # keys listed per kind of mismatch
# What torch.load(weights_only=True) reads back, by exact type (subclasses such as namedtuples,
# defaultdicts or enums are pickled by class and refused); tensors of any subclass are fine.
_LEAVES = (str, bytes, int, float, complex, bool, type(None), torch.dtype, torch.device,
           torch.Size)
_MAPPINGS = (dict, OrderedDict)
_SEQUENCES = (list, tuple, set)


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, not a radocc checkpoint, or does not fit the model; the
    message names the file (or what was being loaded) and what was expected."""


# ----------------------------------------------------------------------------- writing
def _check_loadable(obj: Any, where: str) -> None:
    """Raise TypeError unless ``obj`` holds only what ``torch.load(weights_only=True)`` reads."""
    if isinstance(obj, torch.Tensor) or type(obj) in _LEAVES:
        return
    if type(obj) in _MAPPINGS:
        for key, value in obj.items():
            _check_loadable(key, f"{where} key {key!r}")
            _check_loadable(value, f"{where}[{key!r}]")
        return
    if type(obj) in _SEQUENCES:
        for i, value in enumerate(obj):
            _check_loadable(value, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}, which "
        f"torch.load(weights_only=True) cannot read: store tensors, python int / float / bool / "
        f"str / None, and dicts, lists, tuples of them (e.g. torch.from_numpy(a) or float(x))")


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def save_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any]) -> None:
    """Write ``state`` (plus ``format`` and ``version`` tags) to ``path`` atomically.

    The data goes to a temporary file in the same folder, is flushed and fsynced, then renamed
    over ``path``: readers see the old checkpoint or the new one, never a partial file. On any
    failure the temporary file is removed and an existing checkpoint is left untouched. Parent
    folders are created.

    Args:
        path: destination file, e.g. ``runs/x/last.pt``.
        state: a dict with str keys; every value must load under ``weights_only=True``.
    Raises:
        TypeError: ``state`` is not a dict with str keys, or holds an object (numpy array, custom
            class, ...) that ``weights_only`` loading cannot read (the message names where).
        ValueError: ``state`` uses the reserved keys 'format' or 'version'.
    """
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise TypeError(f"state must be a dict with str keys, got {type(state).__name__}")
    clash = [k for k in _TAGS if k in state]
    if clash:
        raise ValueError(f"state must not use the reserved key(s) {clash}: save_checkpoint "
                         f"writes them")
    _check_loadable(dict(state), "state")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**state, "format": FORMAT, "version": VERSION}
    tmp = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                      delete=False)
    try:
        with tmp:
            torch.save(payload, tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp.name, 0o666 & ~_umask())  # NamedTemporaryFile makes it private (0600)
        os.replace(tmp.name, path)
    except BaseException:
        _remove(tmp.name)
        raise
    _sync_folder(path.parent)


def link_checkpoint(source: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """Make ``path`` the same checkpoint as ``source`` (e.g. ``last.pt`` of the epoch that just
    wrote ``best.pt``), atomically, without a second copy on disk.

    ``path`` becomes a hard link to ``source``'s file, or a copy where the file system has no hard
    links. A later `save_checkpoint` to ``source`` renames a new file over it, so ``path`` keeps
    the old contents.

    Raises:
        FileNotFoundError: ``source`` does not exist.
    """
    source, path = Path(source), Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"source: no checkpoint at {source}")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.link.tmp")
    _remove(tmp)
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    _sync_folder(path.parent)


def _remove(path: str | os.PathLike[str]) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- reading
def _torch_load(path: str | os.PathLike[str], map_location: Any) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if refused is None:
            raise CheckpointError(f"{path} cannot be read: corrupt or not a torch.save file "
                                  f"({_first_line(exc)})") from exc
        raise CheckpointError(
            f"{path} holds a {refused.group(1)}, which torch.load(weights_only=True) refuses "
            f"(expected only tensors and plain python values)") from exc
    except Exception as exc:  # a damaged file fails anywhere in the unpickler / zip reader
        raise CheckpointError(f"{path} cannot be read: truncated or not a torch.save file "
                              f"({_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return type(exc).__name__ + (f": {text.splitlines()[0]}" if text else "")


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`.

    Args:
        path: the checkpoint file.
        map_location: where tensors go (``torch.load``'s argument), default the CPU.
    Returns:
        The saved state, without the ``format`` / ``version`` tags.
    Raises:
        FileNotFoundError: no such file (the message names it).
        CheckpointError: the file is truncated or corrupt, holds objects weights_only loading
            refuses, or is not a radocc checkpoint (e.g. a plain state_dict: read that with
            `load_state_dict_file`), or was written by a newer format version.
    """
    obj = _torch_load(path, map_location)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        what = (f"a dict with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, dict)
                else f"a {type(obj).__name__}")
        raise CheckpointError(
            f"{path} is not a radocc checkpoint: expected a dict with format={FORMAT!r} (written "
            f"by radocc.checkpoint.save_checkpoint), found {what}; a plain state_dict file is "
            f"read with radocc.checkpoint.load_state_dict_file")
    version = obj.get("version")
    if not isinstance(version, int) or not 1 <= version <= VERSION:
        raise CheckpointError(f"{path} is a radocc checkpoint of version {version!r}; this radocc "
                              f"reads versions 1..{VERSION}")
    return {k: v for k, v in obj.items() if k not in _TAGS}


def load_state_dict_file(path: str | os.PathLike[str],
                         map_location: Any = "cpu") -> dict[str, torch.Tensor]:
    """Read a plain ``state_dict`` file (``torch.save(module.state_dict(), path)``), e.g.
    released pretrained weights, with ``weights_only=True``.

    Returns:
        {parameter / buffer name: tensor}.
    Raises:
        FileNotFoundError: no such file.
        CheckpointError: unreadable, or not a mapping of str to tensors (a radocc checkpoint is
            named as such: use `load_checkpoint` and take its ``"model"`` entry).
    """
    obj = _torch_load(path, map_location)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        raise CheckpointError(f"{path} is a radocc checkpoint, not a plain state_dict: read it "
                              f"with radocc.checkpoint.load_checkpoint (weights under 'model')")
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path} is not a state_dict: expected a non-empty dict of str to "
                              f"tensors, found {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path} is not a state_dict: expected str keys and tensor values, "
                              f"but {len(bad)} entries are not, e.g. {bad[0]!r}: "
                              f"{type(obj[bad[0]]).__name__}")
    return dict(obj)


# ----------------------------------------------------------------------------- fitting a module
def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f", ... ({len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else "")


def _shape(t: Any) -> str:
    return f"[{', '.join(map(str, t.shape))}]" if isinstance(t, torch.Tensor) else type(t).__name__


def check_state_dict(module: nn.Module, state_dict: Mapping[str, Any], what: str) -> None:
    """Raise CheckpointError unless ``state_dict`` has exactly ``module``'s keys and shapes.

    Args:
        module: the model to load into.
        state_dict: {name: tensor}, e.g. a checkpoint's ``"model"`` entry.
        what: what is being loaded, for the message (e.g. "teacher checkpoint t.pt (teacher config
            c.toml)").
    The message lists (up to 10 of each, with counts) the missing keys, the unexpected keys and
    the shape mismatches as ``name: checkpoint [a, b] vs model [c, d]``.
    """
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f"{what}: expected a state_dict (a dict of tensors), "
                              f"got {type(state_dict).__name__}")
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [f"{k}: checkpoint {_shape(v)} vs model {_shape(expected[k])}"
              for k, v in state_dict.items()
              if k in expected and isinstance(expected[k], torch.Tensor)
              and (not isinstance(v, torch.Tensor) or v.shape != expected[k].shape)]
    if not (missing or unexpected or shapes):
        return
    lines = [f"{what} does not match the model ({len(expected)} tensors in the model, "
             f"{len(state_dict)} in the checkpoint):"]
    if missing:
        lines.append(f"  {len(missing)} missing key(s): {_listed(missing)}")
    if unexpected:
        lines.append(f"  {len(unexpected)} unexpected key(s): {_listed(unexpected)}")
    if shapes:
        lines.append(f"  {len(shapes)} shape mismatch(es): {_listed(shapes)}")
    raise CheckpointError("\n".join(lines))


def load_into(module: nn.Module, state_dict: Mapping[str, Any], what: str) -> None:
    """`check_state_dict`, then ``module.load_state_dict(state_dict, strict=True)``."""
    check_state_dict(module, state_dict, what)
    module.load_state_dict(state_dict, strict=True)


# ----------------------------------------------------------------------------- RNG state
def rng_state() -> dict[str, Any]:
    """The state of python's ``random``, numpy's global generator and torch's CPU (and, when
    available, every CUDA device's) generator, as tensors / ints / lists / strings, so that
    ``weights_only`` loading reads it back. Restore with `set_rng_state`."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(mt), "gauss_next": gauss},
        "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore generators saved by `rng_state` (tensors may be on any device). CUDA states are
    restored for the devices both the saved state and this machine have.

    Raises:
        ValueError: ``state`` lacks a part or holds a malformed one (named).
    """
    for key in ("python", "numpy", "torch"):
        if not isinstance(state, Mapping) or key not in state:
            raise ValueError(f"RNG state must have a {key!r} entry (from radocc.checkpoint."
                             f"rng_state), got {sorted(state) if isinstance(state, Mapping) else state!r}")
    try:
        py, npy = state["python"], state["numpy"]
        random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
        keys = torch.as_tensor(npy["keys"]).cpu().numpy().astype(np.uint32)
        np.random.set_state((npy["name"], keys, npy["pos"], npy["has_gauss"],
                             npy["cached_gaussian"]))
        torch.set_rng_state(torch.as_tensor(state["torch"]).cpu())
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"RNG state is malformed ({type(exc).__name__}: {exc}); expected the "
                         f"dict radocc.checkpoint.rng_state returns") from exc
    if "cuda" in state and torch.cuda.is_available():
        for device, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(torch.as_tensor(cuda_state).cpu(), device)
