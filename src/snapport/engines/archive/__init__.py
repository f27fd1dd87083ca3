"""The built-in `archive` engine, one module per job (docs/engines.md describes the format for people):

- `engine`: `ArchiveEngine`, the Engine protocol's methods wiring the parts below;
- `repository`: the repository's layout, its creation, a set's atomic publication, list, prune of incomplete sets;
- `format`: the records of a set (`manifest.json`, `set.json`) and its file names;
- `members`: tar members, their headers as written and what a reader takes back from them;
- `backup`: one backup, every file of a set written into its temporary directory;
- `readahead`: the pool that opens, reads and digests the next files of the exposed copy;
- `frames`: the compressed stream, independent zstd frames compressed side by side and written in order;
- `stream`: the archive read forward as a stream, and digested as it is read;
- `progress`: progress events at a bounded rate;
- `verify`: a set re-read and checked against its digests, damage collected as problems;
- `restore`: a set written back under a target directory, never outside it.

`snapport.engines.ArchiveEngine` is the way in; the modules are the engine's own.
"""
