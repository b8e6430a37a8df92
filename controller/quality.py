"""A labelled row against its answer, and the quality a variant's rows add up to.

A row's prediction is compared with its label as probabilities of classes when the answer is
such and names the label's class (log loss and accuracy), as numbers when both are (the
error), else as classes (right or wrong). `Quality` sums a variant's and version's rows into
MAE, RMSE, bias, accuracy and log loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from controller.answers import Answer

Label = float | str | bool
PROBABILITY_SUM_TOLERANCE = 1e-3
"""How far from 1 an answer's numbers may add up and still be read as probabilities (models
round, float32 sums drift)."""
PROBABILITY_FLOOR = 1e-15
"""The least probability log loss takes (scikit-learn's clip): a confident wrong answer costs
about 34.5, not infinity."""


@dataclass(frozen=True)
class LabelledRow:
    """One row's prediction against its label, in the order labels were taken."""

    variant: str
    version: str
    error: float
    """Prediction - label for numbers; for classes 1 when wrong, 0 when right."""
    classes: bool
    log_loss: float | None = None
    """-ln(the probability given to the label), when the row's answer was probabilities."""
    paired: LabelledRow | None = None
    """For a shadow answer's row: stable's row of the same request (the pair labels judge)."""

    @classmethod
    def of(cls, variant: str, version: str, predicted: Any, label: Label) -> LabelledRow:
        """Compare a row's answer with its label.

        As probabilities of classes when the answer is such and names the label, as numbers
        when both are, else as classes.
        """
        probabilities = probabilities_of(predicted, label)
        if probabilities is not None:
            given = probabilities.get(_class_name(label), 0.0)
            wrong = max(probabilities, key=probabilities.__getitem__) != _class_name(label)
            loss = -math.log(min(max(given, PROBABILITY_FLOOR), 1.0))
            return cls(variant, version, float(wrong), True, loss)
        predicted = _first_output(predicted)
        value = _number(predicted)
        if isinstance(label, bool | str) or value is None:
            wrong = _class_name(predicted) != _class_name(label)
            return cls(variant, version, float(wrong), True)
        return cls(variant, version, value - float(label), False)


def probabilities_of(row: Any, label: Any) -> dict[str, float] | None:
    """Return a row's answer as probabilities by class name, or None if it is not one.

    Two shapes are probabilities: an object of two or more classes' numbers (a model whose
    output columns are its classes), and a list of two or more numbers (`predict_proba`'s
    row, classes named by their position, so labels are then the class's index). Each must be
    numbers from 0 to 1 adding up to 1, and name the label's class; anything else is read as a
    prediction, so a two-output regression is never mistaken for probabilities.
    """
    if isinstance(row, dict) and len(row) >= 2:
        named = {_class_name(key): value for key, value in row.items()}
    elif isinstance(row, list) and len(row) >= 2:
        named = {str(index): value for index, value in enumerate(row)}
    else:
        return None
    numbers = {name: _number(value) for name, value in named.items()}
    if any(value is None or not 0.0 <= value <= 1.0 for value in numbers.values()):
        return None
    probabilities = {name: float(value or 0.0) for name, value in numbers.items()}
    if abs(sum(probabilities.values()) - 1.0) > PROBABILITY_SUM_TOLERANCE:
        return None
    return probabilities if _class_name(label) in probabilities else None


def _class_name(value: Any) -> str:
    """Return a class as text, the same for `1`, `1.0`, `"1"` and for `True`, `"true"`."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).lower()


@dataclass
class Quality:
    """What the labels say of one variant's version so far."""

    labels: int = 0
    numeric: int = 0
    absolute: float = 0.0
    squared: float = 0.0
    signed: float = 0.0
    classified: int = 0
    correct: int = 0
    scored: int = 0
    """Rows answered with probabilities (log loss's count)."""
    log_loss: float = 0.0

    def add(self, row: LabelledRow) -> None:
        """Count one labelled row."""
        self.labels += 1
        if row.classes:
            self.classified += 1
            self.correct += row.error == 0
            if row.log_loss is not None:
                self.scored += 1
                self.log_loss += row.log_loss
            return
        self.numeric += 1
        self.absolute += abs(row.error)
        self.squared += row.error * row.error
        self.signed += row.error

    def to_json(self) -> dict[str, float | int | None]:
        """Return the figures (None where no label of that kind came)."""
        n = self.numeric
        return {
            "labels": self.labels,
            "mae": self.absolute / n if n else None,
            "rmse": math.sqrt(self.squared / n) if n else None,
            "bias": self.signed / n if n else None,
            "accuracy": self.correct / self.classified if self.classified else None,
            "log_loss": self.log_loss / self.scored if self.scored else None,
        }


def compared(record: Answer, label: Any, pairs: list[LabelledRow]) -> list[LabelledRow]:
    """Compare each row of one answer with its label, paired with `pairs`' rows when given."""
    rows = rows_of(record.predictions)
    labels = label if isinstance(label, list) else [label] * len(rows)
    compared = []
    for index, (predicted, truth) in enumerate(zip(rows, labels, strict=False)):
        row = LabelledRow.of(record.variant, record.version, predicted, truth)
        compared.append(replace(row, paired=pairs[index]) if index < len(pairs) else row)
    return compared


def rows_of(predictions: Any) -> list[Any]:
    """One answer per row: a list's items, a frame's first column, else the whole."""
    if isinstance(predictions, list):
        return predictions
    if isinstance(predictions, dict) and predictions:
        first = next(iter(predictions.values()))
        return list(first) if isinstance(first, list) else [first]
    return [predictions]


def _first_output(row: Any) -> Any:
    """Return a row's prediction when it has several outputs: the first."""
    if isinstance(row, dict) and row:
        return next(iter(row.values()))
    if isinstance(row, list) and len(row) == 1:
        return row[0]
    return row


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
