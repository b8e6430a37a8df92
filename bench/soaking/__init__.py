"""The soak and chaos run (`bench/soak.py`): an hour of production on one machine.

`models` registers versions whose verdict is known, `traffic` sends requests and late labels
and keeps every outcome, `faults` breaks things on a schedule, `sampling` watches processes and
folders, and `report` judges it all and writes the report. Each module holds one concern, so
that the short run in the test suite and the hour-long one are the same code with other
numbers.
"""
