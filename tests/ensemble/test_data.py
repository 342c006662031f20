import json

import numpy as np
import pandas as pd
import pytest
from sklearn.preprocessing import StandardScaler

from ensemble.data import (
    BUNDLED_DATASETS,
    DataConfig,
    DataError,
    PreparedData,
    Preprocessor,
    check_source,
    file_sha256,
    infer_task,
    load_frame,
    prepare_data,
    validate_frame,
)


def make_frame(n: int = 300, labels=("a", "b", "c"), weights=(0.6, 0.3, 0.1), seed: int = 0) -> pd.DataFrame:
    """Three numeric features (different scales) and an imbalanced string label."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "f0": rng.normal(5.0, 2.0, n),
            "f1": rng.integers(0, 100, n),
            "f2": rng.normal(-1.0, 0.1, n),
            "label": rng.choice(np.asarray(labels, dtype=object), size=n, p=weights),
        }
    )


def prepare(frame: pd.DataFrame, **kwargs) -> PreparedData:
    return prepare_data(DataConfig(target=kwargs.pop("target", "label"), **kwargs), frame=frame)


# --- config ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"val_fraction": 0.0}, r"`val_fraction` must be a float in \(0, 1\). Received: val_fraction=0.0"),
        ({"test_fraction": 1.5}, r"Argument `test_fraction` must be .* Received: test_fraction=1.5"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, r"`val_fraction` \+ `test_fraction` must be < 1"),
        ({"max_classes": 1}, r"Argument `max_classes` must be an integer >= 2. Received: max_classes=1"),
        ({"task": "clustering"}, r"Argument `task` must be one of .* Received: task='clustering'"),
        ({"seed": -1}, r"Received: seed=-1"),
        ({"train_rows": 0}, r"Argument `train_rows` must be an integer >= 1 or None. Received: train_rows=0"),
        ({"source": ""}, r"Argument `source` must be"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DataConfig(**kwargs)


def test_config_get_config_round_trip():
    config = DataConfig(source="wine", val_fraction=0.2, seed=3, train_rows=50)
    assert DataConfig(**config.get_config()) == config
    assert json.loads(json.dumps(config.get_config())) == config.get_config()


# --- loading -----------------------------------------------------------------------------------------------


def test_blobs_has_1100_rows_2_features_3_classes():
    frame, target = load_frame("blobs")
    assert target == "target"
    assert frame.shape == (1100, 3)
    assert list(frame.columns) == ["x0", "x1", "target"]
    data = prepare_data(DataConfig(source="blobs"))
    assert (data.task, data.num_classes, data.num_outputs, data.num_features) == ("multiclass", 3, 3, 2)


def test_bundled_feature_names_are_sanitised_strings():
    frame, _ = load_frame("breast_cancer")
    assert "mean_radius" in frame.columns
    assert all(isinstance(c, str) and " " not in c for c in frame.columns)
    assert infer_task(frame["target"]) == "binary"


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".pq"])
def test_load_frame_reads_files(tmp_path, suffix):
    frame = make_frame(50)
    path = tmp_path / f"data{suffix}"
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path, index=False)
    loaded, target = load_frame(str(path), "label")
    assert target == "label"
    pd.testing.assert_frame_equal(loaded, frame, check_dtype=False)


def test_load_frame_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.csv"
    with pytest.raises(DataError, match=r"Data file not found: .*nope\.csv"):
        load_frame(str(path), "label")


def test_load_frame_unsupported_extension(tmp_path):
    path = tmp_path / "data.xlsx"
    path.write_text("x")
    with pytest.raises(DataError, match=r"Unsupported file extension '\.xlsx'"):
        load_frame(str(path), "label")


def test_load_frame_unknown_bundled_name_lists_available():
    with pytest.raises(DataError, match=r"Unknown bundled data set 'digitz'. Available: .*'breast_cancer'"):
        load_frame("digitz")


def test_load_frame_file_without_target_lists_columns(tmp_path):
    path = tmp_path / "data.csv"
    make_frame(20).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"Argument `target` is required .* Available columns: \['f0', 'f1'"):
        load_frame(str(path))


def header_only_file(tmp_path, suffix: str, **columns) -> str:
    """A file of `make_frame` rows, with `columns` replaced (e.g. strings or NaN in a feature)."""
    frame = make_frame(20).assign(**columns)
    path = tmp_path / f"data{suffix}"
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path, index=False)
    return str(path)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
@pytest.mark.parametrize(
    ("columns", "match"),
    [
        ({"f0": "not a number"}, r"Feature columns must be numeric; .* \{'f0': 'object'\}"),
        ({"f2": np.nan}, r"Feature columns with NaN or inf values \(column: bad rows\): \{'f2': 20\}"),
        ({"label": np.nan}, r"Target column 'label' has 20 rows with NaN or inf"),
    ],
)
def test_check_source_rejects_what_the_rows_show_with_the_loaders_message(tmp_path, suffix, columns, match):
    with pytest.raises(DataError, match=match):
        check_source(header_only_file(tmp_path, suffix, **columns), "label")


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_check_source_accepts_rows_the_options_leave_out(tmp_path, suffix):
    path = header_only_file(tmp_path, suffix, f2=np.nan, f0="an id, not a feature")
    check_source(path, "label", drop=("f2",), id_column="f0")


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
@pytest.mark.parametrize(
    ("target", "columns", "match"),
    [
        ("nope", {}, r"Target column 'nope' not found. Available columns: \['f0', 'f1', 'f2', 'label'\]"),
        (None, {}, r"Argument `target` is required"),
        ("label", {"features": ("f0", "zz")}, r"Argument `features` names columns .* \['zz'\]"),
        ("label", {"drop": ("yy",)}, r"Argument `drop` names columns .* \['yy'\]"),
        ("label", {"id_column": "id"}, r"Argument `id_column` names columns .* \['id'\]"),
    ],
)
def test_check_source_rejects_what_the_header_shows_with_the_loaders_message(
    tmp_path, suffix, target, columns, match
):
    with pytest.raises(DataError, match=match):
        check_source(header_only_file(tmp_path, suffix), target, **columns)


def test_check_source_rejects_a_missing_file_an_unknown_name_and_a_bundled_set_without_the_target(tmp_path):
    with pytest.raises(DataError, match=r"Data file not found: .*nope\.csv"):
        check_source(str(tmp_path / "nope.csv"), "label")
    with pytest.raises(DataError, match=r"Unknown bundled data set 'digitz'"):
        check_source("digitz")
    with pytest.raises(DataError, match=r"Target column 'label' not found"):
        check_source("wine", "label")
    check_source("wine")  # the bundled sets' target is "target"


def test_file_sha256_tracks_content(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b\n1,2\n")
    first = file_sha256(path)
    path.write_text("a,b\n1,3\n")
    assert file_sha256(path) != first
    assert file_sha256("digits") == file_sha256("digits") != file_sha256("wine")
    with pytest.raises(DataError, match="missing.csv"):
        file_sha256(tmp_path / "missing.csv")


# --- validation --------------------------------------------------------------------------------------------


def test_unknown_target_column_lists_available():
    with pytest.raises(DataError, match=r"column 'y' not found. Available columns: \['f0', 'f1', 'f2'"):
        validate_frame(make_frame(20), "y")


def test_non_numeric_feature_is_named():
    frame = make_frame(20).assign(colour="red")
    with pytest.raises(DataError, match=r"must be numeric.*'colour': 'object'"):
        validate_frame(frame, "label")


def test_nan_in_feature_names_column_and_count():
    frame = make_frame(20)
    frame.loc[[1, 4], "f0"] = np.nan
    frame.loc[7, "f2"] = np.inf
    with pytest.raises(DataError, match=r"NaN or inf .*\{'f0': 2, 'f2': 1\}"):
        validate_frame(frame, "label")


def test_nan_in_target_names_column_and_count():
    frame = make_frame(20)
    frame.loc[[0, 3, 5], "label"] = None
    with pytest.raises(DataError, match=r"Target column 'label' has 3 rows with NaN"):
        validate_frame(frame, "label")


def test_empty_frame():
    with pytest.raises(DataError, match=r"empty"):
        validate_frame(make_frame(20).iloc[:0], "label")


def test_single_class_is_named():
    with pytest.raises(DataError, match=r"'label' has a single class \['a'\]; need at least 2 classes"):
        prepare(make_frame(50, labels=("a",), weights=(1.0,)))


def test_too_few_rows_says_how_many_are_needed():
    frame = make_frame(15).assign(label=["a", "b", "c"] * 5)
    with pytest.raises(DataError, match=r"has 9 rows; at least 15 are needed for >= 3 row\(s\) per split"):
        prepare(frame.iloc[:9])
    data = prepare(frame)  # the stated minimum is enough: every class in every split
    assert all(len(np.unique(y)) == 3 for y in (data.y_train, data.y_val, data.y_test))


def test_rare_class_is_named():
    frame = make_frame(100, labels=("a", "b"), weights=(0.5, 0.5))
    frame.loc[0, "label"] = "rare"
    with pytest.raises(DataError, match=r"Class 'rare' has 1 rows to split; need >= 3"):
        prepare(frame)


def test_explicit_task_is_checked_against_target():
    with pytest.raises(DataError, match=r"task='binary' needs 2 classes; 'label' has 3"):
        prepare(make_frame(), task="binary")
    with pytest.raises(DataError, match=r"task='regression' needs a numeric target; 'label' has dtype obj"):
        prepare(make_frame(), task="regression")


# --- task inference ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, expected",
    [
        ([0, 1, 1, 0], "binary"),
        ([True, False, True], "binary"),
        (["cat", "dog", "dog"], "binary"),
        ([0.0, 1.0, 0.0], "binary"),
        ([1, 2, 3, 2], "multiclass"),
        ([1.0, 2.0, 3.0], "multiclass"),
        (["a", "b", "c"], "multiclass"),
        (pd.Categorical(["lo", "mid", "hi"]), "multiclass"),
        ([0.5, 1.25, 3.0], "regression"),
        (list(range(51)), "regression"),
    ],
)
def test_infer_task(values, expected):
    assert infer_task(pd.Series(values, name="y")) == expected


def test_infer_task_max_classes_threshold():
    y = pd.Series(range(10), name="y")
    assert infer_task(y, max_classes=10) == "multiclass"
    assert infer_task(y, max_classes=9) == "regression"


# --- splitting and standardisation -------------------------------------------------------------------------


def test_split_sizes_and_stratification_preserve_class_proportions():
    frame = make_frame(1000)
    data = prepare(frame)
    sizes = [len(data.y_train), len(data.y_val), len(data.y_test)]
    assert sum(sizes) == 1000 and sizes == [700, 150, 150]
    overall = frame["label"].value_counts(normalize=True).sort_index().to_numpy()
    for y in (data.y_train, data.y_val, data.y_test):
        assert y.dtype == np.int32
        np.testing.assert_allclose(np.bincount(y, minlength=3) / len(y), overall, atol=0.01)


def test_split_is_reproducible_per_seed():
    frame = make_frame(200)
    a, b, c = prepare(frame, seed=1), prepare(frame, seed=1), prepare(frame, seed=2)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.raw["test"]["f0"], c.raw["test"]["f0"])


def test_standardisation_is_fit_on_train_only():
    data = prepare(make_frame(500))
    np.testing.assert_allclose(data.x_train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(data.x_train.std(axis=0), 1.0, atol=1e-5)
    assert not np.allclose(data.x_val.mean(axis=0), 0.0, atol=1e-5)
    reference = StandardScaler().fit(data.raw["train"][data.feature_names])  # slow obvious reference
    expected = reference.transform(data.raw["val"][data.feature_names])
    np.testing.assert_allclose(data.x_val, expected, rtol=1e-5, atol=1e-5)


def test_constant_feature_gets_unit_scale_and_standardize_false_is_identity():
    frame = make_frame(100).assign(const=3.0)
    data = prepare(frame)
    assert data.preprocessor.scale[data.feature_names.index("const")] == 1.0
    raw = prepare(frame, standardize=False)
    np.testing.assert_array_equal(raw.x_train, raw.raw["train"][raw.feature_names].to_numpy(np.float32))


def test_train_rows_takes_the_first_rows_in_order():
    data = prepare_data(DataConfig(source="blobs", train_rows=100))
    frame, _ = load_frame("blobs")
    pd.testing.assert_frame_equal(data.raw["train"], frame.iloc[:100])
    assert (len(data.y_val), len(data.y_test)) == (500, 500)
    rest = pd.concat([data.raw["val"], data.raw["test"]]).sort_values("x0").reset_index(drop=True)
    pd.testing.assert_frame_equal(rest, frame.iloc[100:].sort_values("x0").reset_index(drop=True))


def test_regression_target_is_float32_with_one_output():
    frame = make_frame(100).assign(label=lambda f: f["f0"] * 0.5 + 0.25)
    data = prepare(frame)
    assert (data.task, data.num_classes, data.num_outputs) == ("regression", 0, 1)
    assert data.y_train.dtype == np.float32


# --- persistence and prediction-time transform -------------------------------------------------------------


def test_save_load_round_trip_is_exact(tmp_path):
    data = prepare(make_frame(200), seed=5)
    paths = data.save(tmp_path / "prepared")
    assert {p.name for p in paths.values()} == {
        "metadata.json",
        "test.parquet",
        "train.parquet",
        "val.parquet",
    }
    assert set(pd.read_parquet(paths["train"]).columns) == {"f0", "f1", "f2", "label"}
    metadata = json.loads(paths["metadata"].read_text())
    assert metadata["classes"] == ["a", "b", "c"] and metadata["config"]["seed"] == 5
    loaded = PreparedData.load(tmp_path / "prepared")
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(data, name))
        assert getattr(loaded, name).dtype == getattr(data, name).dtype
    assert loaded.config == data.config
    assert loaded.preprocessor.to_dict() == data.preprocessor.to_dict()


def test_load_missing_directory_names_the_file(tmp_path):
    with pytest.raises(DataError, match=r"Prepared data file not found: .*metadata\.json"):
        PreparedData.load(tmp_path)


def test_preprocessor_json_round_trip():
    data = prepare(make_frame(100))
    restored = Preprocessor.from_dict(json.loads(json.dumps(data.preprocessor.to_dict())))
    frame = data.raw["test"]
    np.testing.assert_array_equal(restored.transform(frame), data.preprocessor.transform(frame))
    assert restored.mean.dtype == np.float32 and restored.classes == ["a", "b", "c"]


def test_transform_reorders_columns_and_ignores_extras():
    data = prepare(make_frame(100))
    frame = data.raw["test"]
    shuffled = frame[["label", "f2", "f0", "f1"]].assign(extra=1.0)
    np.testing.assert_array_equal(data.preprocessor.transform(shuffled), data.x_test)


def test_transform_missing_column_is_an_error():
    data = prepare(make_frame(100))
    with pytest.raises(DataError, match=r"Missing feature columns \['f1'\]"):
        data.preprocessor.transform(data.raw["test"].drop(columns=["f1"]))


def test_transform_non_numeric_value_names_the_column():
    data = prepare(make_frame(100))
    frame = data.raw["test"].astype({"f2": object})
    frame.loc[0, "f2"] = "oops"
    with pytest.raises(DataError, match=r"must be numeric.*'f2'"):
        data.preprocessor.transform(frame)


def test_labels_encode_decode_and_unknown_label_is_named():
    data = prepare(make_frame(100))
    pre = data.preprocessor
    np.testing.assert_array_equal(pre.decode_labels(data.y_test), data.raw["test"]["label"].to_numpy())
    np.testing.assert_array_equal(pre.encode_labels(["c", "a"]), np.array([2, 0], np.int32))
    with pytest.raises(DataError, match=r"Unknown labels \['z'\] .*Known classes: \['a', 'b', 'c'\]"):
        pre.encode_labels(["a", "z"])


@pytest.mark.parametrize("name", BUNDLED_DATASETS)
def test_bundled_sets_prepare(name):
    data = prepare_data(DataConfig(source=name))
    assert data.x_train.dtype == np.float32 and data.x_train.shape[1] == data.num_features
    assert len(data.y_train) + len(data.y_val) + len(data.y_test) == len(load_frame(name)[0])


# --- column selection -----------------------------------------------------------------------------------------


def sorted_by_class(n: int = 120) -> pd.DataFrame:
    """`make_frame` sorted by label, with a row number `row` (an ID that leaks the label) and a string `name`."""
    frame = make_frame(n).sort_values("label", kind="stable").reset_index(drop=True)
    return frame.assign(row=np.arange(n), name=[f"r{i}" for i in range(n)])


def test_a_numeric_row_id_used_as_a_feature_is_named_in_a_warning():
    data = prepare(sorted_by_class().drop(columns="name"))
    assert "row" in data.feature_names
    assert len(data.warnings) == 1 and "'row'" in data.warnings[0] and "data.drop" in data.warnings[0]
    monotone = prepare(sorted_by_class().drop(columns="name").assign(row=np.arange(120) // 2))
    assert len(monotone.warnings) == 1 and "monotone in row order" in monotone.warnings[0]
    assert prepare(make_frame(120)).warnings == []


def test_drop_and_id_column_keep_columns_out_of_the_features():
    data = prepare(sorted_by_class(), drop=("row",), id_column="name")  # a string ID needs no file edit
    assert data.feature_names == ["f0", "f1", "f2"] and data.warnings == []
    assert data.preprocessor.id_column == "name" and "name" in data.raw["test"].columns
    assert "row" not in data.raw["test"].columns


def test_features_selects_and_orders_the_feature_columns(tmp_path):
    data = prepare(sorted_by_class(), features=("f2", "f0"), id_column="name")
    assert data.feature_names == ["f2", "f0"] and data.x_train.shape[1] == 2
    data.save(tmp_path)
    loaded = PreparedData.load(tmp_path)
    assert loaded.feature_names == ["f2", "f0"] and loaded.preprocessor.id_column == "name"
    assert loaded.config == data.config and loaded.warnings == data.warnings


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"features": ("f0", "label")}, r"`target` and `features` both name the columns \['label'\]"),
        ({"features": ("f0",), "drop": ("f0",)}, r"`features` and `drop` both name the columns \['f0'\]"),
        ({"id_column": "f1", "drop": ("f1",)}, r"`id_column` and `drop` both name"),
        ({"features": ()}, r"`features` must be a non-empty list of column names or None"),
        ({"drop": ("f0", "f0")}, r"`drop` must not repeat a column"),
    ],
)
def test_column_roles_are_validated_with_the_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DataConfig(target="label", **kwargs)


def test_columns_that_are_not_in_the_data_are_named_with_the_available_ones():
    with pytest.raises(
        DataError, match=r"`drop` names columns that are not in the data: \['rows'\]. Available"
    ):
        prepare(sorted_by_class(), drop=("rows",), id_column="name")
    with pytest.raises(DataError, match=r"Feature columns must be numeric.*'name'"):
        prepare(sorted_by_class())  # a string column is not a feature: name it in `id_column` or `drop`
