"""ONNX export: the exported model predicts what the Keras model predicts."""
import shutil

import keras
import numpy as np
import pytest

from conftest import load_stage
from ferpipe import FerError
from ferpipe.evaluation import check_tta
from ferpipe.export import export_onnx, inference_graph, parity, quantize_int8, set_metadata
from ferpipe.inference import CROPS_FACES_KEY, OnnxModel, load_classifier
from ferpipe.model import build_model, ensemble

AUGMENT = {"rotation": 20, "zoom": 0.2, "flip": True, "translate": 0.1, "erasing": 0.3, "crop": True, "fused": False}


def tiny_model(policy, network="compact", crop=True):
    keras.mixed_precision.set_global_policy(policy)
    try:
        return build_model({"model": network, "width": 4, "dropout": 0.1, "augment": AUGMENT | {"crop": crop}})
    finally:
        keras.mixed_precision.set_global_policy("float32")


def faces(n=40):
    return np.random.default_rng(1).integers(0, 256, (n, 48, 48, 1)).astype("float32")


# residual: a graph of layers with shortcuts, not a chain
@pytest.mark.parametrize("network", ["compact", "residual"])
def test_inference_graph_drops_augmentation_and_computes_in_float32(network):
    model = tiny_model("mixed_bfloat16", network)
    graph = inference_graph(model)
    assert not [layer for layer in graph.layers if layer.__class__.__name__.startswith("Random")]
    assert {layer.dtype_policy.name for layer in graph.layers} == {"float32"}
    assert graph.count_params() == model.count_params()
    # bfloat16 keeps ~3 significant digits; the float32 graph must match it to that precision
    np.testing.assert_allclose(graph.predict(faces(), verbose=0), model.predict(faces(), verbose=0), atol=2e-2)


@pytest.mark.parametrize("network", ["compact", "residual"])
def test_onnx_export_matches_keras(tmp_path, network):
    model = tiny_model("float32", network)
    graph = export_onnx(model, tmp_path / "model.onnx")
    exported = OnnxModel(tmp_path / "model.onnx")
    x = faces()
    keras_probs, onnx_probs = model.predict(x, verbose=0), exported.predict(x, batch_size=16)
    assert onnx_probs.shape == (40, 7)
    result = parity(keras_probs, onnx_probs)
    assert result["max_probability_difference"] < 1e-5 and result["label_agreement"] == 1.0
    np.testing.assert_allclose(graph.predict(x, verbose=0), onnx_probs, atol=1e-5)
    assert not list(tmp_path.glob("*.partial.onnx"))


def test_an_ensemble_exports_to_onnx_with_the_members_averaged(tmp_path):
    members = []
    for index, network in enumerate(("compact", "residual")):
        keras.utils.set_random_seed(index)
        member = build_model({"model": network, "width": 4, "dropout": 0.1, "augment": AUGMENT},
                             name=f"member_{index + 1}")
        members.append(member)
    model = ensemble(members)
    export_onnx(model, tmp_path / "model.onnx")
    x = faces()
    onnx_probs = OnnxModel(tmp_path / "model.onnx").predict(x, batch_size=16)
    expected = np.mean([member.predict(x, verbose=0) for member in members], axis=0)
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-6)
    np.testing.assert_allclose(onnx_probs, expected, atol=1e-5)


def test_parity_measures_differences_and_disagreements():
    a = np.array([[0.6, 0.4], [0.2, 0.8], [0.52, 0.48]])
    b = np.array([[0.55, 0.45], [0.6, 0.4], [0.48, 0.52]])
    assert parity(a, b) == {"max_probability_difference": pytest.approx(0.4), "label_agreement": pytest.approx(1 / 3),
                            "p99_probability_difference": pytest.approx(0.05 + 0.98 * 0.35),  # per image 0.05, 0.4, 0.04
                            "label_agreement_where_margin_0.1": 0.5, "images_with_margin_0.1": 2}
    assert parity(a[2:], b[2:])["label_agreement_where_margin_0.1"] == 1.0  # nothing decided: nothing to disagree


def test_onnx_model_takes_images_without_a_channel_axis(tmp_path):
    export_onnx(tiny_model("float32"), tmp_path / "m.onnx")
    x = faces(5)
    exported = OnnxModel(tmp_path / "m.onnx")
    np.testing.assert_array_equal(exported.predict(x[..., 0]), exported.predict(x))
    assert exported.predict(x[:0]).shape == (0, 7)


