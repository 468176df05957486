"""Resolver cases as data: tests/fixtures/resolve/<case>.yaml, evaluations in, choice and
reasons out. Each case file documents what it checks in its ``description``."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fibuild.errors import ResolveError
from fibuild.runtime.choose import wins
from fibuild.runtime.decisions import Accepted, BaseReporter, PolicySkipped, Rejected
from fibuild.runtime.resolve import Resolver, log_distance, policy_chain
from fibuild.runtime.table import ApplyTable, Candidate, build_table
from fibuild.spec.model import Evaluation, LatencyStats, Solution

CASES = Path(__file__).resolve().parents[2] / "fixtures" / "resolve"
DEVICE = "cpu-test-cpu"


def load_case(path: Path):
    case = yaml.safe_load(path.read_text())
    device = case.get("device", DEVICE)
    definition = "fixture_def"
    candidates = {}
    for s in case["solutions"]:
        sol = Solution(name=s["name"], definition=definition, language=s.get("language", "cuda"),
                       entry_point="kernel.py::run", sources=("kernel.py",))
        candidates[s["name"]] = Candidate(sol, s.get("digest", f"digest-{s['name']}"),
                                          unavailable=s.get("unavailable", ""),
                                          build_key=f"key-{s['name']}")
    digests = {n: c.digest for n, c in candidates.items()}
    evaluations = []
    for e in case["evaluations"]:
        status = e.get("status", "PASSED")
        latency = host = None
        spread = float(e.get("spread", 0.05))  # half-width of the p20..p80 band, a fraction of the median
        if status == "PASSED":
            m = float(e["median_us"])
            latency = LatencyStats(m, m * (1 - spread), float(e.get("p80_us", m * (1 + spread))), m, 100)
            if "host_us" in e:  # host time per call (CUDA records of schema 2)
                h = float(e["host_us"])
                host = LatencyStats(h, h * 0.98, h * 1.02, h, 100, h * 0.97, h * 0.99, h * 1.01)
        axes = {k: int(v) for k, v in e["axes"].items()}
        ref = None
        if "reference_us" in e:  # the reference's latency, measured beside the solution
            r = float(e["reference_us"])
            ref = LatencyStats(r, r * 0.95, r * 1.05, r, 100)
        evaluations.append(Evaluation(
            definition=definition, solution=e["solution"],
            solution_digest=e.get("digest", digests.get(e["solution"], "")), build_key="",
            workload_uuid=e.get("workload", "w-" + "-".join(f"{k}{v}" for k, v in sorted(axes.items()))),
            axes=axes, status=status, device=e.get("device", device), latency=latency,
            reference_latency=ref, host_latency=host))
    table = build_table(definition, case["var_axes"], device, candidates, evaluations,
                        baselines=[case["baseline"]] if isinstance(case.get("baseline"), str)
                        else case.get("baseline", ()))
    query = case["query"]
    key = tuple(query["axes"][a] for a in case["var_axes"])
    return case, table, key, query


def find(decisions, spec):
    """The first decision matching a fixture's ``{accepted|rejected|policy: name, reason}``."""
    reason = spec.get("reason", "")
    for d in decisions:
        if "accepted" in spec and isinstance(d, Accepted) and d.solution == spec["accepted"]:
            return d if reason in d.reason else None
        if "rejected" in spec and isinstance(d, Rejected) and d.solution == spec["rejected"]:
            return d if reason in d.reason else None
        if "policy" in spec and isinstance(d, PolicySkipped) and d.policy == spec["policy"]:
            return d if reason in d.reason else None
    return None


class Recorder(BaseReporter):
    def __init__(self):
        self.events = []

    def starting(self, definition, key, policies):
        self.events.append(("starting", key, policies))

    def trying_policy(self, policy):
        self.events.append(("trying", policy))

    def rejecting(self, decision):
        self.events.append(("rejecting", decision))

    def accepting(self, decision):
        self.events.append(("accepting", decision))

    def ending(self, resolution):
        self.events.append(("ending", resolution.solution_name))


