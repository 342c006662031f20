"""The MLflow pyfunc wrapper around `ensemble.predictor.EnsemblePredictor` (what `mlflow models serve` runs).

Logged as "model from code": MLflow stores this file with the model and runs it at load time (no pickling);
`set_model` at the bottom names the model object. The `ensemble` package travels with the model (`code/`, put on
`sys.path` by MLflow) and its `requirements.txt` pins what this file imports, so it loads in any environment built
from the model; it imports no Prefect and nothing of `tasks` (keep it so: `tasks` does not travel).
"""

from __future__ import annotations

import mlflow.models
import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

import ensemble.tensorflow_quietly  # noqa: F401  (first: the server's log gets none of TF's native notes)
from ensemble.data import DataError
from ensemble.predictor import EnsemblePredictor

PREDICTOR_ARTIFACT = "predictor"


class EnsemblePyfunc(mlflow.pyfunc.PythonModel):
    """Raw feature columns in (the saved standardisation is applied inside); out: `proba_<class>` columns, `label`
    and the uncertainty columns `predictive_entropy`, `mean_member_entropy`, `mutual_information`, `disagreement`
    (classification), or `prediction`, `spread`, `lower`, `upper` (regression; see `ensemble.uncertainty`).

    Bad rows (missing columns, non-numeric or NaN values) raise an `MlflowException` with
    `INVALID_PARAMETER_VALUE`, which the scoring server answers with HTTP 400 and the message.
    """

    def load_context(self, context) -> None:
        self.predictor = EnsemblePredictor.load(context.artifacts[PREDICTOR_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        try:
            return self.predictor.predict(pd.DataFrame(model_input))
        except DataError as error:
            raise MlflowException(str(error), error_code=INVALID_PARAMETER_VALUE) from error


mlflow.models.set_model(EnsemblePyfunc())
