"""The one door to the operating system: commands through a Runner, ioctls, loop devices, mounts, locks."""

from snapport.osal.runner import Completed, RecordingRunner, Runner, SubprocessRunner

__all__ = ["Completed", "RecordingRunner", "Runner", "SubprocessRunner"]
