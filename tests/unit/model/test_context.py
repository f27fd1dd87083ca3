import pytest

from snapport.errors import UnsupportedContext
from snapport.model import REQUESTER_MODIFIERS, Attr, Context, context_attrs


@pytest.mark.parametrize(
    ("context", "persistent", "auto_release", "writers"),
    [
        (Context.BACKUP, False, True, True),
        (Context.APP_BACKUP, True, False, True),
        (Context.FILE_SHARE_BACKUP, False, True, False),
        (Context.NAS_ROLLBACK, True, False, False),
        (Context.APP_ROLLBACK, True, False, True),
        (Context.CLIENT_ACCESSIBLE, True, False, False),
        (Context.CLIENT_ACCESSIBLE_WRITERS, True, False, True),
    ],
)
def test_context_matrix_follows_vss(context: Context, persistent: bool, auto_release: bool, writers: bool) -> None:
    assert (Attr.PERSISTENT in context.base_attrs) is persistent
    assert context.auto_release is auto_release
    assert context.writers_involved is writers


def test_transportable_may_be_added_to_any_non_client_context() -> None:
    for context in Context:
        if Attr.CLIENT_ACCESSIBLE in context.base_attrs:
            with pytest.raises(UnsupportedContext, match="takes no modifiers"):
                context_attrs(context, Attr.TRANSPORTABLE)
        else:
            attrs = context_attrs(context, Attr.TRANSPORTABLE)
            assert Attr.TRANSPORTABLE in attrs
            assert context.base_attrs in attrs


def test_differential_and_plex_exclude_each_other() -> None:
    with pytest.raises(UnsupportedContext, match="exclude each other"):
        context_attrs(Context.BACKUP, Attr.DIFFERENTIAL | Attr.PLEX)
    assert Attr.PLEX in context_attrs(Context.BACKUP, Attr.PLEX)


@pytest.mark.parametrize("flag", [a for a in Attr if a and a not in REQUESTER_MODIFIERS])
def test_automatic_attributes_cannot_be_requested(flag: Attr) -> None:
    with pytest.raises(UnsupportedContext, match="cannot be requested"):
        context_attrs(Context.BACKUP, flag)


def test_attribute_words_round_trip() -> None:
    every = Attr.NONE
    for flag in Attr:
        every |= flag
    assert Attr.from_names(every.names()) == every
    assert Attr.from_names([]) == Attr.NONE
    assert (Attr.NO_AUTO_RELEASE | Attr.TRANSPORTABLE).names() == ["no-auto-release", "transportable"]
    with pytest.raises(ValueError, match="unknown attribute"):
        Attr.from_names(["sticky"])
