"""The synthetic student-exam-scores dataset: a seeded generator and a validating loader."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING

from training.errors import TrainingError

if TYPE_CHECKING:
    import pandas as pd

ID_COLUMN = "student_id"
FEATURES = ("hours_studied", "sleep_hours", "attendance_percent", "previous_scores")
TARGET = "exam_score"
COLUMNS = (ID_COLUMN, *FEATURES, TARGET)

DEFAULT_ROWS = 200
DEFAULT_SEED = 42
MIN_TRAINING_ROWS = 20
DEFAULT_PATH = Path(__file__).parent / "data" / "student_exam_scores.csv"


def generate_rows(rows: int = DEFAULT_ROWS, seed: int = DEFAULT_SEED) -> list[list[str]]:
    """Return `rows` synthetic records as formatted strings, the same for the same seed."""
    if rows < 1:
        raise TrainingError(f"rows must be at least 1, got {rows}")
    import numpy as np

    rng = np.random.default_rng(seed)
    hours = np.round(rng.uniform(1.0, 12.0, rows), 1)
    sleep = np.round(rng.uniform(4.0, 9.0, rows), 1)
    attendance = np.round(rng.uniform(50.0, 100.0, rows), 1)
    previous = rng.integers(40, 96, rows)
    noise = rng.normal(0.0, 3.0, rows)
    # Study time matters most, then what a student already knew, then sleep and attendance.
    raw_score = 1.6 * hours + 0.8 * sleep + 0.08 * attendance + 0.18 * previous + noise
    score = np.round(np.clip(raw_score, 15.0, 55.0), 1)
    width = max(3, len(str(rows)))
    return [
        [
            f"S{i + 1:0{width}d}",
            f"{hours[i]:.1f}",
            f"{sleep[i]:.1f}",
            f"{attendance[i]:.1f}",
            f"{previous[i]:d}",
            f"{score[i]:.1f}",
        ]
        for i in range(rows)
    ]


def render_csv(rows: int = DEFAULT_ROWS, seed: int = DEFAULT_SEED) -> bytes:
    """Return the dataset as CSV bytes with a header and Unix line endings."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(generate_rows(rows, seed))
    return buffer.getvalue().encode("utf-8")


def write_dataset(path: Path, rows: int = DEFAULT_ROWS, seed: int = DEFAULT_SEED) -> Path:
    """Write the dataset to `path` atomically and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(render_csv(rows, seed))
    temporary.replace(path)
    return path


def load_dataset(path: Path) -> pd.DataFrame:
    """Read and validate a dataset CSV; raise TrainingError naming the first problem found."""
    import pandas as pd

    if not path.is_file():
        raise TrainingError(f"dataset not found: {path}")
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise TrainingError(f"dataset {path} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
        raise TrainingError(f"dataset {path} is not valid CSV: {first_line}") from None
    missing = [column for column in (*FEATURES, TARGET) if column not in frame.columns]
    if missing:
        raise TrainingError(f"dataset {path} lacks column(s): {', '.join(missing)}")
    for column in (*FEATURES, TARGET):
        numeric = pd.to_numeric(frame[column], errors="coerce")
        bad = frame.index[numeric.isna()]
        if len(bad):
            row = int(bad[0]) + 2  # 1-based, after the header line
            value = frame[column].iloc[int(bad[0])]
            raise TrainingError(
                f"dataset {path}: column {column!r} needs numbers; "
                f"line {row} has {value!r} ({len(bad)} bad value(s) in all)"
            )
        frame[column] = numeric.astype("float64")
    if len(frame) < MIN_TRAINING_ROWS:
        raise TrainingError(
            f"dataset {path} has {len(frame)} rows; training needs at least {MIN_TRAINING_ROWS}"
        )
    return frame
