"""Data preparation is cached on the data's content + config, and never hands out a directory that is gone."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pandas as pd
import pytest
from prefect import flow

from ensemble.data import PreparedData
from tasks.data import prepare_data_task
from tests.pipeline.helpers import tiny_config


@flow
def prepare(config):
    return prepare_data_task(config.data, config.output_dir, return_state=True)


def prepared(config) -> tuple[str, Path]:
    """(Prefect state name, prepared directory) of one `prepare-data` run."""
    state = prepare(config)
    return state.name, Path(state.result())


@pytest.mark.usefixtures("prefect_api")
def test_a_rerun_on_the_same_data_is_cached_and_deleted_files_are_prepared_again(tmp_path):
    config = tiny_config(tmp_path)
    _, first = prepared(config)
    assert (first / "metadata.json").is_file()
    names = [prepared(config)[0] for _ in range(2)]
    assert names[-1] == "Cached"  # the same data and config: not prepared again (the first run that finds
    # the files on disk stores the cache entry; the one that wrote them had no key: nothing to point at yet)

    for _ in range(2):  # deleted twice: each time the files come back, never a cached path to nothing
        shutil.rmtree(first)
        name, again = prepared(config)
        assert name != "Cached" and again == first and (again / "metadata.json").is_file()


@pytest.mark.usefixtures("prefect_api")
def test_changed_data_content_is_prepared_again(tmp_path):
    source = tmp_path / "rows.csv"
    source.write_text("a,b,label\n" + "".join(f"{i},{i % 7},{i % 2}\n" for i in range(60)))
    config = tiny_config(tmp_path, **{"data.source": str(source), "data.target": "label"})
    names = [prepared(config)[0] for _ in range(3)]
    assert names[-1] == "Cached"
    source.write_text("a,b,label\n" + "".join(f"{i},{i % 5},{i % 2}\n" for i in range(60)))
    assert prepared(config)[0] != "Cached"


@pytest.mark.usefixtures("prefect_api")
def test_content_a_then_b_then_a_again_prepares_a(tmp_path):
    source = tmp_path / "rows.csv"
    content = {
        "A": "a,b,label\n" + "".join(f"{i},{i % 7},{i % 2}\n" for i in range(60)),
        "B": "a,b,label\n" + "".join(f"{-i},{i % 5},{i % 3 % 2}\n" for i in range(60)),
    }
    config = tiny_config(tmp_path, **{"data.source": str(source), "data.target": "label"})
    runs = []
    for version in "AABA":
        source.write_text(content[version])
        runs.append(prepared(config))
    assert runs[3][0] == "Cached" and runs[3][1] == runs[0][1] != runs[2][1]  # A's own folder, from the cache
    fourth = PreparedData.load(runs[3][1])
    rows = pd.concat(fourth.raw.values()).sort_values("a").reset_index(drop=True)
    expected = pd.read_csv(io.StringIO(content["A"])).sort_values("a").reset_index(drop=True)
    pd.testing.assert_frame_equal(rows, expected)
