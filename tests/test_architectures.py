"""The report's three networks: their layers, shapes, parameter counts and tables."""

from __future__ import annotations

import pytest

from jaxnet import architectures, count_params, parameter_rows, parameter_table

# Each network's input, the types of its layers as its parameter table writes them, and the
# trainable parameters of its conv and dense layers with their total: report Tables 1 and 3,
# and the assignment's CIFAR-10 starter.
TABLES = {
    "mnist": (
        (28, 28, 1),
        "conv 5x5x1x16, pad 2; ReLU; max pool 2x2, stride 2; conv 5x5x16x16, pad 2; ReLU; "
        "max pool 2x2, stride 2; dense 784 -> 10",
        [416, 6416, 7850],
        14682,
    ),
    "cifar10_baseline": (
        (32, 32, 3),
        "conv 5x5x3x16, pad 2; ReLU; max pool 2x2, stride 2; conv 5x5x16x16, pad 2; ReLU; "
        "dense 4096 -> 10",
        [1216, 6416, 40970],
        48602,
    ),
    "cifar10_modified": (  # ReLU after every conv and the hidden dense layer; bare logits
        (32, 32, 3),
        "conv 5x5x3x16, pad 2; ReLU; max pool 2x2, stride 2; conv 5x5x16x24, pad 2; ReLU; "
        "conv 5x5x24x24, pad 2; ReLU; max pool 2x2, stride 2; conv 3x3x24x16, pad 1; ReLU; "
        "conv 3x3x16x16, pad 1; ReLU; dense 1024 -> 20; ReLU; dense 20 -> 10",
        [1216, 9624, 14424, 3472, 2320, 20500, 210],
        51766,
    ),
}


@pytest.mark.parametrize("name", sorted(TABLES))
def test_the_reports_networks(name):
    input_shape, kinds, per_layer, total = TABLES[name]
    arch = architectures.get(name)
    assert (arch.input_shape, arch.num_classes, arch.name) == (input_shape, 10, name)
    rows = parameter_rows(arch)
    assert "; ".join(r.kind for r in rows) == kinds
    assert [r.params for r in rows if r.params] == per_layer
    assert count_params(arch) == total == sum(per_layer)
    assert parameter_table(arch).strip().endswith(f"| **{total}** |")


def test_the_tables_arithmetic_and_shapes():
    table = parameter_table(architectures.mnist())
    for text in ("5*5*1*16 + 16 = 416", "5*5*16*16 + 16 = 6416", "784*10 + 10 = 7850"):
        assert text in table
    assert architectures.mnist().output_shapes[-2] == (7, 7, 16)
    arch = architectures.cifar10_modified()
    shapes = [(32, 32, 16), (16, 16, 24), (16, 16, 24), (8, 8, 16), (8, 8, 16), (20,), (10,)]
    assert [r.output_shape for r in parameter_rows(arch) if r.params] == shapes
    table = parameter_table(arch)
    assert "1024*20 + 20 = 20500" in table and "64" not in table


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("mnist", "mnist"),
        ("cifar10_baseline", "cifar10_baseline"),
        ("baseline", "cifar10_baseline"),
        ("cifar10_modified", "cifar10_modified"),
        ("modified", "cifar10_modified"),
    ],
)
def test_get_by_name_and_alias(name, canonical):
    arch = architectures.get(name)
    assert arch == architectures.ARCHITECTURES[canonical]()
    assert arch.name == canonical


def test_get_unknown_lists_the_known_names():
    with pytest.raises(ValueError, match="unknown architecture 'resnet'") as info:
        architectures.get("resnet")
    for name in ("mnist", "cifar10_baseline", "baseline", "cifar10_modified", "modified"):
        assert name in str(info.value)


@pytest.mark.parametrize(
    ("name", "last_in"),
    [("mnist", 7 * 7 * 16), ("cifar10_baseline", 16 * 16 * 16), ("cifar10_modified", 20)],
)
@pytest.mark.parametrize("k", [2, 3, 37])
def test_num_classes_changes_only_the_last_dense_layer(name, last_in, k):
    ten, other = architectures.get(name), architectures.get(name, num_classes=k)
    assert other.num_classes == k and other.name == ten.name
    assert other.layers[:-1] == ten.layers[:-1]
    assert count_params(other) - count_params(ten) == (k - 10) * (last_in + 1)
    assert architectures.ARCHITECTURES[name](k) == other


def test_one_class_is_refused():
    with pytest.raises(ValueError, match="num_classes must be >= 2, got 1"):
        architectures.get("mnist", num_classes=1)
