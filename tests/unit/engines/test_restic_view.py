"""The restic engine's pure parts: the view's spec, refused original paths, tags, and `--engine` validation."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from pydantic import ValidationError

from snapport.agent.offhost.models import OffhostParams, ProxyParams
from snapport.engines.restic.command import key_file_for
from snapport.engines.restic.engine import encode_tag
from snapport.engines.restic.view import ViewSpec, collides


def test_a_view_spec_round_trips() -> None:
    spec = ViewSpec((("/run/snapport/x/srv/data", "/srv/data", True), ("/backup/repo", "/.r", False)), ("restic", "x"))
    assert ViewSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize("path", ["/", "/usr", "/usr/local/data", "/etc", "/dev/shm", "/lib64/x", "/.snapport"])
def test_paths_restic_needs_are_refused(path: str) -> None:
    assert collides(path)


@pytest.mark.parametrize("path", ["/srv/data", "/tmp/pytest/volumes/data", "/var/lib/pg", "/usrdata", "/etcetera"])
def test_other_paths_are_fine(path: str) -> None:
    assert not collides(path)


def test_a_tag_keeps_commas_out() -> None:
    tag = encode_tag("snapport-component:w/Logs, old\\part")
    assert "," not in tag and " " not in tag and tag.startswith("snapport-component:w/Logs")


def test_the_key_is_kept_beside_the_repository_not_in_it() -> None:
    key = key_file_for(Path("/backup/repo"))
    assert key == Path("/backup/.repo.restic-key")


def test_the_engine_option_is_validated() -> None:
    base = {"volumes": ["/srv/data"], "proxy": "two:8443", "repo": "/backup/repo"}
    assert OffhostParams.model_validate(base).engine == "archive"
    assert OffhostParams.model_validate({**base, "engine": "restic"}).engine == "restic"
    with pytest.raises(ValidationError, match="unknown backup engine"):
        OffhostParams.model_validate({**base, "engine": "tape"})
    proxy = {"set_id": str(uuid.uuid4()), "source": "one", "repo": "/backup/repo", "lease_s": 60}
    assert ProxyParams.model_validate(proxy).engine == "archive"  # a job from an older systemOne
    with pytest.raises(ValidationError):
        ProxyParams.model_validate({**proxy, "engine": "../x"})