@pytest.mark.parametrize("path", sorted(CASES.glob("*.yaml")), ids=lambda p: p.stem)
def test_case(path):
    case, table, key, query = load_case(path)
    expect = case["expect"]
    resolver = Resolver(table)
    kwargs = dict(policy=query.get("policy", "nearest"), strict=query.get("strict", False),
                  mode=query.get("mode", "eager"))
    if "error" in expect:
        with pytest.raises(ResolveError) as info:
            resolver.resolve(key, **kwargs)
        assert expect["error"] in str(info.value)
        decisions = info.value.decisions
    else:
        recorder = Recorder()
        res = resolver.resolve(key, reporter=recorder, **kwargs)
        chosen = res.solution.name if res.solution is not None else None
        assert chosen == expect["solution"], res.explain()
        assert res.policy == expect.get("policy", res.policy)
        if "latency_us" in expect:
            assert res.latency_us == pytest.approx(expect["latency_us"])
        if "evaluated_key" in expect:
            assert res.evaluated_key == tuple(expect["evaluated_key"])
        if "verdict" in expect:
            assert res.verdict == expect["verdict"], res.explain()
        if chosen is not None:
            assert res.build_key == f"key-{chosen}"
        else:
            assert res.build_key is None
        decisions = res.decisions
        # Exactly one acceptance, and the reporter saw the same trace as the resolution holds.
        assert sum(isinstance(d, Accepted) for d in decisions) == 1
        seen = [e[1] for e in recorder.events if e[0] in ("rejecting", "accepting")]
        assert seen == list(decisions)
        assert recorder.events[-1] == ("ending", res.solution_name)
        # Every candidate is accounted for in the trace.
        named = {d.solution for d in decisions if not isinstance(d, PolicySkipped)}
        assert set(table.candidates) <= named
    for spec in expect["decisions"]:
        assert find(decisions, spec) is not None, f"{spec} not in:\n" + "\n".join(map(str, decisions))
    # Deterministic: the same inputs give the same trace.
    if "error" not in expect:
        again = Resolver(load_case(path)[1]).resolve(key, **kwargs)
        assert again.decisions == res.decisions


def test_cases_exist():
    assert len(list(CASES.glob("*.yaml"))) >= 7


def test_policy_chain():
    assert policy_chain("exact") == ("exact", "nearest", "def_best", "baseline", "reference")
    assert policy_chain("nearest") == ("nearest", "def_best", "baseline", "reference")
    assert policy_chain("def_best", strict=True) == ("def_best",)
    with pytest.raises(ResolveError, match="unknown policy 'fastest'"):
        policy_chain("fastest")


def test_log_distance():
    assert log_distance((64,), (32,)) == pytest.approx(0.6931, abs=1e-4)
    assert log_distance((64, 512), (32, 1024)) == pytest.approx(2 * 0.6931, abs=1e-4)
    assert log_distance((0,), (1,)) == 0.0


def test_key_arity_is_checked():
    _, table, _, _ = load_case(CASES / "exact_hit.yaml")
    with pytest.raises(ResolveError, match="has 2 values"):
        Resolver(table).resolve((32, 1))


def test_exclude_reason_is_in_trace():
    _, table, key, _ = load_case(CASES / "exact_hit.yaml")
    res = Resolver(table).resolve(key, exclude={"cuda_fast": "build failed: boom"})
    assert res.solution.name == "triton_mid"
    assert Rejected("cuda_fast", "build failed: boom") in res.decisions


def test_table_json_roundtrip():
    _, table, key, _ = load_case(CASES / "nearest_two_axes.yaml")

    def rebuild(manifest, path):
        return Solution(name=manifest["name"], definition=manifest["definition"],
                        language=manifest["language"], entry_point=manifest["entry_point"],
                        sources=tuple(manifest["sources"]))

    import json

    data = json.loads(json.dumps(table.to_json()))
    again = ApplyTable.from_json(data, rebuild)
    assert again.ranked == table.ranked and again.reference == table.reference
    assert again.failed == table.failed and again.baseline == table.baseline
    assert Resolver(again).resolve(key).decisions == Resolver(table).resolve(key).decisions
    # Host times and quartiles survive too (the eager mode ranks by them).
    _, table, key, _ = load_case(CASES / "eager_host_cost.yaml")
    again = ApplyTable.from_json(json.loads(json.dumps(table.to_json())), rebuild)
    assert again.ranked == table.ranked and again.baseline == "flashinfer"
    assert Resolver(again).resolve(key).decisions == Resolver(table).resolve(key).decisions


def test_table_wins_and_failures():
    _, table, _, _ = load_case(CASES / "all_failing.yaml")
    assert table.failures == {"cuda_bad": "INCORRECT_NUMERICAL on 3/4 workloads",
                              "triton_bad": "RUNTIME_ERROR on 2/2 workloads"}
    assert wins(table, "eager", {}) == {"cuda_bad": 1}
    assert table.failed["cuda_bad"] == frozenset({(1,), (32,), (128,)})
