"""ferpipe ensemble: averaged probabilities of several models, the combination chosen on validation."""
import json

import keras
import numpy as np
import pytest

from conftest import prepared_project, set_params, working_copy
from ferpipe import ensemble
from ferpipe.data import PreparedData
from ferpipe.evaluation import predict_probabilities, summarize
from ferpipe.model import build_model
from test_model_and_training import recipe


@pytest.fixture(scope="module")
def prepared_template(tmp_path_factory):
    """A prepared project with three untrained models, made once for this module."""
    project = prepared_project(tmp_path_factory.mktemp("ensemble"))
    for seed in range(3):
        keras.utils.set_random_seed(seed)
        build_model(recipe(width=8, augment={"crop": False})).save(project / f"model{seed}.keras")  # whole 48x48 faces
    return project


@pytest.fixture
def prepared_with_models(prepared_template, tmp_path, monkeypatch):
    project = working_copy(prepared_template, tmp_path, monkeypatch)
    return project, [project / f"model{seed}.keras" for seed in range(3)]


def test_every_combination_is_scored_and_the_best_on_validation_is_chosen(prepared_with_models, capsys):
    project, files = prepared_with_models
    assert ensemble.main([*map(str, files), "--tta", "flip", "--output", "scores.json"]) == 0
    result = json.loads((project / "scores.json").read_text())
    assert len(result["combinations"]) == 7  # 3 single models, 3 pairs, 1 triple
    best = max(row["validation"]["accuracy"] for row in result["combinations"])
    assert result["chosen"]["validation"]["accuracy"] == best
    # the pair's figures are those of the averaged probabilities
    x_val, y_val, _ = PreparedData("data/prepared").split("val")
    mean = np.mean([predict_probabilities(keras.saving.load_model(f), x_val, "flip", 64) for f in files[:2]], axis=0)
    pair = next(row for row in result["combinations"] if row["models"] == [str(files[0]), str(files[1])])
    assert pair["validation"]["accuracy"] == pytest.approx(summarize(y_val, mean)["accuracy"])
    assert pair["validation"]["loss"] == pytest.approx(summarize(y_val, mean)["loss"], rel=1e-5)
    assert "private_test" in pair["test"] and "chosen on validation" in capsys.readouterr().out


def test_a_tie_in_validation_accuracy_goes_to_the_lower_validation_loss():
    def row(name, accuracy, loss):
        return {"models": [name], "validation": {"accuracy": accuracy, "loss": loss}}

    rows = [row("a", 0.70, 0.85), row("b", 0.69, 0.80), row("a+b", 0.70, 0.83), row("a+c", 0.70, 0.84)]
    assert ensemble.choose(rows)["models"] == ["a+b"]
    assert ensemble.choose(rows[:2])["models"] == ["a"]  # accuracy first, loss only between equals
    assert ensemble.choose([row("a", 0.7, 0.8), row("b", 0.7, 0.8)])["models"] == ["a"]  # full tie: the first


def test_tta_and_batch_size_default_to_the_evaluate_params(prepared_with_models, monkeypatch):
    project, files = prepared_with_models
    set_params(project, **{"evaluate.tta": "flip", "evaluate.batch_size": 32})
    calls, scored = [], ensemble.evaluate_ensembles

    def recorded(models, tta, batch_size):
        calls.append((tta, batch_size))
        return scored(models, tta, batch_size)

    monkeypatch.setattr(ensemble, "evaluate_ensembles", recorded)
    assert ensemble.main([*map(str, files[:2]), "--output", "default.json"]) == 0
    assert json.loads((project / "default.json").read_text())["tta"] == "flip"
    assert ensemble.main([*map(str, files[:2]), "--tta", "none", "--batch-size", "16"]) == 0
    assert calls == [("flip", 32), ("none", 16)]  # options beat params.yaml


