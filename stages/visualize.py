"""visualize: training curves, training samples, a prediction grid and a confusion-matrix heatmap (PNGs in plots/)."""
from ferpipe.stage import run_stage  # first: keeps library caches in the project
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ferpipe import CLASS_NAMES, FerError, params, require_stage_output  # noqa: E402
from ferpipe.data import PreparedData  # noqa: E402
from ferpipe.evaluation import confusion_matrix  # noqa: E402

PREPARED_DIR = Path("data/prepared")
HISTORY_DIR = Path("metrics/train/plots/metrics")
TRAIN_SUMMARY_FILE = Path("metrics/train/metrics.json")
PREDICTIONS_FILE = Path("data/evaluate/predictions.csv")
PLOTS_DIR = Path("plots")


def read_history() -> pd.DataFrame:
    """One row per epoch: train/eval accuracy and loss, learning rate (from DVCLive's TSVs)."""
    columns = {}
    for split, metric in (("train", "accuracy"), ("eval", "accuracy"), ("train", "loss"),
                          ("eval", "loss"), ("train", "learning_rate")):
        path = HISTORY_DIR / split / f"{metric}.tsv"
        require_stage_output(path, "train")
        columns[f"{split}_{metric}"] = pd.read_csv(path, sep="\t").set_index("step")[metric]
    for metric in ("accuracy", "loss"):  # the trained weights' scores, logged only with train.ema
        path = HISTORY_DIR / "eval" / f"raw_{metric}.tsv"
        if path.is_file():
            columns[f"eval_raw_{metric}"] = pd.read_csv(path, sep="\t").set_index("step")[f"raw_{metric}"]
    history = pd.DataFrame(columns)
    history.index = history.index + 1  # epochs count from 1
    return history


def kept_epochs() -> list[int]:
    """The epochs whose weights the train stage kept (one a member, by train.select_by), from its summary."""
    require_stage_output(TRAIN_SUMMARY_FILE, "train")
    try:
        kept = json.loads(TRAIN_SUMMARY_FILE.read_text())["kept_epochs"]
        if not kept or not all(isinstance(epoch, int) for epoch in kept):
            raise ValueError(f"kept_epochs is {kept!r}")
        return kept
    except (ValueError, KeyError, TypeError) as err:
        raise FerError(f"{TRAIN_SUMMARY_FILE} has no usable kept_epochs ({err!r}): rerun the train stage") from None


def step_drops(history: pd.DataFrame) -> list[int]:
    """Epochs where the LR fell after staying put for an epoch (ReduceLROnPlateau's steps).
    A schedule that moves the LR every epoch (cosine, one-cycle) has none: its panel shows it.
    A fall at epoch 2, or straight after another one (plateau_patience 0), is not marked."""
    lr = history["train_learning_rate"].to_numpy()
    fell = lr[2:] < lr[1:-1] * 0.999
    was_flat = np.isclose(lr[1:-1], lr[:-2], rtol=1e-6, atol=0)
    return list(history.index[2:][fell & was_flat])


