"""The serving contract of a registered model: what a client sends, what it gets back, and the error codes.

Built from the model's signature when the model is logged, so it always names the columns of that version; it is
stored in the model's `MLmodel` file (`metadata["serving_contract"]`, read with
`mlflow.models.get_model_info(uri).metadata`) and rendered into the model version's description.
"""

from __future__ import annotations

from typing import Any

from mlflow.models import ModelSignature

CONTRACT_VERSION = 1
INPUT_RULES = (
    "Every input column is required, matched by name (any order); integers are accepted for double columns; "
    "extra columns are ignored. Values must be finite numbers."
)
# Output columns by name, or by prefix when the name ends with "_".
COLUMN_MEANINGS = {
    "proba_": "ensemble probability of the class named after the prefix (members combined; rows sum to 1)",
    "label": "the most probable class, as the original label value",
    "prediction": "regression: mean of the members' predictions",
    "spread": "regression: standard deviation of the members' predictions",
    "lower": "regression: lower end of the prediction interval (split-conformal, level in the README)",
    "upper": "regression: upper end of the prediction interval",
    "predictive_entropy": "entropy (nats) of the ensemble's probabilities: total uncertainty",
    "mean_member_entropy": "the members' mean entropy (nats): the uncertainty each member has (aleatoric)",
    "mutual_information": "predictive_entropy - mean_member_entropy (>= 0): the members' disagreement (epistemic)",
    "disagreement": "weight of the members whose top class differs from `label` (0..1)",
}
STATUS_CODES = {
    "200": 'predictions: `{"predictions": [{<output column>: value, ...}, one per input row]}`',
    "400": (
        "a row the model cannot score (a missing input column, a value that is not a number, NaN or inf) or a "
        'malformed body: `{"error_code": "INVALID_PARAMETER_VALUE" | "BAD_REQUEST", "message": ...}`, the '
        "message names the column"
    ),
    "415": "a content type other than application/json, text/csv or application/vnd.apache.parquet (UTF-8 only)",
    "504": "the request ran longer than MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT seconds (default 60)",
}


def serving_contract(signature: ModelSignature) -> dict[str, Any]:
    """The contract of a model with this signature, as JSON-ready values.

    Returns:
        `{"version", "request", "inputs": [{"name", "type"}], "input_rules", "outputs": [{"name", "type",
        "meaning"}], "status_codes": {code: meaning}}`.
    """
    if signature is None or signature.inputs is None or signature.outputs is None:
        raise ValueError(
            "Argument `signature` must declare inputs and outputs (`mlflow.models.infer_signature(rows, "
            f"predictions)`). Received: signature={signature!r}"
        )
    return {
        "version": CONTRACT_VERSION,
        "request": "POST /invocations (JSON `dataframe_split` or `dataframe_records`, CSV or Parquet); GET /ping",
        "inputs": [{"name": c["name"], "type": c["type"]} for c in signature.inputs.to_dict()],
        "input_rules": INPUT_RULES,
        "outputs": [
            {"name": c["name"], "type": c["type"], "meaning": _meaning(c["name"])}
            for c in signature.outputs.to_dict()
        ],
        "status_codes": dict(STATUS_CODES),
    }


def describe(contract: dict[str, Any]) -> str:
    """The contract as Markdown (a model version's description in the registry UI)."""
    inputs = ", ".join(f"`{c['name']}` ({c['type']})" for c in contract["inputs"])
    lines = [
        f"**Serving contract v{contract['version']}**: {contract['request']}.",
        "",
        f"**Inputs**: {inputs}. {contract['input_rules']}",
        "",
        "**Outputs**:",
        *(f"- `{c['name']}` ({c['type']}): {c['meaning']}" for c in contract["outputs"]),
        "",
        "**Status codes**:",
        *(f"- {code}: {meaning}" for code, meaning in contract["status_codes"].items()),
    ]
    return "\n".join(lines)


def _meaning(column: str) -> str:
    if column in COLUMN_MEANINGS:
        return COLUMN_MEANINGS[column]
    prefixes = [p for p in COLUMN_MEANINGS if p.endswith("_") and column.startswith(p)]
    return COLUMN_MEANINGS[prefixes[0]] if prefixes else ""