def test_a_bad_evaluate_param_is_reported_when_it_is_the_default(prepared_with_models, capsys):
    project, files = prepared_with_models
    set_params(project, **{"evaluate.tta": "mirror"})
    assert ensemble.main([str(f) for f in files[:2]]) == 2
    assert "evaluate.tta: got 'mirror'" in capsys.readouterr().err
    assert ensemble.main([str(f) for f in files[:2]] + ["--tta", "flip", "--batch-size", "64"]) == 0  # not read


@pytest.mark.parametrize("args, message", [
    ([], "the following arguments are required: models"),
    (["model0.keras", "nowhere.keras"], "not found: nowhere.keras"),
    (["model0.keras", "model1.keras", "--tta", "tencrop"], "invalid choice"),
    (["model0.keras", "model1.keras", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["model0.keras", "model.onnx"], "not .keras files: model.onnx (ONNX exports are for ferpipe predict)"),
    (["model0.keras", "--output", "data"], "--output data is a folder; give a file name"),
    (["model0.keras", "--output", "nowhere/scores.json"], "--output nowhere/scores.json: folder nowhere does not exist"),
    (["model0.keras", "model1.keras", "--output", "data/../model1.keras"],
     "--output data/../model1.keras is one of the models; give another file name"),
])
def test_bad_arguments_are_refused(prepared_with_models, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        ensemble.main(args)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_damaged_model_file_is_named_without_a_traceback(prepared_with_models, capsys):
    project, files = prepared_with_models
    (project / "truncated.keras").write_bytes(files[0].read_bytes()[:5000])  # say, a part missing from a join
    assert ensemble.main([str(files[0]), "truncated.keras"]) == 2
    assert "truncated.keras cannot be loaded as a Keras model (damaged or incomplete?)" in capsys.readouterr().err


def test_a_model_from_outside_the_pipeline_is_refused_before_any_prediction(prepared_with_models, capsys):
    import keras

    project, files = prepared_with_models
    inputs = keras.Input((48, 48, 1))
    keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(inputs))).save(
        project / "three_classes.keras")
    assert ensemble.main([str(files[0]), "three_classes.keras"]) == 2
    out, err = capsys.readouterr()
    assert "three_classes.keras takes inputs of shape [None, 48, 48, 1] and outputs [None, 3]" in err
    assert "predicting with" not in out


def test_a_single_model_is_scored_alone(prepared_with_models, capsys):
    project, files = prepared_with_models
    # given twice, scored once: one row, and it is the one chosen
    assert ensemble.main([str(files[0]), str(files[0]), "--tta", "none", "--output", "one.json"]) == 0
    result = json.loads((project / "one.json").read_text())
    assert [row["models"] for row in result["combinations"]] == [[str(files[0])]]
    x_test, y_test, _ = PreparedData("data/prepared").split("test")
    probs = predict_probabilities(keras.saving.load_model(files[0]), x_test, "none", 64)
    assert result["chosen"]["test"]["accuracy"] == pytest.approx(summarize(y_test, probs)["accuracy"])


def test_an_output_that_cannot_be_written_is_an_error_after_the_table(prepared_with_models, capsys):
    project, files = prepared_with_models
    (project / "scores.json").symlink_to(project / "gone" / "scores.json")  # passes the early checks
    assert ensemble.main([str(files[0]), "--tta", "none", "--output", "scores.json"]) == 2
    out, err = capsys.readouterr()
    assert "chosen on validation" in out and "cannot write --output scores.json: No such file or directory" in err


def test_missing_prepared_data_is_reported(prepared_with_models, capsys):
    project, files = prepared_with_models
    (project / "data/prepared/index.csv").unlink()
    assert ensemble.main([str(f) for f in files[:2]]) == 2
    assert "run the prepare stage first" in capsys.readouterr().err


def test_ten_crop_is_refused_for_models_trained_without_crops(prepared_with_models, capsys):
    project, files = prepared_with_models
    assert ensemble.main([str(f) for f in files[:2]] + ["--tta", "ten_crop"]) == 2
    err = capsys.readouterr().err
    assert f"tta ten_crop needs a model trained with train.augment.crop: true, and {files[0]}" in err
