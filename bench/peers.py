"""Faithful re-implementations of two peers' canary verdicts, for bench/detection.py.

Both run on the same seeded traces as tfwarden (per-request latency and success of the stable
and the canary) and reproduce what the peer would compute from the metrics its store would hold.
docs/peers.md lists the sources, the settings and what is approximated.

Flagger (fluxcd/flagger): the analysis loop of pkg/controller/scheduler.go (advanceCanary,
runCanary, rollback) and the built-in checks of pkg/controller/scheduler_metrics.go
(runBuiltinMetricChecks) with the Istio queries of pkg/metrics/observers/istio.go, evaluated by
Prometheus' histogram_quantile over Envoy's default histogram buckets.
Docs: https://docs.flagger.app/usage/how-it-works, https://docs.flagger.app/usage/metrics.

Kayenta (spinnaker/kayenta, NetflixACAJudge): kayenta-judge/.../NetflixACAJudge.scala,
classifiers/metric/MannWhitneyClassifier.scala, detectors/IQRDetector.scala,
scorers/WeightedSumScorer.scala, classifiers/score/ThresholdScoreClassifier.scala and the
interval scheduling of Spinnaker's canary stage (orca-kayenta RunCanaryIntervalsStage,
MonitorKayentaCanaryTask, AggregateCanaryResultsTask).
Docs: https://spinnaker.io/docs/guides/user/canary/judge/, .../canary/stage/.
"""

from __future__ import annotations

import bisect
import math
import random
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import mannwhitneyu, norm

# Envoy's default histogram buckets (ms), which Istio's istio_request_duration_milliseconds uses:
# envoyproxy/envoy source/common/stats/histogram_impl.cc, HistogramSettingsImpl::defaultBuckets.
ENVOY_BUCKETS_MS: tuple[float, ...] = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000,
                                       10000, 30000, 60000, 300000, 600000, 1800000, 3600000,
                                       math.inf)


@dataclass
class Requests:
    """One version's requests, in time order: arrival time (s), latency (ms), success (1/0);
    compact arrays, since a day of probes is 864,000 requests per version."""

    t: array[float] = field(default_factory=lambda: array("d"))
    ms: array[float] = field(default_factory=lambda: array("d"))
    ok: array[int] = field(default_factory=lambda: array("b"))

    def add(self, t: float, ms: float, ok: bool) -> None:
        self.t.append(t)
        self.ms.append(ms)
        self.ok.append(ok)

    def span(self, start: float, end: float) -> tuple[int, int]:
        """Index range of the requests with start < t <= end."""
        return bisect.bisect_right(self.t, start), bisect.bisect_right(self.t, end)


# --- Prometheus -------------------------------------------------------------------------------

def cumulative_buckets(values: Sequence[float], bounds: Sequence[float] = ENVOY_BUCKETS_MS
                       ) -> list[float]:
    """The `le` bucket counters of a Prometheus histogram: how many values are <= each bound."""
    ordered = sorted(values)
    return [float(bisect.bisect_right(ordered, bound)) for bound in bounds]


def histogram_quantile(q: float, bounds: Sequence[float], counts: Sequence[float]) -> float:
    """Prometheus' histogram_quantile (promql/quantile.go, bucketQuantile) over cumulative
    bucket counts whose last bound is +Inf: the rank q*total is found in its bucket and
    interpolated linearly between the bucket's bounds (the first bucket starts at 0); a rank in
    the +Inf bucket returns the highest finite bound; no observations give NaN."""
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    if len(bounds) < 2 or not math.isinf(bounds[-1]):
        return math.nan
    total = counts[-1]
    if total == 0:
        return math.nan
    rank = q * total
    b = next(i for i, count in enumerate(counts) if count >= rank)
    if b == len(bounds) - 1:
        return bounds[-2]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start = bounds[b - 1] if b > 0 else 0.0
    below = counts[b - 1] if b > 0 else 0.0
    return start + (bounds[b] - start) * (rank - below) / (counts[b] - below)


