"""Honest forecast skill: every model and feature set on the time split of the real data, with its backtest.

    .venv/bin/python benchmarks/bench_forecast.py [--data PATH] [--test-start 2016-01-01] [--folds 4]
                                                  [--only linreg,rf,gbr,keras] [--no-backtest]

Fits each model exactly as its notebook does (``evaluation.holdout`` on the raw schema,
``modeling.make_model`` = features inside the model, ``evaluation.backtest`` with refits on an
expanding window) and prints, per model and feature set: the holdout R² over both targets and per
target, the mean backtest R², and the seconds to fit once (one holdout fit, features included). Also
the tutorial's random split for the linear regression (RMSE 2.491, R² 0.8365), as a check.
Nothing is logged to MLflow; nothing is written.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data" / "germany.csv"


def models(only: set[str]):
    """(name, feature set, factory): the grid points of runner/pipeline.yaml, and the tutorial's models."""
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.linear_model import LinearRegression

    from powerpipe.forecast import modeling

    out = []
    for feature_set in ("tutorial", "weather_calendar"):
        if "linreg" in only:
            out.append(("linear regression", feature_set, lambda: LinearRegression()))
        if "rf" in only:
            trees, max_features = (64, 1.0) if feature_set == "tutorial" else (9, 0.33)
            out.append((f"random forest {trees} trees, depth 10, max_features {max_features}", feature_set,
                        lambda t=trees, mf=max_features: RandomForestRegressor(t, max_depth=10, max_features=mf,
                                                                               random_state=42)))
        if "gbr" in only:
            for learning_rate in (0.05, 0.1):
                out.append((f"gradient boosting (HistGB, 200 trees, lr {learning_rate})", feature_set,
                            lambda lr=learning_rate: modeling.gradient_boosting(learning_rate=lr, max_iter=200,
                                                                                random_state=42)))
        if "keras" in only and feature_set == "weather_calendar":
            for batch_size in (128, 256):
                out.append((f"keras 2x32, 20 epochs, batch {batch_size}", feature_set, ("keras", 20, batch_size)))
    if "keras" in only:
        out.append(("keras 2x32, 50 epochs, batch 256 (the tutorial's)", "tutorial", ("keras", 50, 256)))
    return out


def keras_fit_predict(feature_set: str, epochs: int = 50, batch_size: int = 256, seed: int = 42):
    """The Keras notebook's fit, as a fit_predict."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np
    from keras import layers

    from powerpipe.forecast import features

    def fit_predict(X_train, y_train, X_test):
        keras.utils.set_random_seed(seed)
        inputs = features.build(X_train, feature_set).to_numpy("float32")
        order = np.random.default_rng(seed).permutation(len(inputs))
        normalise = layers.Normalization()
        normalise.adapt(inputs)
        net = keras.Sequential([keras.Input(shape=(inputs.shape[1],)), normalise,
                                layers.Dense(32, activation="relu"), layers.Dense(32, activation="relu"),
                                layers.Dense(2)])
        net.compile(loss="mse", optimizer=keras.optimizers.Adam(learning_rate=1e-3))
        net.fit(inputs[order], y_train.to_numpy("float32")[order], epochs=epochs, batch_size=batch_size,
                validation_split=0.2, verbose=0)
        return net.predict(features.build(X_test, feature_set).to_numpy("float32"), verbose=0)

    return fit_predict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(SHARED_DATA), help="processed CSV (default: ../shared/data/germany.csv)")
    parser.add_argument("--test-start", default="2016-01-01")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--fold-length", default="quarter")
    parser.add_argument("--only", default="linreg,rf,gbr,keras", help="comma-separated: linreg, rf, gbr, keras")
    parser.add_argument("--no-backtest", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    from powerpipe.forecast import data, evaluation, modeling

    frame = data.load(args.data)
    spec = evaluation.Evaluation.from_dict({"split": "time", "test_start": args.test_start, "folds": args.folds,
                                            "fold_length": args.fold_length})
    X_train, X_test, y_train, y_test = evaluation.holdout(frame, spec)
    print(f"data {args.data}: {len(frame):,} hours; {spec.describe()}; "
          f"{len(X_train):,} training / {len(X_test):,} test hours", flush=True)

    from sklearn.linear_model import LinearRegression

    Xr_train, Xr_test, yr_train, yr_test = evaluation.holdout(frame, {"split": "random"})
    tutorial = modeling.evaluate(yr_test, modeling.make_model(LinearRegression(), "tutorial")
                                 .fit(Xr_train, yr_train).predict(Xr_test))
    print(f"check, the tutorial's random split, linear regression: RMSE {tutorial['rmse']:.3f}, "
          f"MAE {tutorial['mae']:.3f}, R² {tutorial['r2']:.4f}", flush=True)

    header = "| model | feature set | holdout R² | solar R² | wind R² | backtest R² | fit s |"
    rows = [header, "|---|---|---|---|---|---|---|"]
    print(header, flush=True)
    for name, feature_set, factory in models(set(args.only.split(","))):
        if isinstance(factory, tuple):
            _, epochs, batch_size = factory
            fit_predict = keras_fit_predict(feature_set, epochs=epochs, batch_size=batch_size)
        else:
            fit_predict = evaluation.refit(modeling.make_model(factory(), feature_set))
        started = time.perf_counter()
        predicted = fit_predict(X_train, y_train, X_test)
        seconds = time.perf_counter() - started
        metrics = modeling.evaluate(y_test, predicted)
        backtest = "" if args.no_backtest else evaluation.backtest_summary(
            evaluation.backtest(frame, spec, fit_predict)).get("backtest_r2", float("nan"))
        row = (f"| {name} | {feature_set} | {metrics['r2']:.4f} | {metrics['solar_r2']:.4f} | "
               f"{metrics['wind_r2']:.4f} | {backtest if backtest == '' else f'{backtest:.4f}'} | {seconds:.1f} |")
        rows.append(row)
        print(row, flush=True)
    print("\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
