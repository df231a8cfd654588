"""The ``tfwarden`` command line.

Exit codes: 0 success; 1 the command ran and failed (invalid config, start-up error, daemon
unreachable); 2 the command line itself was wrong (unknown subcommand, bad flag). The operator
commands (status, findings, journal, promote, rollback, pause, resume, approve; clients of a
running daemon, ``tfwarden.daemon.ctl``) add 3 the daemon refused the action (409), 4 not found
(404), 5 not authorized (401/403). Errors are one readable line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import NoReturn

from tfwarden.core.errors import ConfigError, OptimizeError, TfwardenError
from tfwarden.core.settings import default
from tfwarden.optimizers.gate import Tolerances
from tfwarden.optimizers.settings import OptimizeSettings

log = logging.getLogger("tfwarden")


def package_version() -> str:
    try:
        return version("tfwarden")
    except PackageNotFoundError:
        return "0+unknown"


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


OPERATOR_EPILOG = """\
Operator commands talk to a running daemon over HTTP: reads are open, actions need the bearer
token when server.bearer_token_file is configured (--token-file FILE or $TFWARDEN_TOKEN).

exit codes:
  0  success
  1  runtime failure: invalid config, start-up error; the daemon unreachable or timed out,
     a 5xx, an answer that is not JSON
  2  usage error: unknown command, bad flag, unreadable --token-file or --cacert
  3  the daemon refused the action (409, e.g. nothing to promote)
  4  not found (404, e.g. an unknown model)
  5  not authorized (401 missing token, 403 wrong token)