def scraped_window(tick: float, range_s: float, scrape_s: float) -> tuple[float, float] | None:
    """The stretch of requests that rate(x[range]) sees at `tick` when counters are scraped every
    `scrape_s`: from the first to the last scrape inside (tick - range, tick]. rate()'s
    extrapolation to the full range scales every bucket alike, so it cancels in ratios and
    quantiles. None when fewer than two scrapes fall inside (Prometheus returns no value)."""
    last = math.floor(tick / scrape_s) * scrape_s
    first = math.floor((tick - range_s) / scrape_s) * scrape_s + scrape_s
    return (first, last) if last > first else None


# --- Flagger ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class FlaggerConfig:
    """A Canary's `analysis` block plus where Flagger's ticks and Prometheus' scrapes fall."""

    interval_s: float = 60.0  # analysis.interval (default 60s)
    threshold: int = 5  # analysis.threshold (default 1)
    max_weight: int = 50  # analysis.maxWeight
    step_weight: int = 10  # analysis.stepWeight
    success_rate_min: float = 99.0  # request-success-rate thresholdRange.min, percent
    duration_max_ms: float = 100.0  # request-duration thresholdRange.max, ms (P99)
    metric_interval_s: float = 60.0  # metrics[].interval (default 1m)
    scrape_s: float = 15.0  # Prometheus scrape interval of the Envoy sidecars
    first_tick_s: float = 30.0  # first controller tick after the deploy (the ticker's phase)


@dataclass(frozen=True)
class FlaggerCheck:
    t: float
    success_rate: float  # percent; NaN = no values
    p99_ms: float  # histogram_quantile value before Flagger truncates it; NaN = no values
    passed: bool


@dataclass(frozen=True)
class FlaggerOutcome:
    verdict: str  # "rollback", "promoted" or "running" (the trace ended first)
    t: float  # when Flagger decided (or the last tick)
    checks: tuple[FlaggerCheck, ...]


def flagger_check(canary: Requests, tick: float, config: FlaggerConfig) -> FlaggerCheck:
    """runBuiltinMetricChecks at one tick: request-success-rate = non-5xx / all * 100 and
    request-duration = histogram_quantile(0.99, sum(rate(bucket[interval])) by (le)) in ms,
    truncated to whole ms (time.Duration(int64(value))); a query with no value (no requests,
    NaN: providers.ErrNoValuesFound) fails the check like a breached threshold."""
    window = scraped_window(tick, config.metric_interval_s, config.scrape_s)
    lo, hi = canary.span(*window) if window else (0, 0)
    if hi == lo:
        return FlaggerCheck(tick, math.nan, math.nan, False)
    success_rate = 100.0 * sum(canary.ok[lo:hi]) / (hi - lo)
    p99 = histogram_quantile(0.99, ENVOY_BUCKETS_MS, cumulative_buckets(canary.ms[lo:hi]))
    passed = (success_rate >= config.success_rate_min and not math.isnan(p99)
              and int(p99) <= int(config.duration_max_ms))
    return FlaggerCheck(tick, success_rate, p99, passed)


def flagger_analysis(canary: Requests, deployed_at: float, end: float,
                     config: FlaggerConfig) -> FlaggerOutcome:
    """One canary rollout under Flagger's scheduler (progressive traffic shifting).

    Tick 1 detects the new revision and scales the canary up; tick 2 starts the analysis and
    sets the weight to stepWeight without a metric check (canaryWeight == 0 and iterations ==
    0). From tick 3 on, each tick first rolls back if failedChecks >= threshold, else runs the
    checks: a failure adds one to failedChecks (never reset by a later pass; only a new revision
    resets it) and holds the weight; a pass adds stepWeight, or promotes once the weight has
    reached maxWeight. So the rollback comes one interval after the threshold-th failure."""
    tick = deployed_at + config.first_tick_s + config.interval_s  # tick 2: weight -> stepWeight
    weight = config.step_weight
    failed = 0
    checks: list[FlaggerCheck] = []
    while tick + config.interval_s <= end:
        tick += config.interval_s
        if failed >= config.threshold:
            return FlaggerOutcome("rollback", tick, tuple(checks))
        check = flagger_check(canary, tick, config)
        checks.append(check)
        if not check.passed:
            failed += 1
        elif weight < config.max_weight:
            weight = min(100, weight + config.step_weight)
        else:
            return FlaggerOutcome("promoted", tick, tuple(checks))
    return FlaggerOutcome("running", tick, tuple(checks))


