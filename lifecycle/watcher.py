"""Jobs that follow the model servers' version directories.

- ``new_versions``: a new numeric version directory under a model's base path (newer than
  stable, complete, never rolled back) starts a canary (``lifecycle.auto_canary``);
- ``unload_previous``: ``keep_previous_seconds`` after a promotion the previous version, kept
  loaded for an instant rollback, is unloaded.
"""

from __future__ import annotations

from dataclasses import replace

from tfwarden.core.errors import ServingError
from tfwarden.core.events import NewVersionFound, PreviousUnloaded
from tfwarden.core.settings import default
from tfwarden.core.status import Phase
from tfwarden.lifecycle.actions import StageCanary
from tfwarden.lifecycle.runner import LifecycleRunner
from tfwarden.lifecycle.settings import LifecycleSettings


class VersionWatcher:
    def __init__(self, runner: LifecycleRunner) -> None:
        self.runner = runner

    async def new_versions(self) -> None:
        runner = self.runner
        await runner.retry_unstarted()
        for name, managed in list(runner.models.items()):
            status = runner.statuses.get(name)
            if (not managed.settings.auto_canary or status is None
                    or status.stable_version is None
                    or status.phase not in (Phase.STABLE, Phase.ROLLED_BACK) or runner.busy(name)):
                continue
            try:
                newest = managed.server.newest_version(name)
            except (ServingError, OSError):
                continue
            if newest is not None and newest > status.stable_version and \
                    newest not in status.rejected:
                runner.journal.record(NewVersionFound(name, newest))
                await runner.run(name, StageCanary(newest), "new version directory")

    async def unload_previous(self) -> None:
        runner, now = self.runner, self.runner.clock.now()
        for name, managed in list(runner.models.items()):
            status = runner.statuses.get(name)
            if (status is None or status.phase != Phase.STABLE or status.promoted_at is None
                    or status.previous_good is None or runner.busy(name)
                    or now - status.promoted_at < managed.settings.keep_previous_seconds):
                continue
            async with runner.lock(name):
                stable = status.stable_version
                assert stable is not None
                await managed.server.set_labels(name, {"stable": stable}, keep=())
                runner.save(replace(status, previous_good=None))
                runner.journal.record(PreviousUnloaded(name, status.previous_good))

    @property
    def interval(self) -> float:
        return min((m.settings.version_poll_seconds for m in self.runner.models.values()),
                   default=default(LifecycleSettings, "version_poll_seconds"))
