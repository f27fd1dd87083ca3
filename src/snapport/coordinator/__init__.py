"""The coordinator: the backup sequence, timeouts and rollback, import, expose, path mapping, complete."""