# --- Kayenta (NetflixACAJudge) ----------------------------------------------------------------

@dataclass(frozen=True)
class KayentaMetric:
    """One metric of a canary config: its group, the per-step aggregate it queries, and its
    analysisConfigurations.canary settings (defaults as in NetflixACAJudge)."""

    name: str
    group: str
    aggregate: str  # "mean_ms", "p99_ms" (histogram_quantile) or "error_percent"
    direction: str = "either"  # "increase", "decrease" or "either"
    allowed_increase: float = 1.0  # effectSize.allowedIncrease
    allowed_decrease: float = 1.0  # effectSize.allowedDecrease
    critical: bool = False


@dataclass(frozen=True)
class KayentaConfig:
    metrics: tuple[KayentaMetric, ...] = (
        KayentaMetric("latency-mean", "latency", "mean_ms", direction="increase"),
        KayentaMetric("latency-p99", "latency", "p99_ms", direction="increase"),
        KayentaMetric("error-rate", "errors", "error_percent", direction="increase"),
    )
    group_weights: tuple[tuple[str, float], ...] = (("latency", 50.0), ("errors", 50.0))
    pass_score: float = 95.0
    marginal_score: float = 75.0
    lifetime_s: float = 1800.0  # canary stage lifetime
    interval_s: float = 300.0  # canaryAnalysisInterval: one judgment per interval
    warmup_s: float = 0.0  # beginCanaryAnalysisAfter
    lookback_s: float = 0.0  # 0: each judgment covers everything since the start
    step_s: float = 10.0  # scope step: one data point per metric per step
    confidence: float = 0.98  # NetflixACAJudge: MannWhitneyClassifier(confLevel = 0.98)
    tolerance: float = 0.25  # ... (tolerance = 0.25) x |Hodges-Lehmann estimate|


def commons_percentile(values: Sequence[float], p: float) -> float:
    """Apache Commons Math StatUtils.percentile (default estimation): position p(n+1)/100,
    linear between neighbours, clamped to the extremes."""
    ordered = sorted(values)
    n = len(ordered)
    position = p * (n + 1) / 100
    if position < 1:
        return ordered[0]
    if position >= n:
        return ordered[-1]
    k = math.floor(position)
    return ordered[k - 1] + (position - k) * (ordered[k] - ordered[k - 1])


def remove_outliers(values: Sequence[float]) -> list[float]:
    """IQRDetector(factor = 3.0, reduceSensitivity = true): drop values outside
    [min(p1, Q1 - 3 IQR), max(p99, Q3 + 3 IQR)]."""
    if not values:
        return []
    q1, q3 = commons_percentile(values, 25), commons_percentile(values, 75)
    iqr = q3 - q1
    low = min(commons_percentile(values, 1), q1 - 3 * iqr)
    high = max(commons_percentile(values, 99), q3 + 3 * iqr)
    return [v for v in values if low <= v <= high]


def _signed_z(experiment: np.ndarray, control: np.ndarray, mu: float) -> float:
    """The continuity-corrected, tie-corrected normal statistic of the rank-sum test of
    (experiment - mu) against control, signed like W - n m / 2 (scipy gives |z| via its
    two-sided p-value)."""
    result = mannwhitneyu(experiment - mu, control, alternative="two-sided",
                          method="asymptotic", use_continuity=True)
    dz = float(result.statistic) - len(experiment) * len(control) / 2
    if dz == 0:
        return 0.0
    return math.copysign(float(norm.isf(float(result.pvalue) / 2)), dz)


