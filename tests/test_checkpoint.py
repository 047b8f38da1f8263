"""Tests for jaxnet.checkpoint: exact round trips, numpy-only reading, refusals, atomicity."""

from __future__ import annotations

import functools
import json
import os
import re
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnet import checkpoint
from jaxnet.checkpoint import (
    CheckpointError,
    CheckpointManager,
    CheckpointMismatchError,
    CorruptCheckpointError,
    load_pytree,
    save_pytree,
)

ANY_TREE = {"w": np.ones(1)}
SEED_MOMENTUM = optax.chain(
    optax.ema(0.9, debias=False), optax.add_decayed_weights(1e-3), optax.scale(-0.1)
)


def make_params(width: int = 16, seed: int = 0) -> dict:
    """A small conv net's params: HWIO conv kernel, (n_out, n_in) dense weights."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {
        "conv1": {"w": jax.random.normal(k1, (5, 5, 1, width)), "b": jnp.zeros((width,))},
        "fc": {"w": jax.random.normal(k2, (10, 4 * width)), "b": jnp.full((10,), 0.5)},
    }


@functools.cache
def trained_state(optimizer: optax.GradientTransformation, steps: int = 3) -> dict:
    """Params and optimizer state after a few updates, so nothing is zero and counts moved.

    Cached (optimizers are hashable): callers must not mutate the result.
    """
    params = make_params()
    state = optimizer.init(params)
    for i in range(steps):
        grads = jax.tree.map(lambda p, i=i: jnp.sin(p + i), params)
        updates, state = optimizer.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return {"params": params, "opt_state": state}


def fresh_like(optimizer: optax.GradientTransformation, width: int = 16) -> dict:
    params = make_params(width, seed=1)
    return {"params": params, "opt_state": optimizer.init(params)}


def assert_identical(a, b) -> None:
    """Same treedef, and every leaf bit-identical with the same dtype and shape."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


# --- Round trips ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "optimizer",
    [SEED_MOMENTUM, optax.adam(1e-3), optax.chain(optax.ema(0.9), optax.scale_by_schedule(abs))],
    ids=["seed_momentum", "adam", "schedule"],
)
def test_round_trip_with_template_is_bit_identical(tmp_path, optimizer):
    state = trained_state(optimizer)
    meta = {"config": {"lr": 0.1, "arch": "mnist"}, "iteration": 3}
    save_pytree(tmp_path / "s.npz", state, meta)
    loaded, got_meta = load_pytree(tmp_path / "s.npz", like=fresh_like(optimizer))
    assert_identical(loaded, state)
    assert got_meta == meta
    # The real optax types come back, and the arrays are jax arrays like the template's.
    assert type(loaded["opt_state"][0]) is type(state["opt_state"][0])
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(loaded))
    assert loaded["opt_state"][0].count.dtype == jnp.int32
    assert int(loaded["opt_state"][0].count) == 3
    # The restored state drives the optimizer exactly as the original does.
    grads = jax.tree.map(jnp.cos, state["params"])
    want, _ = optimizer.update(grads, state["opt_state"], state["params"])
    got, _ = optimizer.update(grads, loaded["opt_state"], loaded["params"])
    assert_identical(got, want)


def test_round_trip_plain_containers_and_dtypes(tmp_path):
    tree = {
        "f32": np.arange(6, dtype=np.float32).reshape(2, 3),
        "f64": np.array([np.pi, -0.0, np.inf, np.nan]),
        "f16": np.array([1.5], dtype=np.float16),
        "c64": np.array([1 + 2j], dtype=np.complex64),
        "i32": np.int32(-7),
        "i64": np.array(2**40),
        "u8": np.arange(3, dtype=np.uint8),
        "key": np.asarray(jax.random.PRNGKey(7)),  # a raw uint32 key is a plain array
        "flag": np.array(True),
        "bools": np.array([True, False]),
        "empty": np.zeros((0, 3), np.float32),
        "seq": [np.ones(1), (np.zeros(2), None)],
        "nothing": (),
        "none": None,
    }
    save_pytree(tmp_path / "t.npz", tree)
    like = jax.tree.map(np.zeros_like, tree)
    loaded, meta = load_pytree(tmp_path / "t.npz", like=like)
    assert meta == {}
    assert isinstance(loaded["seq"], list) and isinstance(loaded["seq"][1], tuple)
    assert loaded["nothing"] == () and loaded["none"] is None and loaded["seq"][1][1] is None
    assert_identical(loaded, tree)
    assert isinstance(loaded["f64"], np.ndarray) and loaded["f64"].dtype == np.float64
    assert loaded["i32"].shape == () and loaded["i32"].dtype == np.int32


