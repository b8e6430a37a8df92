"""The synthetic dataset: reproducible, in range, plausible, and loaded with clear errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mlcanary.cli import app
from training.dataset import (
    COLUMNS,
    DEFAULT_PATH,
    FEATURES,
    TARGET,
    load_dataset,
    render_csv,
)
from training.errors import TrainingError


def _frame() -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(render_csv()))


def test_generator_is_byte_for_byte_reproducible() -> None:
    """The same seed gives the same bytes, and those are the committed file's bytes."""
    assert render_csv() == render_csv()
    assert render_csv() == DEFAULT_PATH.read_bytes()


def test_another_seed_gives_other_data() -> None:
    """The seed really drives the generator."""
    assert render_csv(seed=7) != render_csv(seed=42)


def test_generate_data_command_writes_the_committed_bytes(tmp_path: Path) -> None:
    """`mlcanary generate-data` writes exactly the packaged dataset for the default seed."""
    output = tmp_path / "data.csv"
    result = CliRunner().invoke(app, ["generate-data", "--output", str(output)])
    assert result.exit_code == 0, result.output
    assert output.read_bytes() == DEFAULT_PATH.read_bytes()


def test_columns_and_ranges_follow_the_public_schema() -> None:
    """At least 200 rows, the six columns, ids S001.., and the documented value ranges."""
    frame = _frame()
    assert tuple(frame.columns) == COLUMNS
    assert len(frame) >= 200
    assert frame["student_id"].is_unique
    assert frame["student_id"].iloc[0] == "S001"
    assert frame["hours_studied"].between(1, 12).all()
    assert frame["sleep_hours"].between(4, 9).all()
    assert frame["attendance_percent"].between(50, 100).all()
    assert frame["previous_scores"].between(40, 95).all()
    assert frame["previous_scores"].dtype.kind == "i"
    assert frame[TARGET].between(15, 55).all()
    assert 30 <= frame[TARGET].mean() <= 38


def test_study_attendance_and_previous_scores_raise_the_exam_score() -> None:
    """A least-squares fit gives positive weights to study, attendance and previous scores."""
    frame = _frame()
    design = np.column_stack([frame[list(FEATURES)].to_numpy(), np.ones(len(frame))])
    weights, *_ = np.linalg.lstsq(design, frame[TARGET].to_numpy(), rcond=None)
    by_feature = dict(zip(FEATURES, weights, strict=False))
    assert by_feature["hours_studied"] > 1.0
    assert by_feature["attendance_percent"] > 0.0
    assert by_feature["previous_scores"] > 0.0
    residual = frame[TARGET] - design @ weights
    assert 1.5 < residual.std() < 5.0  # noisy, not a formula


def test_the_loader_reads_features_as_floats() -> None:
    """Every feature and the target load as float64, so signatures accept ints and floats."""
    frame = load_dataset(DEFAULT_PATH)
    assert all(frame[column].dtype == "float64" for column in (*FEATURES, TARGET))


GOOD_HEADER = ",".join(COLUMNS)
GOOD_ROW = "S001,6.5,7.0,90.0,85,40.1"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "dataset not found"),
        (b"", "is empty"),
        (f'{GOOD_HEADER}\n"S001,6.5,7.0,90.0,85,40.1\n'.encode(), "not valid CSV"),
        (f"{GOOD_HEADER}\n{GOOD_ROW}\n{GOOD_ROW},1,2,3\n".encode(), "not valid CSV"),
        (b"\xff\xfe\x00\x81garbage\x00\n\x9f", "not valid CSV"),
        (
            ("student_id,hours_studied,sleep_hours,exam_score\n" + "S1,1,2,3\n" * 30).encode(),
            "lacks column(s): attendance_percent, previous_scores",
        ),
        (
            (f"{GOOD_HEADER}\n" + f"{GOOD_ROW}\n" * 25 + "S026,six,7.0,90.0,85,40.1\n").encode(),
            "column 'hours_studied' needs numbers; line 27 has 'six'",
        ),
        (f"{GOOD_HEADER}\n{GOOD_ROW}\n".encode(), "training needs at least"),
    ],
    ids=["missing", "empty", "open-quote", "ragged", "binary", "no-column", "text", "too-few"],
)
def test_bad_datasets_are_refused_with_a_reason(
    tmp_path: Path, content: bytes | None, expected: str
) -> None:
    """Each kind of bad CSV raises TrainingError with a message naming the problem."""
    path = tmp_path / "data.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(TrainingError) as raised:
        load_dataset(path)
    assert expected in str(raised.value)
    assert str(path) in str(raised.value)