def _root(experiment: np.ndarray, control: np.ndarray, diffs: np.ndarray, zq: float) -> float:
    """Smallest pairwise difference at which the statistic falls to zq or below (it only steps
    at pairwise differences): kayenta-mannwhitney MannWhitney.scala solves the same equation
    with a Brent solver between min and max difference, clamping to the ends."""
    if _signed_z(experiment, control, float(diffs[0])) <= zq:
        return float(diffs[0])
    if _signed_z(experiment, control, float(diffs[-1])) >= zq:
        return float(diffs[-1])
    lo, hi = 0, len(diffs) - 1  # z(diffs[lo]) > zq >= z(diffs[hi])
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _signed_z(experiment, control, float(diffs[mid])) > zq:
            lo = mid
        else:
            hi = mid
    return float(diffs[hi])


def mann_whitney_interval(experiment: Sequence[float], control: Sequence[float],
                          confidence: float) -> tuple[float, float, float]:
    """(lower, upper, estimate): the confidence interval of the location shift experiment -
    control by inverting the two-sided rank-sum test (R's wilcox.test, conf.int = TRUE, as
    ported in kayenta-mannwhitney), and the Hodges-Lehmann estimate (median of the pairwise
    differences)."""
    x, y = np.asarray(experiment, dtype=float), np.asarray(control, dtype=float)
    diffs = np.sort(np.subtract.outer(x, y).ravel())
    zq = float(norm.isf((1 - confidence) / 2))
    lower = _root(x, y, diffs, zq)
    upper = _root(x, y, diffs, -zq)
    return lower, upper, float(np.median(diffs))


def classify(control: Sequence[float], experiment: Sequence[float], metric: KayentaMetric,
             confidence: float = 0.98, tolerance: float = 0.25) -> tuple[str, bool]:
    """MannWhitneyClassifier.classify: (Pass | High | Low | Nodata, critical). High when the
    whole confidence interval lies above tolerance x |HL estimate| and mean(experiment) /
    mean(control) >= allowedIncrease (Low mirrored); identical or single-valued data pass."""
    if not experiment or not control:
        return "Nodata", metric.critical
    if sorted(experiment) == sorted(control) or len(set(experiment) | set(control)) == 1:
        return "Pass", False
    x, y = list(experiment), list(control)
    if len(set(x)) == 1 and len(set(y)) == 1:  # degenerate: Gaussian noise at 1e-5 scale
        rng = random.Random(0)
        x = [v + rng.gauss(0, abs(x[0]) * 1e-5) for v in x]
        y = [v + rng.gauss(0, abs(y[0]) * 1e-5) for v in y]
    lower, upper, estimate = mann_whitney_interval(x, y, confidence)
    bound = tolerance * abs(estimate)
    control_mean = sum(y) / len(y)
    deviation = 1.0 if control_mean == 0 else (sum(x) / len(x)) / control_mean
    if metric.direction in ("increase", "either") and lower > bound \
            and deviation >= metric.allowed_increase:
        return "High", metric.critical
    if metric.direction in ("decrease", "either") and upper < -bound \
            and deviation <= metric.allowed_decrease:
        return "Low", metric.critical
    return "Pass", False


def summary_score(results: Sequence[tuple[KayentaMetric, str, bool]],
                  group_weights: dict[str, float]) -> float:
    """WeightedSumScorer: per group, Pass / (Pass + High + Low) x 100; the summary is the
    weighted sum over groups with data (unweighted groups share what the weights leave of 100);
    a critical metric that is not Pass scores 0."""
    if any(critical and label != "Pass" for _, label, critical in results):
        return 0.0
    groups: dict[str, list[str]] = {}
    for metric, label, _ in results:
        groups.setdefault(metric.group, []).append(label)
    unweighted = [g for g in groups if g not in group_weights]
    spare = (100 - sum(group_weights.values())) / len(unweighted) if unweighted else 0.0
    score = 0.0
    for group, labels in groups.items():
        judged = [label for label in labels if label in ("Pass", "High", "Low")]
        if judged:
            score += 100 * judged.count("Pass") / len(judged) * group_weights.get(group, spare) / 100
    return score


