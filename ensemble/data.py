"""Tabular data: load, validate, infer the task, split, standardise, and persist the splits as Parquet.

Shapes: `B` = rows, `d` = features, `C` = classes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
import pyarrow as pa

from ensemble.checks import is_int as _is_int  # the library's one integer check


class DataError(ValueError):
    """The data cannot be used as given; the message names the file, column or value to fix."""


BUNDLED_DATASETS: tuple[str, ...] = ("blobs", "breast_cancer", "digits", "wine")
TaskType = Literal["binary", "multiclass", "regression"]  # the library's one list of tasks
TASKS: tuple[str, ...] = get_args(TaskType)
_TASKS = ("auto", *TASKS)
_EXTENSIONS = (".csv", ".parquet", ".pq")
_SPLITS = ("train", "val", "test")


def _is_names(value: Any) -> bool:
    return isinstance(value, tuple) and all(isinstance(v, str) and v != "" for v in value)


def _is_fraction(value: Any) -> bool:
    return isinstance(value, float | int | np.number) and not isinstance(value, bool) and 0 < value < 1


_CONFIG_RULES = {  # argument -> (is valid, what it must be)
    "source": (lambda v: isinstance(v, str) and v != "", f"a file path or one of {BUNDLED_DATASETS}"),
    "target": (lambda v: v is None or (isinstance(v, str) and v != ""), "a column name or None"),
    "task": (lambda v: v in _TASKS, f"one of {_TASKS}"),
    "val_fraction": (_is_fraction, "a float in (0, 1)"),
    "test_fraction": (_is_fraction, "a float in (0, 1)"),
    "seed": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "standardize": (lambda v: isinstance(v, bool), "a bool"),
    "max_classes": (lambda v: _is_int(v) and v >= 2, "an integer >= 2"),
    "train_rows": (lambda v: v is None or (_is_int(v) and v >= 1), "an integer >= 1 or None"),
    "features": (
        lambda v: v is None or (_is_names(v) and v != ()),
        "a non-empty list of column names or None",
    ),
    "drop": (_is_names, "a list of column names"),
    "id_column": (lambda v: v is None or (isinstance(v, str) and v != ""), "a column name or None"),
}


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and how it is split.

    Args:
        source: path to a `.csv` / `.parquet` / `.pq` file, or a bundled name from `BUNDLED_DATASETS`.
        target: target column. Required for files; defaults to `"target"` for bundled sets and given frames.
        task: `"auto"` infers the task from the target (see `infer_task`).
        val_fraction: fraction of rows in the validation split, in (0, 1).
        test_fraction: fraction of rows in the test split, in (0, 1); `val_fraction + test_fraction < 1`.
        seed: seed of the shuffled split (stratified by class for classification).
        standardize: fit mean/std on the train split; if False the feature transform is the identity.
        max_classes: integer targets with more distinct values than this are treated as regression.
        train_rows: if set, the first `train_rows` rows in source order (no shuffle) form the train split and
            the remaining rows are split into val/test in the ratio `val_fraction : test_fraction`.
        features: the feature columns, in this order; None means every column but the target, `id_column` and
            `drop`.
        drop: columns that are not features (e.g. a numeric ID, or a column that leaks the label).
        id_column: a column that identifies rows (any dtype): never a feature; batch scoring keeps it beside the
            predictions.
    """

    source: str = "digits"
    target: str | None = None
    task: Literal["auto", "binary", "multiclass", "regression"] = "auto"
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    standardize: bool = True
    max_classes: int = 50
    train_rows: int | None = None
    features: tuple[str, ...] | None = None
    drop: tuple[str, ...] = ()
    id_column: str | None = None

    def __post_init__(self) -> None:
        for name in (
            "features",
            "drop",
        ):  # lists (YAML, JSON) -> tuples: the config stays hashable and frozen
            if isinstance(value := getattr(self, name), list):
                object.__setattr__(self, name, tuple(value))
        for name, (is_valid, what) in _CONFIG_RULES.items():
            if not is_valid(value := getattr(self, name)):
                raise ValueError(f"Argument `{name}` must be {what}. Received: {name}={value!r}")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                "Arguments `val_fraction` + `test_fraction` must be < 1 so that rows remain for training. "
                f"Received: val_fraction={self.val_fraction}, test_fraction={self.test_fraction}"
            )
        roles = {"target": [self.target or "target"], "id_column": [self.id_column] if self.id_column else []}
        for name in ("features", "drop"):
            roles[name] = list(getattr(self, name) or ())
            if len(set(roles[name])) != len(roles[name]):
                raise ValueError(
                    f"Argument `{name}` must not repeat a column. Received: {name}={roles[name]}"
                )
        for first, second in itertools.combinations(roles, 2):
            if both := sorted(set(roles[first]) & set(roles[second])):
                raise ValueError(
                    f"Arguments `{first}` and `{second}` both name the columns {both}; a column has one role. "
                    f"Received: {first}={roles[first]}, {second}={roles[second]}"
                )

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments, JSON-ready (`features` and `drop` as lists)."""
        config = dataclasses.asdict(self)
        return {
            **config,
            "features": None if self.features is None else list(self.features),
            "drop": list(self.drop),
        }


def _bundled_frame(name: str) -> pd.DataFrame:
    """Bundled data set as a frame `[B, d + 1]` with feature columns and an integer `"target"` column."""
    # Imported here: scikit-learn takes seconds to import, and a config check (tasks.config) needs none of it.
    from sklearn import datasets as sk_datasets

    if name == "blobs":
        x, y = sk_datasets.make_blobs(n_samples=1100, centers=3, n_features=2, cluster_std=2, random_state=2)
        names = [f"x{i}" for i in range(x.shape[1])]
    else:
        loaders = {"breast_cancer": "load_breast_cancer", "digits": "load_digits", "wine": "load_wine"}
        bunch = getattr(sk_datasets, loaders[name])()
        x, y = bunch.data, bunch.target
        names = [re.sub(r"[^0-9A-Za-z_]+", "_", str(n)).strip("_") for n in bunch.feature_names]
    frame = pd.DataFrame(x, columns=names)
    frame["target"] = y.astype(np.int64)
    return frame


def load_frame(source: str, target: str | None = None) -> tuple[pd.DataFrame, str]:
    """Reads a CSV/Parquet file or builds a bundled data set.

    Returns:
        `(frame, target)`: the raw frame `[B, d + 1]` and the resolved target column name.
    """
    if source in BUNDLED_DATASETS:
        return _bundled_frame(source), target or "target"
    frame = _read_checked_table(_data_file(source))
    return frame, _required_target(Path(source), target, list(frame.columns))


def read_table(path: str | Path) -> pd.DataFrame:
    """The rows of a CSV or Parquet file (by its extension, `.csv`, `.parquet` or `.pq`); DataError naming the file
    when it is missing, of another type or unreadable."""
    return _read_checked_table(check_input_table(path))


def _read_checked_table(path: Path) -> pd.DataFrame:
    """`read_table` of a path `check_input_table` has accepted."""
    try:
        return pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path, engine="pyarrow")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, pa.ArrowException, OSError) as error:
        raise DataError(f"Could not read {path}: {error}") from error


def write_table(frame: pd.DataFrame, path: str | Path) -> Path:
    """`frame` written as CSV or Parquet by the extension of `path` (its folder made if needed), without the index."""
    path = check_output_table(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, engine="pyarrow", index=False)
    return path


def check_input_table(path: str | Path) -> Path:
    """`path` if it is an existing CSV or Parquet file; DataError naming it and the fix otherwise."""
    path = Path(path)
    if path.suffix.lower() not in _EXTENSIONS:
        raise DataError(f"Unsupported file extension {path.suffix!r} ({path}); use one of {_EXTENSIONS}.")
    if not path.is_file():
        raise DataError(f"Data file not found: {path} (resolved to {path.resolve()}).")
    return path


def check_output_table(path: str | Path) -> Path:
    """`path` if its extension says which table format to write (`.csv`, `.parquet`, `.pq`); DataError otherwise."""
    path = Path(path)
    if path.suffix.lower() not in _EXTENSIONS:
        raise DataError(
            f"Unsupported output file extension {path.suffix!r} ({path}); use one of {_EXTENSIONS}."
        )
    return path


def check_source(
    source: str,
    target: str | None = None,
    features: tuple[str, ...] | None = None,
    drop: tuple[str, ...] = (),
    id_column: str | None = None,
) -> None:
    """`load_frame` and `validate_frame` on the data, for a command line to run before it starts anything: the file
    exists with a supported extension and can be read; it names the target and every column that `features`,
    `drop` and `id_column` name; the features are numeric, without NaN or inf; the target has no missing values.
    Same DataError messages as data preparation, which reads the data again (mistakes that need the split, such as
    a class too small for it, are found there)."""
    frame, target = load_frame(source, target)
    validate_frame(frame, target, features, drop, id_column)


def _data_file(source: str) -> Path:
    """The existing CSV/Parquet file a data source that is not a bundled name names (`check_input_table`); a bare
    name without extension that is no file is taken for a misspelt bundled name, and the DataError lists those."""
    path = Path(source)
    if not path.suffix and not path.exists() and len(path.parts) == 1:
        raise DataError(f"Unknown bundled data set {source!r}. Available: {list(BUNDLED_DATASETS)}.")
    return check_input_table(path)


def _required_target(path: Path, target: str | None, columns: list[str]) -> str:
    if target is None:
        raise DataError(f"Argument `target` is required for {path}. Available columns: {columns}")
    return target


def _check_target_column(target: str, columns: list[str]) -> None:
    if target not in columns:
        raise DataError(f"Target column {target!r} not found. Available columns: {list(columns)}")


def _is_numeric(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_complex_dtype(column)


def _feature_matrix(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """Feature columns as a `[B, d]` float64 matrix; DataError naming non-numeric or non-finite columns."""
    if non_numeric := {c: str(frame[c].dtype) for c in columns if not _is_numeric(frame[c])}:
        raise DataError(f"Feature columns must be numeric; encode or drop the columns (dtype) {non_numeric}.")
    x = frame[columns].to_numpy(dtype=np.float64, na_value=np.nan)  # (B, d)
    bad = (~np.isfinite(x)).sum(axis=0)  # (d,)
    if bad.any():
        counts = {c: int(n) for c, n in zip(columns, bad, strict=True) if n}
        raise DataError(
            f"Feature columns with NaN or inf values (column: bad rows): {counts}; drop or impute."
        )
    return x


def feature_columns(
    columns: list[str],
    target: str,
    features: tuple[str, ...] | None = None,
    drop: tuple[str, ...] = (),
    id_column: str | None = None,
) -> list[str]:
    """The feature columns of a frame with `columns`: `features` (in that order), or every column but the
    target, `id_column` and `drop` (in frame order). DataError naming a column that is not in the frame."""
    named = {
        "features": list(features or ()),
        "drop": list(drop),
        "id_column": [id_column] if id_column else [],
    }
    for name, wanted in named.items():
        if missing := [c for c in wanted if c not in columns]:
            raise DataError(
                f"Argument `{name}` names columns that are not in the data: {missing}. Available: {list(columns)}"
            )
    excluded = {target, id_column, *drop}
    return [c for c in (features if features is not None else columns) if c not in excluded]


def suspicious_features(frame: pd.DataFrame, features: list[str]) -> list[str]:
    """Warnings about numeric feature columns of a raw frame `[B, *]` (in source row order) that look like row
    identifiers: integer-valued and unique per row, or monotone in row order (a row number or timestamp; on a
    file sorted by class it leaks the label). One message per column, naming the setting that excludes it."""
    found = []
    for column in features:
        values = frame[column]
        if len(values) < 2 or not _is_numeric(values) or pd.api.types.is_bool_dtype(values):
            continue
        numbers = values.to_numpy(dtype=np.float64)  # (B,)
        if np.all(np.mod(numbers, 1) == 0) and values.nunique() == len(values):
            reason = "is integer-valued and unique per row"
        elif values.nunique() > 1 and (values.is_monotonic_increasing or values.is_monotonic_decreasing):
            reason = "is monotone in row order (on a file sorted by class it leaks the label)"
        else:
            continue
        found.append(
            f"Feature {column!r} {reason}: it looks like a row ID but is used as a feature. Name it in "
            "`data.id_column` or `data.drop` if it identifies rows."
        )
    return found


def validate_frame(
    frame: pd.DataFrame,
    target: str,
    features: tuple[str, ...] | None = None,
    drop: tuple[str, ...] = (),
    id_column: str | None = None,
) -> list[str]:
    """Checks a raw frame `[B, *]` before anything is fitted; raises DataError naming what to fix.

    Returns:
        The feature columns (see `feature_columns` for `features`, `drop` and `id_column`).
    """
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"Expected a pandas DataFrame. Received: {type(frame).__name__}")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise DataError(f"The data frame is empty (shape {frame.shape}).")
    if bad_names := [c for c in frame.columns if not isinstance(c, str)]:
        raise DataError(f"Column names must be strings. Received: {bad_names}")
    if duplicated := sorted(set(frame.columns[frame.columns.duplicated()])):
        raise DataError(f"Duplicate column names: {duplicated}.")
    _check_target_column(target, list(frame.columns))
    features = feature_columns(list(frame.columns), target, features, drop, id_column)
    if not features:
        raise DataError(
            f"No feature columns: the frame has only the target column {target!r} and the columns excluded by "
            f"`drop`/`id_column`. Columns: {list(frame.columns)}"
        )
    _feature_matrix(frame, features)
    y = frame[target]
    if _is_numeric(y) and not pd.api.types.is_bool_dtype(y):
        bad = int((~np.isfinite(y.to_numpy(dtype=np.float64, na_value=np.nan))).sum())
    else:
        bad = int(y.isna().sum())
    if bad:
        raise DataError(f"Target column {target!r} has {bad} rows with NaN or inf; drop them.")
    return features


def _classes_of(y: pd.Series) -> list:
    """Sorted distinct values of `y` `[B]` as JSON-safe Python scalars; DataError if fewer than 2."""
    values = [v.item() if isinstance(v, np.generic) else v for v in y.dropna().unique()]
    try:
        values = sorted(values)
    except TypeError:  # mixed types
        values = sorted(values, key=repr)
    if len(values) < 2:
        raise DataError(f"Target column {y.name!r} has a single class {values[:1]}; need at least 2 classes.")
    return values


def infer_task(y: pd.Series, max_classes: int = 50) -> TaskType:
    """Infers the task from a target column `[B]`.

    Two distinct values -> binary. Non-float (string, bool, categorical) targets, or integer-like values with
    at most `max_classes` distinct values -> multiclass. Floats with a fractional part, or more than
    `max_classes` distinct integers -> regression.
    """
    y = pd.Series(y)
    n = len(_classes_of(y))
    if n == 2 or not _is_numeric(y) or pd.api.types.is_bool_dtype(y):
        return "binary" if n == 2 else "multiclass"
    values = y.dropna().to_numpy(dtype=np.float64)
    if pd.api.types.is_float_dtype(y) and not np.all(np.mod(values, 1) == 0):
        return "regression"
    return "multiclass" if n <= max_classes else "regression"


def _check_task(y: pd.Series, task: TaskType) -> TaskType:
    """Checks an explicitly configured task against the target `[B]`."""
    classes = _classes_of(y)
    if task == "regression" and (not _is_numeric(y) or pd.api.types.is_bool_dtype(y)):
        raise DataError(f"task='regression' needs a numeric target; {y.name!r} has dtype {y.dtype}.")
    if task == "binary" and len(classes) != 2:
        raise DataError(f"task='binary' needs 2 classes; {y.name!r} has {len(classes)}. Use 'multiclass'.")
    return task


def _encode(classes: list, y: pd.Series | np.ndarray) -> np.ndarray:
    """Labels `[B]` -> int32 class indices `[B]` in `0..C-1`; DataError naming unknown labels."""
    labels = np.asarray(y, dtype=object)
    codes = pd.Index(classes, dtype=object).get_indexer(labels)  # (B,), -1 where unknown
    if (codes < 0).any():
        unknown = list(dict.fromkeys(labels[codes < 0].tolist()))[:10]
        raise DataError(f"Unknown labels {unknown} (not seen in training). Known classes: {classes}")
    return codes.astype(np.int32)


@dataclass(eq=False)
class Preprocessor:
    """Prediction-time transform: feature selection and standardisation, label encoding. JSON-serialisable.

    Attributes:
        feature_names: the `d` feature columns, in model order.
        target: the target column name.
        task: `"binary"`, `"multiclass"` or `"regression"`.
        classes: the `C` sorted original label values, or None for regression.
        mean: `[d]` float32 train means (zeros if not standardising).
        scale: `[d]` float32 train standard deviations with 0 replaced by 1 (ones if not standardising).
        id_column: the column that identifies rows (never a feature), or None.
    """

    feature_names: list[str]
    target: str
    task: TaskType
    classes: list | None
    mean: np.ndarray
    scale: np.ndarray
    id_column: str | None = None

    def __post_init__(self) -> None:
        self.mean = np.asarray(self.mean, dtype=np.float32)
        self.scale = np.asarray(self.scale, dtype=np.float32)
        d = len(self.feature_names)
        assert self.mean.shape == (d,) and self.scale.shape == (d,), (self.mean.shape, self.scale.shape, d)
        assert (self.classes is None) == (self.task == "regression"), (self.task, self.classes)

    @classmethod
    def fit(
        cls,
        train: pd.DataFrame,
        target: str,
        task: TaskType,
        classes: list | None,
        standardize: bool = True,
        id_column: str | None = None,
    ) -> Preprocessor:
        """Fits the standardisation on the raw train split `[n_train, d + 1]` only; every column but the target
        and `id_column` is a feature."""
        names = [c for c in train.columns if c not in (target, id_column)]
        x = _feature_matrix(train, names)  # (n_train, d)
        mean = x.mean(axis=0) if standardize else np.zeros(len(names))  # (d,)
        scale = x.std(axis=0).astype(np.float32) if standardize else np.ones(len(names), np.float32)
        scale[~(scale > 0) | ~np.isfinite(scale)] = 1.0
        return cls(names, target, task, classes, mean, scale, id_column)

    @property
    def num_classes(self) -> int:
        return 0 if self.classes is None else len(self.classes)

    @property
    def num_outputs(self) -> int:
        return self.num_classes if self.task == "multiclass" else 1

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Raw frame `[B, *]` -> standardised features `[B, d]` float32, columns in `feature_names` order.

        Extra columns (e.g. the target) are ignored; missing, non-numeric or NaN/inf features raise DataError.
        """
        if not isinstance(frame, pd.DataFrame):
            raise DataError(f"Expected a pandas DataFrame. Received: {type(frame).__name__}")
        if missing := [c for c in self.feature_names if c not in frame.columns]:
            raise DataError(f"Missing feature columns {missing}. Expected columns: {self.feature_names}")
        x = _feature_matrix(frame, self.feature_names)  # (B, d) float64
        return ((x - self.mean.astype(np.float64)) / self.scale.astype(np.float64)).astype(np.float32)

    def encode_labels(self, y: pd.Series | np.ndarray) -> np.ndarray:
        """Labels `[B]` -> int32 class indices `[B]` (classification) or float32 values `[B]` (regression)."""
        return _encode(self.classes, y) if self.classes is not None else np.asarray(y, dtype=np.float32)

    def decode_labels(self, idx: np.ndarray) -> np.ndarray:
        """Class indices `[B]` -> original label values `[B]`; regression values pass through."""
        idx = np.asarray(idx)
        if self.classes is None:
            return idx
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_classes):
            raise ValueError(f"Argument `idx` must be in [0, {self.num_classes}). Received: idx={idx}")
        return np.asarray(self.classes)[idx]

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "mean": self.mean.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessor:
        fields = dataclasses.fields(cls)
        required = [f.name for f in fields if f.default is dataclasses.MISSING]
        if missing := [k for k in required if k not in d]:
            raise DataError(f"Preprocessor metadata lacks the keys {missing}. Received keys: {sorted(d)}")
        return cls(**{f.name: d[f.name] for f in fields if f.name in d})