def plot_curves(history: pd.DataFrame, kept: list[int], path: Path):
    drops = step_drops(history)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5), width_ratios=(3, 3, 2))
    axes[2].plot(history.index, history["train_learning_rate"], color="grey")
    axes[2].set_title("Learning rate")
    axes[2].set_xlabel("epoch")
    for ax, metric in zip(axes, ("accuracy", "loss")):
        ax.plot(history.index, history[f"train_{metric}"], label=f"train {metric}")
        averaged = f"eval_raw_{metric}" in history
        ax.plot(history.index, history[f"eval_{metric}"],
                label=f"val {metric}" + (" (weights' average)" if averaged else ""))
        if averaged:
            ax.plot(history.index, history[f"eval_raw_{metric}"], label=f"val {metric} (trained weights)",
                    linestyle="--", alpha=0.7)
        for i, epoch in enumerate(drops):
            ax.axvline(epoch, color="grey", linestyle=":", label="LR reduced" if i == 0 else None)
        ax.set_xlabel("epoch")
        ax.set_title(metric.capitalize())
        ax.legend()
    missing = [epoch for epoch in kept if epoch not in history.index]
    if missing:
        raise FerError(f"{TRAIN_SUMMARY_FILE} names epoch {missing[0]} as kept, but the history in {HISTORY_DIR} "
                       f"has epochs {history.index.min()}-{history.index.max()}: rerun the train stage")
    label = f"kept (epoch{'s' if len(kept) > 1 else ''} {', '.join(map(str, kept))})"
    for ax, metric in zip(axes, ("accuracy", "loss")):
        ax.scatter(kept, history[f"eval_{metric}"].loc[kept], color="red", zorder=3, label=label)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_samples(images, labels, count: int, rng, path: Path):
    rows = rng.choice(len(images), size=min(count, len(images)), replace=False)
    fig, axes = plt.subplots(1, len(rows), figsize=(1.6 * len(rows), 2.0), squeeze=False)
    for ax, row in zip(axes[0], rows):
        ax.imshow(images[row], cmap="gray", vmin=0, vmax=255)
        ax.set_title(CLASS_NAMES[labels[row]], fontsize=9)
        ax.axis("off")
    fig.suptitle("Training samples")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_prediction_grid(predictions: pd.DataFrame, images_by_path: dict, count: int, rng, path: Path):
    chosen = predictions.iloc[rng.choice(len(predictions), size=min(count, len(predictions)), replace=False)]
    cols = 10
    n_rows = int(np.ceil(len(chosen) / cols))
    fig, axes = plt.subplots(n_rows, cols, figsize=(2.1 * cols, 2.6 * n_rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    wrong = 0
    for ax, (_, row) in zip(axes.flat, chosen.iterrows()):
        ok = row["predicted"] == row["label"]
        wrong += not ok
        ax.imshow(images_by_path[row["path"]], cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"pred {row['predicted']} ({row['confidence']:.0%})\ntrue {row['label']}",
                     fontsize=8, color="black" if ok else "red")
        ax.text(0.5, -0.06, Path(row["path"]).name, transform=ax.transAxes, ha="center", va="top", fontsize=6)
        if not ok:
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor("red")
                spine.set_linewidth(3)
    fig.suptitle(f"{len(chosen)} random test images: {wrong} misclassified (red)", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_confusion(predictions: pd.DataFrame, path: Path):
    y_true = predictions["label"].map(CLASS_NAMES.index).to_numpy()
    y_pred = predictions["predicted"].map(CLASS_NAMES.index).to_numpy()
    counts = confusion_matrix(y_true, y_pred)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7, 6))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(CLASS_NAMES)):
        for j in range(len(CLASS_NAMES)):
            ax.text(j, i, f"{share[i, j]:.2f}\n{counts[i, j]}", ha="center", va="center", fontsize=7,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, rotation=45)
    ax.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix, test folder (row-normalised)")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main():
    visualize = params.load()["visualize"]
    require_stage_output(PREDICTIONS_FILE, "evaluate")
    rng = np.random.default_rng(visualize["seed"])
    data = PreparedData(PREPARED_DIR)
    PLOTS_DIR.mkdir(exist_ok=True)

    plot_curves(read_history(), kept_epochs(), PLOTS_DIR / "training_curves.png")
    train_images, train_labels, _ = data.split("train")
    plot_samples(train_images, train_labels, visualize["sample_images"], rng, PLOTS_DIR / "train_samples.png")
    test_images, _, test_paths = data.split("test")
    predictions = pd.read_csv(PREDICTIONS_FILE)
    images_by_path = dict(zip(test_paths, test_images))
    plot_prediction_grid(predictions, images_by_path, visualize["grid_images"], rng, PLOTS_DIR / "prediction_grid.png")
    plot_confusion(predictions, PLOTS_DIR / "confusion_matrix.png")
    print(f"wrote {', '.join(p.name for p in sorted(PLOTS_DIR.glob('*.png')))} to {PLOTS_DIR}/")


if __name__ == "__main__":
    run_stage(main)