@pytest.mark.parametrize("crop", [True, False])
def test_the_onnx_files_say_whether_the_network_crops_its_input(tmp_path, crop):
    export_onnx(tiny_model("float32", crop=crop), tmp_path / "model.onnx")
    quantize_int8(tmp_path / "model.onnx", tmp_path / "model.int8.onnx", faces(8)[..., 0].astype(np.uint8))
    for name in ("model.onnx", "model.int8.onnx"):
        exported = OnnxModel(tmp_path / name)
        assert exported.crops_faces is crop
        if crop:
            check_tta(exported, "ten_crop", name)
        else:
            with pytest.raises(FerError, match=f"tta ten_crop needs a model trained with train.augment.crop: true, "
                                               f"and {name} takes whole 48x48 faces"):
                check_tta(exported, "ten_crop", name)


def test_an_onnx_file_without_the_metadata_allows_every_tta_mode(tmp_path):
    export_onnx(tiny_model("float32", crop=False), tmp_path / "model.onnx")
    import onnx

    set_metadata(tmp_path / "model.onnx", {"other": "kept"})
    proto = onnx.load(tmp_path / "model.onnx")
    assert {entry.key: entry.value for entry in proto.metadata_props} == {CROPS_FACES_KEY: "false", "other": "kept"}
    del proto.metadata_props[:]
    onnx.save(proto, tmp_path / "model.onnx")
    exported = OnnxModel(tmp_path / "model.onnx")
    assert exported.crops_faces is None
    check_tta(exported, "ten_crop", "model.onnx")  # cannot tell, so not refused


def test_load_classifier_refuses_a_corrupt_file(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"not onnx")
    with pytest.raises(FerError, match="cannot load ONNX model"):
        load_classifier(tmp_path / "model.onnx")
    (tmp_path / "model.keras").write_bytes(b"not keras")
    with pytest.raises(FerError, match="cannot load Keras model"):
        load_classifier(tmp_path / "model.keras")


def test_export_stage_without_a_trained_model_says_what_to_run(project, monkeypatch):
    monkeypatch.chdir(project)
    with pytest.raises(FerError, match=r"^models/model.keras not found: run the train stage first \(dvc repro train\)$"):
        load_stage(project, "export").main()


@pytest.mark.parametrize("limit, failed, kept", [
    ("MAX_PROBABILITY_DIFFERENCE", "model.onnx", "model.int8.onnx"),
    ("INT8_MIN_DECIDED_AGREEMENT", "model.int8.onnx", "model.onnx"),
    ("INT8_MAX_P99_PROBABILITY_DIFFERENCE", "model.int8.onnx", "model.onnx"),
])
def test_a_failed_parity_check_removes_only_that_export(trained_project, tmp_path, monkeypatch, limit, failed, kept):
    project = shutil.copytree(trained_project, tmp_path / "project")
    monkeypatch.chdir(project)
    stage = load_stage(project, "export")
    monkeypatch.setattr(stage, limit, 2.0 if limit.endswith("AGREEMENT") else -1.0)  # no export can pass this
    with pytest.raises(FerError, match=f"models/{failed} disagrees with Keras"):
        stage.main()
    assert not (project / "models" / failed).exists() and (project / "models" / kept).exists()
    assert (project / "metrics/export.json").is_file()  # the measured figures are kept for inspection


def test_int8_convolutions_do_not_overflow_on_cpus_without_vnni(tmp_path):
    """ONNX Runtime's fastest uint8 x int8 kernels on x86 CPUs without VNNI (AVX2 only) add two products in
    16 bits: 255 x 127 twice is 64,770, which became 32,767 there until OnnxModel asked for exact kernels. On
    CPUs with VNNI, or other architectures, the sum is exact either way."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    constants = {"one": np.array(1.0, np.float32), "zero_u8": np.array(0, np.uint8),
                 "zero_s8": np.array(0, np.int8), "step": np.array(300.0, np.float32),
                 "weights": np.full((1, 2, 1, 1), 127, np.int8)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "one", "zero_u8"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "one", "zero_u8"], ["xd"]),
             helper.make_node("DequantizeLinear", ["weights", "one", "zero_s8"], ["wd"]),
             helper.make_node("Conv", ["xd", "wd"], ["conv"]),
             helper.make_node("QuantizeLinear", ["conv", "step", "zero_u8"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "step", "zero_u8"], ["y"])]
    graph = helper.make_graph(nodes, "int8_conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [numpy_helper.from_array(value, name) for name, value in constants.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "int8.onnx")
    out = OnnxModel(tmp_path / "int8.onnx").predict(np.full((1, 2, 4, 4), 255.0, np.float32))
    np.testing.assert_allclose(out, 64_800.0)  # 64,770 to the nearest output step of 300; overflowed: 32,700