"""


def _operator_flags() -> _Parser:
    """The flags every operator command takes (an argparse parent parser)."""
    flags = _Parser(add_help=False)
    flags.add_argument("--url", metavar="URL",
                       help="the daemon (default: $TFWARDEN_URL or http://127.0.0.1:9321)")
    flags.add_argument("--token-file", metavar="FILE",
                       help="the operators' bearer token (default: $TFWARDEN_TOKEN)")
    flags.add_argument("--cacert", metavar="FILE", help="CA bundle of a daemon serving HTTPS")
    flags.add_argument("--timeout", type=_seconds, default=5.0, metavar="SECONDS",
                       help="per request (default: 5)")
    flags.add_argument("-o", "--output", choices=("human", "json"), default="human",
                       help="human tables (default) or the daemon's JSON")
    return flags


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < 3600:
        raise argparse.ArgumentTypeError(f"expected seconds between 0 and 3600, got {text!r}")
    return seconds


def _journal_limit(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"expected a number of entries from 1 to 1000, got {text!r}")
    return int(text)


def _entry_id(text: str) -> int:
    if not text.isdigit() or int(text) > 2**63 - 1:
        raise argparse.ArgumentTypeError(f"expected a journal entry id (0 or more), got {text!r}")
    return int(text)


def _add_operator_commands(sub: argparse._SubParsersAction[_Parser]) -> None:
    flags = _operator_flags()

    def command(name: str, text: str) -> _Parser:
        return sub.add_parser(name, help=text, parents=[flags], epilog=OPERATOR_EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    status = command("status", "models' lifecycle status, or one model's tree")
    status.add_argument("model", nargs="?", metavar="MODEL")
    status.add_argument("--watch", "-w", action="store_true", help="redraw every 2 s until Ctrl-C")

    findings = command("findings", "every detector's current finding")
    findings.add_argument("model", nargs="?", metavar="MODEL")

    journal = command("journal", "the journal: decisions, actions, findings, alerts")
    journal.add_argument("model", nargs="?", metavar="MODEL")
    journal.add_argument("--kind", metavar="KIND", help="only this kind (decision, action_done...)")
    journal.add_argument("--limit", type=_journal_limit, default=20, metavar="N",
                         help="the last N entries, 1-1000 (default: 20)")
    journal.add_argument("--after", type=_entry_id, metavar="ID",
                         help="the first N entries after entry ID instead of the last N")
    journal.add_argument("--follow", "-f", action="store_true",
                         help="then print new entries as they come, until Ctrl-C")

    for action, text in (("promote", "promote the canary now"),
                         ("rollback", "roll back to the previous good version"),
                         ("pause", "pause automation for a model"), ("resume", "resume automation"),
                         ("approve", "carry out the decision awaiting approval")):
        command(action, text).add_argument("model", metavar="MODEL")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tfwarden", description="Keep production TensorFlow models healthy.",
                     epilog=OPERATOR_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"tfwarden {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", required=True, metavar="FILE", help="YAML configuration file")

    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("file", metavar="FILE")

    sub.add_parser("config-schema", help="print the JSON Schema of the configuration file")

    devserver = sub.add_parser(
        "devserver", help="run a TF-Serving-compatible model server (TF Serving's flags)",
        add_help=False)
    devserver.add_argument("flags", nargs=argparse.REMAINDER,
                           help="TF Serving flags, e.g. --port=8500 --rest_api_port=8501")

    runbook = sub.add_parser("runbook", help="print the runbook of an alert (offline: from the "
                             "installed package); without ALERT, list them")
    runbook.add_argument("alert", nargs="?", metavar="ALERT")

    backtest = sub.add_parser("backtest", help="replay a trace through the detectors")
    backtest.add_argument("trace", metavar="TRACE.jsonl")
    backtest.add_argument("--config", metavar="FILE", help="detector settings and SLOs")

    optimize = sub.add_parser(
        "optimize", help="optimize a model version, validate it, publish it as a new version")
    optimize.add_argument("model_dir", metavar="MODEL_DIR", help="source version directory")
    optimize.add_argument("--method", required=True, help="dynamic, float16, int8, recalibrate, "
                          "keras_float16, keras_int8, prune, prune_oneshot, cluster")
    optimize.add_argument("--golden", required=True, metavar="FILE",
                          help=".npz (x, optional labels y), .npy, .csv or golden JSONL")
    optimize.add_argument("--representative", metavar="FILE", help="int8 calibration inputs")
    optimize.add_argument("--train", metavar="FILE", help=".npz with x and y (prune, cluster)")
    optimize.add_argument("--out", metavar="BASE_PATH",
                          help="publish under this base path (default: MODEL_DIR's parent)")
    optimize.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                          help="method parameter, e.g. sparsity=0.8, clusters=16, io=int8")
    optimize.add_argument("--min-top1-agreement", type=float,
                          default=default(Tolerances, "min_top1_agreement"))
    optimize.add_argument("--max-accuracy-drop", type=float, metavar="POINTS",
                          default=default(Tolerances, "max_accuracy_drop_points"))
    optimize.add_argument("--max-abs-error", type=float, default=None)
    optimize.add_argument("--timeout", type=float, metavar="SECONDS",
                          default=default(OptimizeSettings, "timeout_seconds"))

    demo = sub.add_parser("demo", help="start tfwarden on an embedded default and show it work")
    demo.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                      help="stop after this many seconds (default: when the story is told)")
    demo.add_argument("--keep-running", action="store_true",
                      help="keep observing after the story, until Ctrl-C or --duration")
    _add_operator_commands(sub)
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    from tfwarden.daemon.app import Daemon
    from tfwarden.daemon.logs import configure_logging

    configure_logging()
    daemon = Daemon(args.config, version=package_version())
    try:
        return asyncio.run(daemon.run())
    except TfwardenError as exc:
        log.critical("cannot start: %s", exc)
        return 1


def cmd_check_config(args: argparse.Namespace) -> int:
    from tfwarden.daemon.config import load_config

    try:
        config = load_config(args.file)
    except ConfigError as exc:
        count = len(exc.problems)
        print(f"{exc.source}: invalid ({count} problem{'s' if count != 1 else ''})", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(f"{args.file}: OK ({len(config.serving)} serving endpoint(s), "
          f"{len(config.models)} model(s))")
    return 0


def cmd_config_schema(_: argparse.Namespace) -> int:
    from tfwarden.daemon.config import config_json_schema

    print(json.dumps(config_json_schema(), indent=2, sort_keys=True))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from tfwarden.daemon.demo import run_demo

    try:
        return run_demo(args.duration, keep_running=args.keep_running)
    except TfwardenError as exc:
        print(f"tfwarden demo: {exc}", file=sys.stderr)
        return 1


def cmd_backtest(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tfwarden.daemon.backtest import run_backtest

    try:
        return run_backtest(Path(args.trace), Path(args.config) if args.config else None)
    except TfwardenError as exc:
        print(f"tfwarden backtest: {exc}", file=sys.stderr)
        return 1


def _param(text: str) -> tuple[str, float | int | str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--param {text!r}: expected KEY=VALUE")
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, value


def cmd_optimize(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tfwarden.optimizers.pipeline import Request, optimize

    try:
        params = dict(_param(p) for p in args.param)
    except ValueError as exc:
        print(f"tfwarden optimize: {exc}", file=sys.stderr)
        return 2
    source = Path(args.model_dir).resolve()
    request = Request(
        source=source, method=args.method, base=Path(args.out).resolve() if args.out
        else source.parent, golden=Path(args.golden),
        representative=Path(args.representative) if args.representative else None,
        train=Path(args.train) if args.train else None, params=params,
        tolerances=Tolerances(min_top1_agreement=args.min_top1_agreement,
                              max_accuracy_drop_points=args.max_accuracy_drop,
                              max_abs_error=args.max_abs_error),
        timeout_seconds=args.timeout)
    try:
        report = asyncio.run(optimize(request))
    except OptimizeError as exc:
        print(f"tfwarden optimize: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report.to_json(), indent=2))
    if report.accepted:
        print(f"tfwarden optimize: published version {report.version} under {request.base}",
              file=sys.stderr)
        return 0
    print(f"tfwarden optimize: candidate rejected: {'; '.join(report.reasons)}", file=sys.stderr)
    return 1


def cmd_devserver(args: argparse.Namespace) -> int:
    from tfwarden.serving.devserver.main import main as devserver_main

    flags = args.flags[1:] if args.flags[:1] == ["--"] else args.flags
    return devserver_main(flags)


def cmd_runbook(args: argparse.Namespace) -> int:
    """The runbook pages ship in the package: readable when the daemon (or the network) is down."""
    from tfwarden.daemon.statuspage import runbook_names, runbook_text

    if args.alert is None:
        names = runbook_names()
        print("\n".join(names) if names else "no runbook pages are installed")
        return 0 if names else 1
    text = runbook_text(args.alert)
    if text is None:
        print(f"tfwarden runbook: no runbook for {args.alert!r} (tfwarden runbook lists them)",
              file=sys.stderr)
        return 1
    print(text, end="" if text.endswith("\n") else "\n")
    return 0


def cmd_operator(args: argparse.Namespace) -> int:
    from tfwarden.daemon.ctl import run as run_operator_command

    return run_operator_command(args)


COMMANDS = {
    "backtest": cmd_backtest,
    "devserver": cmd_devserver,
    "run": cmd_run,
    "check-config": cmd_check_config,
    "config-schema": cmd_config_schema,
    "demo": cmd_demo,
    "optimize": cmd_optimize,
    "runbook": cmd_runbook,
    **{verb: cmd_operator for verb in ("status", "findings", "journal", "promote", "rollback",
                                       "pause", "resume", "approve")},
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["devserver"]:  # TF Serving's flags go to the devserver's own parser
        argv = ["devserver", "--", *argv[1:]] if len(argv) > 1 else argv
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