def test_float64_template_under_x64(tmp_path):
    with jax.enable_x64(True):
        tree = {"w": jnp.arange(3, dtype=jnp.float64) / 3, "n": jnp.array(5, jnp.int64)}
        save_pytree(tmp_path / "x.npz", tree)
        loaded, _ = load_pytree(tmp_path / "x.npz", like=tree)
        assert loaded["w"].dtype == jnp.float64
        assert_identical(loaded, tree)


def test_numpy_alone_reads_arrays_by_pytree_path_and_the_header(tmp_path):
    state = trained_state(SEED_MOMENTUM)
    meta = {"history": [{"it": 1, "loss": np.float32(2.5)}], "data_order": {"epoch": 0}}
    save_pytree(tmp_path / "s.npz", state, meta)
    with np.load(tmp_path / "s.npz") as z:
        assert "['params']['conv1']['w']" in z.files
        assert "['opt_state'][0].count" in z.files
        np.testing.assert_array_equal(
            z["['opt_state'][0].ema['fc']['w']"], state["opt_state"][0].ema["fc"]["w"]
        )
        header = json.loads(z[checkpoint.METADATA_KEY].tobytes())
        w = z["['params']['conv1']['w']"]
    assert header["format"] == checkpoint.FORMAT_NAME
    assert header["version"] == checkpoint.FORMAT_VERSION
    assert header["metadata"] == {"history": [{"it": 1, "loss": 2.5}], "data_order": {"epoch": 0}}
    assert w.shape == (5, 5, 1, 16) and w.dtype == np.float32


