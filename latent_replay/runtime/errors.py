"""The device library's shared error type for settings (learner settings, synthetic stream parameters)."""
from __future__ import annotations

from typing import Optional


class SettingError(ValueError):
    """A setting given a value it cannot take. `setting` names it ('lr_first', 'n_batches') and `problem`
    says what is wrong ('must be >= 0, got -1'), so that a command can name the option the user typed
    (`--lr`, `--synthetic-batches`, `--set lr_first=-1`) instead of the setting behind it."""

    def __init__(self, setting: str, problem: str, message: Optional[str] = None) -> None:
        super().__init__(message or f"{setting} {problem}")
        self.setting, self.problem = setting, problem
