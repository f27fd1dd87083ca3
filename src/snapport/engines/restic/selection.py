"""What restic is given for a set: the roots of its components (restic's `paths`), an anchored exclude pattern
for everything below them that the walk's selection leaves out, and what each component holds, counted and
digested from the walk (restic keeps its own SHA-256 of every content blob)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from snapport.engines.base import ComponentResult, ComponentSource, PathMapper
from snapport.engines.digest import default_digest_algorithm, new_hasher
from snapport.engines.walk import Entry, EntryType, Selection, path_key
from snapport.errors import SystemCommandError


def escape_pattern(path: str) -> str:
    """An exclude pattern matching exactly `path` (restic's filepath.Match syntax). restic trims lines, skips `#`
    lines and expands `$VAR` in exclude files: such characters become `?` (a single-character wildcard)."""
    escaped = "".join("\\" + c if c in "*?[]\\" else ("?" if c in "$\n\r" else c) for c in path)
    if escaped != escaped.strip() or escaped.lstrip().startswith("#"):
        escaped = "".join("?" if c.isspace() else c for c in escaped)
    return escaped


def within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def component_roots(components: Sequence[ComponentSource], selection: Selection) -> list[list[str]]:
    """Per component: its file specs' roots that the snapshot holds."""
    present = {e.path for e in selection.entries}
    return [
        sorted({s.original_path for s in c.component.all_files() if s.original_path in present}, key=path_key)
        for c in components
    ]


def top_roots(selection: Selection, components: Sequence[ComponentSource]) -> list[str]:
    """What restic is given: every component root present, without those below another (restic's `paths`)."""
    roots: list[str] = []
    for root in sorted({r for rs in component_roots(components, selection) for r in rs}, key=path_key):
        if not any(within(root, kept) for kept in roots):
            roots.append(root)
    return roots


def component_results(selection: Selection, components: Sequence[ComponentSource]) -> tuple[ComponentResult, ...]:
    """Counts per component, and a digest of its listing (path, type, size, mode, owner, mtime, link target):
    restic keeps its own SHA-256 of every content blob."""
    algorithm = default_digest_algorithm()
    results = []
    for source, members, skipped in zip(components, selection.members, selection.skipped, strict=True):
        hasher = new_hasher(algorithm)
        entries = [selection.entries[i] for i in members]
        for e in entries:
            hasher.update(os.fsencode(_listing(e)) + b"\n")
        stored = [e for e in entries if e.type is not EntryType.DIRECTORY]
        results.append(
            ComponentResult(
                source.writer_id,
                source.full_path,
                len(stored),
                sum(e.size for e in stored if e.type is EntryType.FILE),
                hasher.hexdigest(),
                skipped,
            )
        )
    return tuple(results)


def _listing(e: Entry) -> str:
    return f"{e.path}\0{e.type.value}\0{e.size}\0{e.mode:o}\0{e.uid}\0{e.gid}\0{e.mtime_ns}\0{e.link_target}"


def excludes(selection: Selection, roots: Sequence[str], mapping: PathMapper) -> bytes:
    """restic exclude patterns for everything below the roots that the selection leaves out (sockets, other
    file names, excluded specs), each anchored at its full original path."""
    selected = {e.path for e in selection.entries}
    out: list[str] = []
    for root in roots:
        pending = [(root, mapping(root))]
        while pending:
            path, source = pending.pop()
            if not source.is_dir() or source.is_symlink():
                continue
            try:
                children = sorted(os.scandir(source), key=lambda d: d.name)
            except OSError as exc:
                raise SystemCommandError(f"cannot read {source} in the exposed copy: {exc.strerror}") from None
            for child in children:
                original = ("" if path == "/" else path) + "/" + child.name
                if original not in selected:
                    out.append(escape_pattern(original))
                elif child.is_dir(follow_symlinks=False):
                    pending.append((original, Path(child.path)))
    return os.fsencode("\n".join(out) + "\n") if out else b""
