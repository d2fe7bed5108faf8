"""The verify table's points column: SEQxBATCH where the inputs are laid out by sequence and batch, the real
input shapes where they are not (a file of fixed shape once read 16x1, a size it never ran at)."""

from __future__ import annotations

from pathlib import Path

from _recurrent_files import no_rnn_proto, save
from lstminfer.report.load import typed
from lstminfer.report.tables import verify_rows


def _fixed_shape_onnx(path: Path) -> Path:
    """x [1, 3, 10] -> Relu -> y: no dim is symbolic and there is no recurrent node to read axes from."""
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "fixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 10])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return save(model, path)


def _record(seq_len: int, batch: int, shapes: dict) -> dict:
    return {"kind": "verify", "backend": "onnxruntime", "device": "cpu", "precision": "fp32", "seq_len": seq_len,
            "batch": batch, "input_shapes": shapes, "output": "y", "max_abs_err": 0.0, "max_rel_err": 0.0,
            "atol": 1e-4, "rtol": 1e-3, "passed": True, "reference": "onnx.reference-float64"}


def _points(records: list[dict]) -> str:
    (row,) = verify_rows(typed({"verify": records, "bench": []}).verify)
    return row["points"]


def test_a_file_of_fixed_shape_shows_its_input_shapes(cli, tmp_path):
    code, out, err = cli("verify", _fixed_shape_onnx(tmp_path / "fixed.onnx"), "--backends", "onnxruntime")
    assert code == 0, err
    row = next(line for line in out.splitlines() if "onnxruntime" in line)
    assert "│ x:1x3x10 │" in row and "16x1" not in row


def test_a_file_with_a_batch_axis_only_shows_its_input_shapes(cli, tmp_path):
    code, out, err = cli("verify", save(no_rnn_proto(), tmp_path / "plain.onnx"), "--backends", "onnxruntime")
    assert code == 0, err
    row = next(line for line in out.splitlines() if "onnxruntime" in line)
    assert "│ x:1x5, x:3x5 │" in row


def test_laid_out_points_keep_seq_x_batch():
    lstm = [_record(16, 3, {"input": [16, 3, 10], "h0": [2, 3, 20], "c0": [2, 3, 20]}),
            _record(64, 3, {"input": [64, 3, 10], "h0": [2, 3, 20], "c0": [2, 3, 20]})]
    assert _points(lstm) == "16x3, 64x3"
    assert _points([_record(4, 4, {"input": [4, 4, 10]})]) == "4x4"  # seq == batch: both axes found
    assert _points([_record(8, 2, {"x": [2, 8, 5]})]) == "8x2"  # batch first
    assert _points([_record(16, 1, {"x": [1, 3, 10], "sr": []})]) == "x:1x3x10 sr:scalar"
    assert _points([{k: v for k, v in _record(16, 3, {}).items() if k != "input_shapes"}]) == "16x3"  # older files
