"""The nginx router: weighted split of predict traffic between the stable and canary labels.

For each model tfwarden writes two include files into ``include_dir``:
- ``<model>.http.conf`` (include it in ``http {}``): a ``split_clients`` on ``$request_id`` that
  maps ``weight`` % of requests to ``canary`` and the rest to ``stable``;
- ``<model>.server.conf`` (include it in the ``server {}`` that fronts TF Serving): unaddressed
  ``:predict`` calls go to ``/labels/$label``; unaddressed ``:classify``/``:regress`` and metadata
  calls go to ``/labels/stable`` (never silently to a canary); explicitly addressed
  versions/labels pass through unchanged; with ``mirror_url`` a sampled copy of predict bodies
  goes to tfwarden's capture endpoint (with the ingest token when one is configured; the
  include files are written readable by their owner only).
Each change is written atomically, validated with ``nginx -t`` (on failure the previous files are
restored and RouterError raised) and applied with ``nginx -s reload``. Example: deploy/nginx/.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
from pathlib import Path

from tfwarden.core.errors import RouterError


def _variable(model: str) -> str:
    return "$tfwarden_" + re.sub(r"[^A-Za-z0-9_]", "_", model) + "_label"


def http_conf(model: str, weight: int) -> str:
    variable = _variable(model)
    lines = [f"# managed by tfwarden: model {model}, canary weight {weight} %",
             f'split_clients "${{request_id}}" {variable} {{']
    if weight > 0:
        lines.append(f"    {weight}% canary;")
    lines += ["    * stable;", "}", ""]
    return "\n".join(lines)


def server_conf(model: str, upstream: str, mirror_url: str | None,
                mirror_token: str | None = None) -> str:
    quoted = re.escape(model)
    variable = _variable(model)
    upstream = upstream.rstrip("/")
    lines = [f"# managed by tfwarden: model {model}"]
    mirror = ""
    if mirror_url:
        sample = f"$tfwarden_{re.sub(r'[^A-Za-z0-9_]', '_', model)}_mirror"
        lines += [f"location = /_tfwarden_capture/{model} {{", "    internal;",
                  f'    if ({sample} = "") {{ return 204; }}',
                  *([f'    proxy_set_header Authorization "Bearer {mirror_token}";']
                    if mirror_token else []),
                  f"    proxy_pass {mirror_url.rstrip('/')}/{model};", "}"]
        # the sampling variable is a split_clients in the http-level file
        mirror = f"    mirror /_tfwarden_capture/{model};\n    mirror_request_body on;\n"
    lines += [
        f"location ~ ^/v1/models/{quoted}/(versions|labels)/ {{",
        f"    proxy_pass {upstream};", "}",
        f"location = /v1/models/{model}:predict {{",
        mirror + f"    proxy_pass {upstream}/v1/models/{model}/labels/{variable}:predict;", "}",
        f"location ~ ^/v1/models/{quoted}:(classify|regress)$ {{",
        f"    proxy_pass {upstream}/v1/models/{model}/labels/stable:$1;", "}",
        f"location ~ ^/v1/models/{quoted}(/metadata)?$ {{",
        f"    proxy_pass {upstream}/v1/models/{model}/labels/stable$1;", "}", ""]
    return "\n".join(lines)


def _write(path: Path, text: str) -> None:
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


def _restore(previous: dict[Path, str | None]) -> None:
    for path, old in previous.items():
        if old is None:
            path.unlink(missing_ok=True)
        else:
            _write(path, old)


class NginxRouter:
    name = "nginx"
    timeout_seconds = 30.0

    def __init__(self, *, include_dir: Path, conf: Path, prefix: Path, upstream: str,
                 binary: str = "nginx", mirror_url: str | None = None,
                 mirror_token: str | None = None,
                 mirror_percent: int = 10) -> None:
        self.include_dir, self.conf, self.prefix = include_dir, conf, prefix
        self.upstream, self.binary = upstream, binary
        self.mirror_url, self.mirror_percent = mirror_url, mirror_percent
        self.mirror_token = mirror_token  # sent to tfwarden's capture endpoint

    async def apply(self, model: str, weight: int) -> None:
        if not 0 <= weight <= 100:
            raise RouterError(f"weight must be 0..100, got {weight}")
        files = {self.include_dir / f"{model}.http.conf": self._http(model, weight),
                 self.include_dir / f"{model}.server.conf": server_conf(
                     model, self.upstream, self.mirror_url, self.mirror_token)}
        previous: dict[Path, str | None] = {p: p.read_text() if p.exists() else None
                                            for p in files}
        for path, text in files.items():
            _write(path, text)
        ok, output = await self._nginx("-t")
        if not ok:
            _restore(previous)
            raise RouterError(f"nginx -t refused the routing for {model!r}; previous routing "
                              f"kept: {output.strip().splitlines()[-1] if output.strip() else ''}")
        ok, output = await self._nginx("-s", "reload")
        if not ok:  # the running nginx kept the old routing: so must the files (the next
            _restore(previous)  # reload, for another model, would put this one in force)
            raise RouterError(f"nginx reload failed for {model!r}; previous routing kept: "
                              f"{output.strip()}")

    def _http(self, model: str, weight: int) -> str:
        text = http_conf(model, weight)
        if self.mirror_url:
            sample = f"$tfwarden_{re.sub(r'[^A-Za-z0-9_]', '_', model)}_mirror"
            text += (f'split_clients "${{request_id}}mirror" {sample} {{\n'
                     f"    {self.mirror_percent}% 1;\n    * \"\";\n}}\n")
        return text

    async def _nginx(self, *args: str) -> tuple[bool, str]:
        """Run nginx; a run that does not finish in ``timeout_seconds`` is killed and counts
        as refused (the caller then restores the previous files)."""
        process = await asyncio.create_subprocess_exec(
            self.binary, *args, "-c", str(self.conf), "-p", str(self.prefix),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            output, _ = await asyncio.wait_for(process.communicate(), self.timeout_seconds)
        except TimeoutError:
            process.kill()
            await process.wait()
            return False, f"nginx {' '.join(args)} did not finish in {self.timeout_seconds:g} s"
        return process.returncode == 0, output.decode(errors="replace")
