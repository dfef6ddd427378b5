"""What one reported number is: its key, label, unit and which direction is better."""

from typing import NamedTuple


class Metric(NamedTuple):
    key: str
    label: str
    unit: str
    higher_is_better: bool
