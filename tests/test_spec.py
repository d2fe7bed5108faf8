"""ModelSpec, presets and users' own models."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from lstminfer.errors import UserError
from lstminfer.model.base import Model
from lstminfer.model.spec import ModelSpec, build_module, preset, spec_of_module
from lstminfer.model.user import load_user_module


def test_seed_preset_is_the_tutorials_model():
    p = preset("seed")
    assert (p.spec.kind, p.spec.input_size, p.spec.hidden_size, p.spec.num_layers, p.spec.bidirectional) == (
        "lstm", 10, 20, 10, True)
    assert (p.seq_len, p.batch) == (1, 3)
    module = build_module(p.spec)
    assert isinstance(module, torch.nn.LSTM) and not module.training
    # Same weights as the tutorial's torch.manual_seed(0); nn.LSTM(10, 20, num_layers=10, bidirectional=True).
    torch.manual_seed(0)
    theirs = torch.nn.LSTM(10, 20, num_layers=10, bidirectional=True)
    for (k, a), (_, b) in zip(module.state_dict().items(), theirs.state_dict().items()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("kwargs, message", [
    (dict(kind="rnn"), "unknown model kind"),
    (dict(hidden_size=0), "hidden_size must be a positive integer"),
    (dict(num_layers=-1), "num_layers must be a positive integer"),
    (dict(kind="gru", proj_size=4), "proj_size is an LSTM option"),
    (dict(hidden_size=8, proj_size=8), "proj_size (8) must be smaller than hidden_size (8)"),
])
def test_spec_rejects_bad_sizes(kwargs, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ModelSpec(**kwargs)


def test_unknown_preset():
    with pytest.raises(UserError, match="unknown preset 'nope': choose from seed"):
        preset("nope")


@pytest.mark.parametrize("spec", [ModelSpec("lstm", 3, 5, 2, True, True), ModelSpec("gru", 4, 6, 1, False, False),
                                  ModelSpec("lstm", 3, 6, 1, proj_size=2)])
def test_shapes_match_pytorch(spec):
    module = build_module(spec)
    model = Model("t", spec, module, seq_len=4, batch=2)
    inputs = model.make_inputs(7, 3, np.random.default_rng(0))
    outputs = model.reference(inputs)
    expected = spec.shapes(7, 3)
    for name, array in {**inputs, **outputs}.items():
        assert array.shape == expected[name], name
    assert outputs["output"].dtype == np.float64
    assert spec_of_module(module) == spec


def _write_factory(tmp_path, body: str):
    path = tmp_path / "user_model.py"
    path.write_text("import torch\n" + body)
    return path


def test_user_factory_and_weights(tmp_path):
    path = _write_factory(tmp_path, "def make():\n    return torch.nn.GRU(4, 6, num_layers=2)\n")
    weights = tmp_path / "w.pt"
    torch.manual_seed(3)
    source = torch.nn.GRU(4, 6, num_layers=2)
    torch.save(source.state_dict(), weights)
    module = load_user_module(f"{path}:make", str(weights))
    for k, v in source.state_dict().items():
        assert torch.equal(module.state_dict()[k], v)
    assert spec_of_module(module) == ModelSpec("gru", 4, 6, 2)


@pytest.mark.parametrize("body, ref_suffix, message", [
    ("def make():\n    return 3\n", ":make", "returned int, not a torch.nn.Module"),
    ("def make():\n    return torch.nn.LSTM(2, 3)\n", ":missing", "has no callable 'missing'"),
    ("def make():\n    raise ValueError('boom')\n", ":make", "calling .* failed: ValueError: boom"),
    ("syntax error here\n", ":make", "importing .* failed: SyntaxError"),
])
def test_user_factory_errors(tmp_path, body, ref_suffix, message):
    path = _write_factory(tmp_path, body)
    with pytest.raises(UserError, match=message):
        load_user_module(f"{path}{ref_suffix}")


def test_factory_reference_errors(tmp_path):
    with pytest.raises(UserError, match="expected FILE.py:factory"):
        load_user_module("no_colon_here")
    with pytest.raises(UserError, match="does not exist"):
        load_user_module(f"{tmp_path}/absent.py:make")
    with pytest.raises(UserError, match="cannot import module 'no_such_pkg_xyz.mod'"):
        load_user_module("no_such_pkg_xyz.mod:make")


def test_weights_that_do_not_fit(tmp_path):
    path = _write_factory(tmp_path, "def make():\n    return torch.nn.LSTM(4, 6)\n")
    weights = tmp_path / "w.pt"
    torch.save(torch.nn.LSTM(4, 7).state_dict(), weights)
    with pytest.raises(UserError, match="does not fit the model"):
        load_user_module(f"{path}:make", str(weights))


def test_weights_are_never_unpickled(tmp_path):
    path = _write_factory(tmp_path, "def make():\n    return torch.nn.LSTM(4, 6)\n")
    weights = tmp_path / "evil.pt"

    torch.save({"x": Fraction(1, 3)}, weights)  # a pickled Python object, not tensors
    with pytest.raises(UserError, match="weights_only=True"):
        load_user_module(f"{path}:make", str(weights))


@pytest.mark.parametrize("spec", [ModelSpec("lstm", 3, 5, 2, True, True), ModelSpec("gru", 4, 6, 3, True, False, False),
                                  ModelSpec("lstm", 3, 6, 2, True, proj_size=2), ModelSpec("gru", 2, 3, 1)])
def test_parameter_count_is_what_torch_allocates(spec):
    assert spec.num_parameters == sum(p.numel() for p in build_module(spec).parameters())


def test_memory_check_refuses_before_allocating():
    from lstminfer.model.spec import check_memory, estimated_bytes

    spec = ModelSpec("lstm", 10, 100_000, 10, bidirectional=True)
    need = estimated_bytes(spec, 1, 3)
    assert need >= spec.num_parameters * 12  # at least the float32 weights and their float64 copy
    with pytest.raises(UserError, match=r"needs at least .* TiB of memory .* and 1.0 GiB is available here; choose "
                                        r"smaller sizes"):
        check_memory(spec, 1, 3, available=2**30)
    check_memory(preset("seed").spec, 1, 3, available=2**30)  # the tutorial's model fits in 1 GiB


@pytest.mark.parametrize("code", [0, 3, "bye"])
def test_model_file_calling_sys_exit_is_a_user_error(tmp_path, code):
    path = _write_factory(tmp_path, f"import sys\nsys.exit({code!r})\ndef make():\n    return torch.nn.LSTM(2, 3)\n")
    with pytest.raises(UserError, match=rf"importing .* called sys.exit\({code!r}\)"):
        load_user_module(f"{path}:make")
    path = _write_factory(tmp_path, "import sys\ndef make():\n    sys.exit(4)\n")
    with pytest.raises(UserError, match=r"calling .*:make called sys.exit\(4\)"):
        load_user_module(f"{path}:make")


def test_package_module_that_raises_at_import(tmp_path, monkeypatch):
    (tmp_path / "broken_pkg_for_test.py").write_text("raise ValueError('bad config')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match="importing broken_pkg_for_test failed: ValueError: bad config"):
        load_user_module("broken_pkg_for_test:make")


@pytest.mark.parametrize("content", [b"hello\n", b"", b"{\"weights\": 1}"])
def test_weights_that_are_not_a_torch_save_file(tmp_path, content):
    path = _write_factory(tmp_path, "def make():\n    return torch.nn.LSTM(4, 6)\n")
    weights = tmp_path / "w.pt"
    weights.write_bytes(content)
    with pytest.raises(UserError, match=r"is not a file torch.save writes .*torch.save\(model.state_dict\(\), PATH\)"):
        load_user_module(f"{path}:make", str(weights))
    with pytest.raises(UserError, match="is a directory, not a file"):
        load_user_module(f"{path}:make", str(tmp_path))


def test_describe_reads_as_words():
    assert preset("seed").spec.describe() == "10-layer bi-LSTM 10->20"
    assert ModelSpec("gru", 4, 6, 1, batch_first=True, bias=False).describe() == "1-layer GRU 4->6 batch_first no bias"
