"""Jobs that follow the model servers' version directories.

- ``new_versions``: a new numeric version directory under a model's base path (newer than
  stable, complete, never rolled back) starts a canary (``lifecycle.auto_canary``); a version
  that fails to stage is tried again after a doubling backoff (poll interval x 2^failures, at
  most an hour), and at most ``max_auto_stagings_per_hour`` stagings start per model;
- ``unload_previous``: ``keep_previous_seconds`` after a promotion the previous version, kept
  loaded for an instant rollback, is unloaded (an action: intent, then outcome).
"""

from __future__ import annotations

from collections import deque

from tfwarden.core.errors import ServingError
from tfwarden.core.events import NewVersionFound
from tfwarden.core.settings import default
from tfwarden.core.status import Phase
from tfwarden.lifecycle.actions import StageCanary, UnloadPrevious
from tfwarden.lifecycle.runner import LifecycleRunner, ManagedModel
from tfwarden.lifecycle.settings import LifecycleSettings

MAX_BACKOFF_SECONDS = 3600.0


class VersionWatcher:
    def __init__(self, runner: LifecycleRunner) -> None:
        self.runner = runner
        self._failed: dict[tuple[str, int], tuple[int, float]] = {}  # -> (failures, next try)
        self._attempts: dict[str, deque[float]] = {}  # model -> automatic stagings, last hour

    async def new_versions(self) -> None:
        runner = self.runner
        await runner.retry_unstarted()
        for name, managed in list(runner.models.items()):
            status = runner.statuses.get(name)
            if (not managed.settings.auto_canary or status is None
                    or status.stable_version is None
                    or status.phase not in (Phase.STABLE, Phase.ROLLED_BACK) or runner.busy(name)
                    or not runner.may_act(name)):
                continue
            try:
                newest = managed.server.newest_version(name)
            except (ServingError, OSError):
                continue
            if newest is not None and newest > status.stable_version and \
                    newest not in status.rejected and self._may_stage(name, newest, managed):
                await self._stage(name, newest, managed)

    def _may_stage(self, name: str, version: int, managed: ManagedModel) -> bool:
        """Not while a failed version backs off, nor past the hourly limit."""
        now = self.runner.clock.now()
        failures, next_try = self._failed.get((name, version), (0, 0.0))
        recent = self._attempts.setdefault(name, deque())
        while recent and recent[0] <= now - 3600:
            recent.popleft()
        return now >= next_try and len(recent) < managed.settings.max_auto_stagings_per_hour

    async def _stage(self, name: str, version: int, managed: ManagedModel) -> None:
        runner, now = self.runner, self.runner.clock.now()
        self._attempts[name].append(now)
        if (name, version) not in self._failed:
            runner.journal.record(NewVersionFound(name, version))
        await runner.run(name, StageCanary(version), "new version directory")
        if runner.statuses[name].canary_version == version:
            self._failed.pop((name, version), None)
            return
        failures = self._failed.get((name, version), (0, 0.0))[0] + 1
        delay = min(MAX_BACKOFF_SECONDS,
                    managed.settings.version_poll_seconds * 2 ** failures)
        self._failed[(name, version)] = (failures, now + delay)

    async def unload_previous(self) -> None:
        runner, now = self.runner, self.runner.clock.now()
        for name, managed in list(runner.models.items()):
            status = runner.statuses.get(name)
            if (status is None or status.phase != Phase.STABLE or status.promoted_at is None
                    or status.previous_good is None or runner.busy(name)
                    or not runner.may_act(name)
                    or now - status.promoted_at < managed.settings.keep_previous_seconds):
                continue
            await runner.run(name, UnloadPrevious(status.previous_good),
                             "keep_previous_seconds elapsed")

    @property
    def interval(self) -> float:
        return min((m.settings.version_poll_seconds for m in self.runner.models.values()),
                   default=default(LifecycleSettings, "version_poll_seconds"))