def step_series(requests: Requests, start: float, end: float, step_s: float,
                aggregate: str) -> list[float]:
    """The metric store's series: one value per step over [start, end). Steps without requests
    give NaN, which NaNStrategy "none" (the default) replaces by 0 before judging."""
    series = []
    steps = int(round((end - start) / step_s))
    for k in range(steps):
        lo, hi = requests.span(start + k * step_s, start + (k + 1) * step_s)
        if hi == lo:
            series.append(0.0)
        elif aggregate == "mean_ms":
            series.append(sum(requests.ms[lo:hi]) / (hi - lo))
        elif aggregate == "p99_ms":
            series.append(histogram_quantile(0.99, ENVOY_BUCKETS_MS,
                                             cumulative_buckets(requests.ms[lo:hi])))
        elif aggregate == "error_percent":
            series.append(100.0 * (hi - lo - sum(requests.ok[lo:hi])) / (hi - lo))
        else:
            raise ValueError(f"unknown aggregate {aggregate!r}")
    return series


def judge(control: dict[str, list[float]], experiment: dict[str, list[float]],
          config: KayentaConfig) -> float:
    """NetflixACAJudge.judge over one scope: clean each series (outliers), classify, score."""
    results = []
    for metric in config.metrics:
        label, critical = classify(remove_outliers(control[metric.name]),
                                   remove_outliers(experiment[metric.name]), metric,
                                   config.confidence, config.tolerance)
        results.append((metric, label, critical))
    return summary_score(results, dict(config.group_weights))


@dataclass(frozen=True)
class KayentaOutcome:
    verdict: str  # "fail", "pass" or "running" (the trace ended first)
    t: float  # when the stage decided (or the last judgment)
    scores: tuple[float, ...]


def kayenta_analysis(baseline: Requests, canary: Requests, started_at: float, end: float,
                     config: KayentaConfig) -> KayentaOutcome:
    """A real-time Spinnaker canary stage: after the warm-up, one judgment every interval over
    [start, start + i x interval] (or the last `lookback`); a judgment scoring <= marginal
    stops the stage as failed at once (MonitorKayentaCanaryTask); after the last one the stage
    fails unless the final score is > marginal and >= pass (AggregateCanaryResultsTask)."""
    first = started_at + config.warmup_s
    runs = int(config.lifetime_s // config.interval_s)
    names = [m.name for m in config.metrics]
    control = {m.name: step_series(baseline, first, first + runs * config.interval_s,
                                   config.step_s, m.aggregate) for m in config.metrics}
    experiment = {m.name: step_series(canary, first, first + runs * config.interval_s,
                                      config.step_s, m.aggregate) for m in config.metrics}
    per_interval = int(round(config.interval_s / config.step_s))
    lookback = int(round(config.lookback_s / config.step_s))
    scores: list[float] = []
    for i in range(1, runs + 1):
        t = first + i * config.interval_s
        if t > end:
            return KayentaOutcome("running", t - config.interval_s, tuple(scores))
        stop = i * per_interval
        begin = max(0, stop - lookback) if lookback else 0
        score = judge({n: control[n][begin:stop] for n in names},
                      {n: experiment[n][begin:stop] for n in names}, config)
        scores.append(score)
        if score <= config.marginal_score:
            return KayentaOutcome("fail", t, tuple(scores))
    verdict = "pass" if scores[-1] >= config.pass_score else "fail"
    return KayentaOutcome(verdict, first + runs * config.interval_s, tuple(scores))