@dataclass(eq=False)
class PreparedData:
    """Standardised, encoded train/val/test arrays and the preprocessor that made them.

    `x_*` are `[n_split, d]` float32; `y_*` are `[n_split]` int32 class indices (classification) or float32
    targets (regression). `raw` holds the raw split frames `[n_split, d + 1]` (plus the ID column, if any) that
    `save` writes. `warnings` are `suspicious_features` messages about the source, for the log and the run.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    preprocessor: Preprocessor
    config: DataConfig
    raw: dict[str, pd.DataFrame] | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)

    feature_names = property(lambda self: self.preprocessor.feature_names)
    task = property(lambda self: self.preprocessor.task)
    num_classes = property(lambda self: self.preprocessor.num_classes)
    num_outputs = property(lambda self: self.preprocessor.num_outputs)
    num_features = property(lambda self: len(self.preprocessor.feature_names))

    @classmethod
    def from_frames(
        cls,
        frames: dict[str, pd.DataFrame],
        preprocessor: Preprocessor,
        config: DataConfig,
        warnings: list[str] | None = None,
    ) -> PreparedData:
        """Applies `preprocessor` to the raw `train`/`val`/`test` frames `[n_split, d + 1]`."""
        arrays = {}
        for name in _SPLITS:
            arrays[f"x_{name}"] = preprocessor.transform(frames[name])  # (n_split, d)
            arrays[f"y_{name}"] = preprocessor.encode_labels(frames[name][preprocessor.target])  # (n_split,)
        return cls(
            **arrays, preprocessor=preprocessor, config=config, raw=frames, warnings=list(warnings or [])
        )

    def save(self, directory: str | Path) -> dict[str, Path]:
        """Writes `{train,val,test}.parquet` (raw features + original target) and `metadata.json`."""
        if self.raw is None:
            raise DataError(
                "This PreparedData has no raw split frames to save; build it with `prepare_data`."
            )
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = {name: directory / f"{name}.parquet" for name in _SPLITS}
        for name, path in paths.items():
            self.raw[name].to_parquet(path, engine="pyarrow", index=False)
        rows = {name: len(self.raw[name]) for name in _SPLITS}
        metadata = {
            **self.preprocessor.to_dict(),
            "config": self.config.get_config(),
            "rows": rows,
            "warnings": self.warnings,
        }
        paths["metadata"] = directory / "metadata.json"
        paths["metadata"].write_text(json.dumps(metadata, indent=2))
        return paths

    @classmethod
    def load(cls, directory: str | Path) -> PreparedData:
        """Reads what `save` wrote and re-applies the stored preprocessor (no refitting)."""
        directory = Path(directory)
        for path in [directory / "metadata.json", *(directory / f"{n}.parquet" for n in _SPLITS)]:
            if not path.is_file():
                raise DataError(f"Prepared data file not found: {path}")
        metadata = json.loads((directory / "metadata.json").read_text())
        frames = {name: pd.read_parquet(directory / f"{name}.parquet", engine="pyarrow") for name in _SPLITS}
        return cls.from_frames(
            frames,
            Preprocessor.from_dict(metadata),
            DataConfig(**metadata["config"]),
            metadata.get("warnings", []),
        )


def _split_sizes(n: int, config: DataConfig) -> tuple[int, int, int]:
    """(n_train, n_val, n_test) as `train_test_split` computes them (held-out sizes rounded up)."""
    if config.train_rows is not None:
        rest = max(n - config.train_rows, 0)
        n_test = math.ceil(config.test_fraction / (config.val_fraction + config.test_fraction) * rest)
        return config.train_rows, rest - n_test, n_test
    n_test = math.ceil(config.test_fraction * n)
    n_val = math.ceil(config.val_fraction / (1 - config.test_fraction) * (n - n_test))
    return n - n_test - n_val, n_val, n_test


def _split_indices(n: int, codes: np.ndarray | None, classes: list | None, config: DataConfig) -> dict:
    """Row indices per split, stratified by class codes `[B]` (classification); DataError if too few rows."""
    per_split, head = len(classes or [None]), config.train_rows or 0
    if config.train_rows is not None and config.train_rows < per_split:
        raise DataError(f"Argument `train_rows` must be >= {per_split} (one row per class). Received: {head}")
    if min(_split_sizes(n, config)) < per_split:
        needed = next(m for m in itertools.count(n + 1) if min(_split_sizes(m, config)) >= per_split)
        raise DataError(
            f"Too few rows to split: the data has {n} rows; at least {needed} are needed for >= {per_split} "
            f"row(s) per split with val_fraction={config.val_fraction}, "
            f"test_fraction={config.test_fraction}, train_rows={config.train_rows}."
        )
    if codes is not None:  # stratified draws need >= 2 rows per class per draw
        counts, need = np.bincount(codes[head:], minlength=per_split), 3 if head == 0 else 2
        if counts.min() < need:
            label = classes[int(counts.argmin())]
            raise DataError(
                f"Class {label!r} has {counts.min()} rows to split; need >= {need}, one per split."
            )

    def split(rows: np.ndarray, size: float) -> list[np.ndarray]:
        strata = None if codes is None else codes[rows]
        from sklearn.model_selection import train_test_split

        return train_test_split(rows, test_size=size, random_state=config.seed, stratify=strata)

    index = np.arange(n)
    if config.train_rows is None:
        rest, test = split(index, config.test_fraction)
        train, val = split(rest, config.val_fraction / (1 - config.test_fraction))
    else:
        train = index[:head]
        val, test = split(index[head:], config.test_fraction / (config.val_fraction + config.test_fraction))
    splits = {"train": train, "val": val, "test": test}
    for name, rows in splits.items():
        if codes is not None and (absent := sorted(set(range(per_split)) - set(codes[rows].tolist()))):
            label = classes[absent[0]]
            raise DataError(
                f"Class {label!r} has no rows in the {name} split; add rows or change the fractions."
            )
    return splits


def prepare_data(config: DataConfig, frame: pd.DataFrame | None = None) -> PreparedData:
    """Loads (unless `frame` is given), validates, infers the task, splits, fits standardisation, encodes.

    Args:
        config: the data configuration.
        frame: optional raw frame `[B, d + 1]` used instead of `config.source`.

    Returns:
        PreparedData with `x_*` `[n_split, d]` float32 and `y_*` `[n_split]` labels.
    """
    if frame is None:
        frame, target = load_frame(config.source, config.target)
    else:
        target = config.target or "target"
    features = validate_frame(frame, target, config.features, config.drop, config.id_column)
    ids = [config.id_column] if config.id_column else []
    frame = frame[[*features, target, *ids]].reset_index(drop=True)
    y = frame[target]
    task = infer_task(y, config.max_classes) if config.task == "auto" else _check_task(y, config.task)
    classes = None if task == "regression" else _classes_of(y)
    codes = None if classes is None else _encode(classes, y)  # (B,)
    splits = _split_indices(len(frame), codes, classes, config)
    frames = {name: frame.iloc[rows].reset_index(drop=True) for name, rows in splits.items()}
    preprocessor = Preprocessor.fit(
        frames["train"], target, task, classes, config.standardize, config.id_column
    )
    return PreparedData.from_frames(frames, preprocessor, config, suspicious_features(frame, features))


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's content; for a bundled name, of the name and the scikit-learn version."""
    if str(path) in BUNDLED_DATASETS:
        import sklearn

        return hashlib.sha256(f"{path}:scikit-learn=={sklearn.__version__}".encode()).hexdigest()
    path = _data_file(str(path))  # the same DataError as loading it would give
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
