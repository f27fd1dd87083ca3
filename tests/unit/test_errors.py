"""The error vocabulary: every error comes back as its own class after crossing a process or a network."""

import pytest

from snapport.errors import ClusterRule, ImportRefused, LeaseExpired, SnapportError, all_error_classes
from snapport.faults import InjectedFault


@pytest.mark.parametrize("cls", all_error_classes(), ids=lambda c: c.code)
def test_every_error_comes_back_as_its_own_class_by_its_name(cls: type[SnapportError]) -> None:
    error = SnapportError.from_code(cls.code, "the message")
    assert type(error) is cls
    assert error.message == "the message" and error.exit_code == cls.exit_code
    assert SnapportError.advice_for(cls.code) == cls.advice


def test_a_name_this_version_does_not_know_keeps_its_name_in_the_message() -> None:
    error = SnapportError.from_code("QUOTA_EXCEEDED", "too many jobs")
    assert type(error) is SnapportError and error.message == "QUOTA_EXCEEDED: too many jobs"
    assert SnapportError.from_code(None, "no name").message == "no name"
    assert SnapportError.advice_for("QUOTA_EXCEEDED") == SnapportError.advice


def test_a_class_defined_outside_the_module_is_known_by_its_name_too() -> None:
    assert type(SnapportError.from_code(InjectedFault.code, "x")) is InjectedFault


def test_http_statuses_are_inherited_and_default_to_500() -> None:
    assert ClusterRule.http_status == ImportRefused.http_status == 409
    assert LeaseExpired.http_status == 410
    assert InjectedFault.http_status == SnapportError.http_status == 500
