"""Small Keras models trained on scikit-learn's digits, for tests, the demo and benchmarks.

``python -m optimizers.models OUT_DIR [--cnn]`` trains one (seeded, a few seconds) and writes
``OUT_DIR/m/1`` (a lean SavedModel with the Keras source in ``assets.extra/model.keras``) plus
``golden.npz`` (held-out x, y), ``train.npz`` (x, y) and ``representative.npy``. Imports
TensorFlow: run it as a process, never from the daemon.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tfwarden.optimizers.models")
    parser.add_argument("out", type=Path)
    parser.add_argument("--cnn", action="store_true")
    parser.add_argument("--wide", action="store_true", help="a 2 x 2048 MLP (4.3M weights)")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np
    from sklearn.datasets import load_digits

    from tfwarden.optimizers.worker import KERAS_SOURCE, _lean_export

    keras.utils.set_random_seed(0)
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int64")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    if args.cnn:
        x = x.reshape(-1, 8, 8, 1)
        model = keras.Sequential([
            keras.Input((8, 8, 1), name="x"),
            keras.layers.Conv2D(16, 3, activation="relu", padding="same"),
            keras.layers.Conv2D(32, 3, activation="relu", padding="same"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax")])
    else:
        width = (2048, 2048) if args.wide else (256, 128)
        model = keras.Sequential([
            keras.Input((64,), name="x"),
            keras.layers.Dense(width[0], activation="relu"),
            keras.layers.Dense(width[1], activation="relu"),
            keras.layers.Dense(10, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[:1400], y[:1400], epochs=args.epochs, batch_size=64, verbose=0)
    version = args.out / "m" / "1"
    fresh = model.__class__.from_config(model.get_config())
    fresh.set_weights(model.get_weights())
    _lean_export(fresh, version, "x", tuple(model.inputs[0].shape), "float32")
    (version / KERAS_SOURCE).parent.mkdir(parents=True, exist_ok=True)
    fresh.save(version / KERAS_SOURCE)
    np.savez(args.out / "golden.npz", x=x[1400:], y=y[1400:])
    np.savez(args.out / "train.npz", x=x[:1400], y=y[:1400])
    np.save(args.out / "representative.npy", x[:300])
    accuracy = float((model.predict(x[1400:], verbose=0).argmax(1) == y[1400:]).mean())
    name = "cnn" if args.cnn else "wide mlp" if args.wide else "mlp"
    print(f"trained {name}: held-out accuracy {accuracy:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
