import pytest

from snapport.errors import PathEscape
from snapport.model import Component, ComponentType, FileSpec
from snapport.model.paths import file_pattern, relative_path, relative_to_volume, volume_path


@pytest.mark.parametrize(("raw", "normal"), [("/srv/data", "/srv/data"), ("/srv//data/", "/srv/data"), ("/", "/")])
def test_volume_path_normalises(raw: str, normal: str) -> None:
    assert volume_path(raw) == normal


@pytest.mark.parametrize("raw", ["srv/data", "/srv/../etc", "/srv/./data", "", "/srv/\x00"])
def test_volume_path_refuses(raw: str) -> None:
    with pytest.raises(PathEscape):
        volume_path(raw)


@pytest.mark.parametrize(("raw", "normal"), [("db/app.db", "db/app.db"), ("./a//b/", "a/b"), ("", ""), (".", "")])
def test_relative_path_normalises(raw: str, normal: str) -> None:
    assert relative_path(raw) == normal


@pytest.mark.parametrize("raw", ["/etc/passwd", "../etc", "a/../../b", "a/..", "a\x00b", "x" * 5000])
def test_relative_path_refuses_escapes(raw: str) -> None:
    with pytest.raises(PathEscape):
        relative_path(raw)


@pytest.mark.parametrize("raw", ["a/b", "", ".", "..", "x\x00"])
def test_file_pattern_is_one_component(raw: str) -> None:
    with pytest.raises(PathEscape):
        file_pattern(raw)


def test_relative_to_volume() -> None:
    assert relative_to_volume("/srv/data", "/srv/data/db/app.db") == "db/app.db"
    assert relative_to_volume("/srv/data", "/srv/data") == ""
    assert relative_to_volume("/", "/etc/hosts") == "etc/hosts"
    for outside in ["/srv/database/x", "/srv/data/../other", "/etc", "relative/path"]:
        with pytest.raises(PathEscape):
            relative_to_volume("/srv/data", outside)


def test_file_spec_validates_every_path() -> None:
    spec = FileSpec(volume="/srv/data/", path="./db", pattern="*.db", recursive=True, alternate_location="restore/db")
    assert (spec.volume, spec.path, spec.original_path) == ("/srv/data", "db", "/srv/data/db")
    assert FileSpec(volume="/", path="etc").original_path == "/etc"
    with pytest.raises(PathEscape):
        FileSpec(volume="/srv/data", path="../../etc")
    with pytest.raises(PathEscape):
        FileSpec(volume="/srv/data", path="db", alternate_location="/tmp/x")


def test_component_kinds_hold_their_own_files() -> None:
    spec = FileSpec(volume="/srv", path="f")
    with pytest.raises(ValueError, match="cannot have database"):
        Component(type=ComponentType.FILE_GROUP, name="g", database_files=(spec,))
    with pytest.raises(ValueError, match="database or log files"):
        Component(type=ComponentType.DATABASE, name="d", files=(spec,))
    assert Component(type=ComponentType.DATABASE, name="d", logical_path="pg", log_files=(spec,)).full_path == "pg\\d"
