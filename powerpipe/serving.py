"""A pyfunc wrapper that lets a Keras net take the same named-column input as the scikit-learn models.

MLflow's Keras flavor only accepts one float32 tensor (and fails to save an input example), so a
Keras production model could not answer the same request, report or dashboard as the others.
Logged with ``code_paths`` pointing at this package, so the model loads wherever MLflow runs.
"""

from __future__ import annotations

import mlflow.pyfunc
import pandas as pd

from .data import FEATURES
from .modeling import predictions_frame

KERAS_ARTIFACT = "keras_model"


class KerasRegressor(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        import keras

        self.model = keras.saving.load_model(context.artifacts[KERAS_ARTIFACT])

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        frame = pd.DataFrame(model_input)
        values = frame[FEATURES].to_numpy(dtype="float32")
        return predictions_frame(self.model.predict(values, verbose=0), index=frame.index)