def write_version_1(path: Path, tree, metadata: dict) -> None:
    """A file as the first format wrote it: a leaves table and a tree structure in the header."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    arrays = {jax.tree_util.keystr(p): np.asarray(x) for p, x in flat}
    leaves = [{"key": k, "shape": list(a.shape), "dtype": str(a.dtype)} for k, a in arrays.items()]
    header = {
        "format": "jaxnet.checkpoint",
        "version": 1,
        "leaves": leaves,
        "structure": {"t": "dict", "keys": [], "children": []},
        "treedef": str(jax.tree.structure(tree)),
        "jax_version": jax.__version__,
        "numpy_version": np.__version__,
        "metadata": metadata,
    }
    header_bytes = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(path, **arrays, __metadata__=header_bytes)


def test_version_1_files_still_load(tmp_path):
    params = make_params()
    write_version_1(tmp_path / "params.npz", params, {"iteration": 7})
    loaded, meta = load_pytree(tmp_path / "params.npz", like=make_params(seed=1))
    assert_identical(loaded, params)
    assert meta == {"iteration": 7}


def test_newer_format_version_is_refused(tmp_path):
    path = tmp_path / "new.npz"
    header = {"format": checkpoint.FORMAT_NAME, "version": checkpoint.FORMAT_VERSION + 1}
    np.savez(path, w=np.ones(1), __metadata__=np.frombuffer(json.dumps(header).encode(), np.uint8))
    with pytest.raises(CheckpointError, match=f"{re.escape(str(path))}.*upgrade jaxnet"):
        load_pytree(path, like={"w": np.ones(1)})


@pytest.mark.parametrize(
    "leaf",
    [np.array(["x"]), jnp.ones(2, jnp.bfloat16), jax.random.key(0)],
    ids=["str", "bfloat16", "typed_key"],
)
def test_save_refuses_non_numeric_leaves_and_non_json_metadata(tmp_path, leaf):
    with pytest.raises(TypeError, match=r"\['name'\]"):
        save_pytree(tmp_path / "a.npz", {"name": leaf})
    with pytest.raises(TypeError, match="metadata"):
        save_pytree(tmp_path / "a.npz", {"w": np.ones(1)}, {"f": object()})
    assert not list(tmp_path.iterdir())


# --- Refusals -------------------------------------------------------------------------------------


def test_other_architecture_is_refused_with_a_one_line_message(tmp_path):
    path = tmp_path / "s.npz"
    save_pytree(path, trained_state(SEED_MOMENTUM))
    wider = fresh_like(SEED_MOMENTUM, width=8)
    with pytest.raises(CheckpointMismatchError) as info:
        load_pytree(path, like=wider)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and "does not fit the structure" in msg
    assert "['params']['conv1']['w'] has shape (5, 5, 1, 16) in the file, (5, 5, 1, 8)" in msg

    extra = fresh_like(SEED_MOMENTUM)
    extra["params"]["fc2"] = {"w": jnp.zeros((2, 2))}
    with pytest.raises(
        CheckpointMismatchError, match=r"missing from the file: \['params'\]\['fc2'"
    ):
        load_pytree(path, like=extra)

    fewer = fresh_like(SEED_MOMENTUM)
    del fewer["params"]["fc"], fewer["opt_state"][0].ema["fc"]
    with pytest.raises(CheckpointMismatchError, match=r"not in the template: .*\['fc'\]"):
        load_pytree(path, like=fewer)


def test_other_dtype_or_optimizer_is_refused(tmp_path):
    path = tmp_path / "s.npz"
    save_pytree(path, trained_state(SEED_MOMENTUM))
    half = jax.tree.map(lambda x: x.astype(jnp.float16), fresh_like(SEED_MOMENTUM))
    with pytest.raises(CheckpointMismatchError, match="dtype float32 in the file, float16"):
        load_pytree(path, like=half)
    with pytest.raises(CheckpointMismatchError, match=r"\.mu\[.*\.ema\["):
        load_pytree(path, like=fresh_like(optax.adam(1e-3)))


def real_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "real.npz"
    save_pytree(path, trained_state(SEED_MOMENTUM), {"iteration": 3})
    return path


@pytest.mark.parametrize("keep_fraction", [0.0, 0.3, 0.9, "minus_one"])
def test_truncated_file_is_refused_naming_it(tmp_path, keep_fraction):
    path = real_checkpoint(tmp_path)
    data = path.read_bytes()
    cut = len(data) - 1 if keep_fraction == "minus_one" else int(len(data) * keep_fraction)
    path.write_bytes(data[:cut])
    with pytest.raises(CorruptCheckpointError, match="truncated or corrupt") as info:
        load_pytree(path, like=fresh_like(SEED_MOMENTUM))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_garbage_and_flipped_bytes_are_refused(tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(os.urandom(1000))
    match = f"{re.escape(str(garbage))}.*truncated or corrupt"
    with pytest.raises(CorruptCheckpointError, match=match):
        load_pytree(garbage, like=ANY_TREE)

    path = real_checkpoint(tmp_path)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("['params']['fc']['w'].npy")
    data[info.header_offset + 200] ^= 0xFF  # inside the array's bytes
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match=r"\['params'\]\['fc'\]\['w'\].*CRC"):
        load_pytree(path, like=fresh_like(SEED_MOMENTUM))


def test_npz_without_header_and_missing_file(tmp_path):
    plain = tmp_path / "plain.npz"
    np.savez(plain, w=np.ones(3))
    with pytest.raises(CorruptCheckpointError, match="no __metadata__ entry"):
        load_pytree(plain, like={"w": np.ones(3)})
    with pytest.raises(FileNotFoundError, match=r"nope\.npz"):
        load_pytree(tmp_path / "nope.npz", like=ANY_TREE)


# --- Atomic writes and the manager ----------------------------------------------------------------


def test_manager_keeps_the_newest_n(tmp_path):
    manager = CheckpointManager(tmp_path / "run", keep=2)
    assert manager.latest() is None and manager.restore(like=ANY_TREE) is None
    for step in (10, 20, 30, 40):
        manager.save(step, {"w": np.full(2, step, np.float32)}, {"iteration": step})
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == ["ckpt_00000030.npz", "ckpt_00000040.npz"]
    assert manager.latest() == tmp_path / "run" / "ckpt_00000040.npz"
    tree, meta = manager.restore(like={"w": np.zeros(2, np.float32)})
    assert meta == {"iteration": 40} and tree["w"][0] == 40


def test_manager_falls_back_past_a_corrupt_newest(tmp_path):
    manager = CheckpointManager(tmp_path, keep=3)
    for step in (1, 2, 3):
        manager.save(step, {"w": np.full(2, step, np.float32)}, {"iteration": step})
    newest = manager.latest()
    newest.write_bytes(newest.read_bytes()[:-50])
    with pytest.warns(
        UserWarning, match=f"{re.escape(str(newest))}.*truncated or corrupt.*previous"
    ):
        tree, meta = manager.restore(like={"w": np.zeros(2, np.float32)})
    assert meta == {"iteration": 2} and tree["w"][0] == 2
    # The corrupt file is set aside, not deleted, and no longer counts as the newest.
    assert (tmp_path / "ckpt_00000003.npz.corrupt").exists()
    assert manager.latest() == tmp_path / "ckpt_00000002.npz"

    for _, path in manager.checkpoints():
        path.write_bytes(b"garbage")
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match="no readable checkpoint"):
        manager.restore(like={"w": np.zeros(2, np.float32)})


def test_manager_does_not_fall_back_on_an_architecture_mismatch(tmp_path):
    manager = CheckpointManager(tmp_path)
    manager.save(1, {"w": np.ones(2)})
    manager.save(2, {"w": np.ones(2)})
    with pytest.raises(CheckpointMismatchError):
        manager.restore(like={"w": np.ones(3)})
    assert len(manager.checkpoints()) == 2


def crash_in_rename(monkeypatch) -> type[BaseException]:
    def crash(*args, **kwargs):
        raise OSError("simulated crash during rename")

    monkeypatch.setattr(os, "replace", crash)
    return OSError


def crash_between_two_arrays(monkeypatch) -> type[BaseException]:
    real_write, calls = np.lib.format.write_array, []

    def write_then_crash(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # e.g. Ctrl-C between two arrays
        return real_write(*args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", write_then_crash)
    return KeyboardInterrupt


@pytest.mark.parametrize("crash", [crash_in_rename, crash_between_two_arrays])
def test_a_crash_while_saving_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch, crash):
    manager = CheckpointManager(tmp_path, keep=1)
    first = {"a": np.arange(4, dtype=np.float32), "b": np.ones(3)}
    manager.save(1, first, {"iteration": 1})
    with pytest.raises(crash(monkeypatch)):
        manager.save(2, {"a": np.zeros(4, np.float32), "b": np.zeros(3)}, {"iteration": 2})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_00000001.npz"]  # no temporary
    tree, meta = manager.restore(like=first)
    assert meta == {"iteration": 1}
    assert_identical(tree, first)


def test_leftover_temp_files_are_ignored_and_cleaned(tmp_path):
    CheckpointManager(tmp_path).save(5, {"w": np.ones(1)})
    leftover = tmp_path / ".ckpt_00000006.npz.deadbeef.tmp"
    leftover.write_bytes(b"PK\x03\x04 half a zip")
    manager = CheckpointManager(tmp_path)
    assert not leftover.exists()
    assert manager.latest() == tmp_path / "ckpt_00000005.npz"


def test_save_fsyncs_the_file_and_the_folder(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def record(fd):
        synced.append(os.path.isdir(f"/proc/self/fd/{fd}") if os.name == "posix" else None)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", record)
    save_pytree(tmp_path / "x.npz", {"w": np.ones(1)})
    assert synced[:1] == [False]  # the file, before the rename
    if os.name == "posix":
        assert synced[-1] is True  # then the folder


def test_manager_validates_arguments(tmp_path):
    with pytest.raises(ValueError, match="keep"):
        CheckpointManager(tmp_path, keep=0)
    manager = CheckpointManager(tmp_path)
    with pytest.raises(ValueError, match="step"):
        manager.save(-1, {"w": np.ones(1)})
    with pytest.raises(TypeError, match="step"):
        manager.save(1.5, {"w": np.ones(1)})
