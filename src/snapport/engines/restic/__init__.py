"""The `restic` engine, one module per job (docs/engines.md, "restic engine"):

- `engine`: `ResticEngine`, the Engine protocol over a restic repository: one restic snapshot per set, its tags,
  publication, verify, restore;
- `command`: the restic program on one repository: password, environment, commands, start and stop;
- `selection`: what restic is given for a set: roots, exclude patterns, what each component holds;
- `view`: the init of restic's private mount namespace (run as `python -m snapport.engines.restic.view`).
"""
