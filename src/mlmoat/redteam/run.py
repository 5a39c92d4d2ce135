"""The red-team run: every attack against every model and defence configuration; the report."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm  # type: ignore[import-untyped]

from mlmoat.redteam import attacks, robustness
from mlmoat.redteam.cases import ModelCase
from mlmoat.redteam.stack import LocalStack, StackTarget
from mlmoat.redteam.target import ServedTarget
from security.defences import SqueezeConfig, load_defences
from security.extraction import MonitorReference
from security.smoothing import load_smoothing

# Defence configurations: (output policy, squeeze policy). "rounded2" is the deployment's
# default (SECURITY_DEFAULT_OUTPUT=probabilities:2, SECURITY_SQUEEZE_POLICY=flag); "raw" turns
# every output and input defence off; "dp" is the default configuration on the DP model.
CONFIGS = {
    "raw": ("probabilities:6", "off"),
    "rounded2": ("probabilities:2", "flag"),
    "rounded2_nosqueeze": ("probabilities:2", "off"),
    "label": ("label", "flag"),
    "threshold": ("probabilities:2:min0.99", "flag"),
}
DP_CONFIG = ("probabilities:2", "flag")
# Measured in-process for membership inference and accuracy only: the output policy an operator
# sets for a model that memorises its training rows (label only), without relying on squeezing.
INPROC_CONFIGS = {"label_nosqueeze": ("label", "off")}


@dataclass(frozen=True)
class Plan:
    """How much of each experiment to run (the default run and ``--quick``).

    ``extraction`` names the ``config/kind`` extraction curves to measure (None: every one);
    ``robustness`` the robustness table's configurations (None: every one);
    ``inversion_queries`` 0 leaves model inversion out.
    """

    counts: tuple[int, ...]
    detection_seeds: int
    detection_rows: int
    benign_keys: int
    benign_rows: int
    hsj_rows: int
    hsj_iter: int
    inversion_queries: int
    extraction: tuple[str, ...] | None = None
    robustness: tuple[str, ...] | None = None


# HopSkipJump attacks 200 rows per model and defence configuration (the robustness table, with
# Wilson intervals): with 30 a rate's 95% interval is about +-0.15 wide, too wide to compare.
FULL = Plan((10, 25, 50, 100, 200, 400, 800), 10, 300, 20, 2000, 200, 10, 800)
# make test's run: every target still measured (3 seeded detection runs per attack, 2 benign keys
# of 1,000 rows = 5 monitor windows each, HopSkipJump as in the default run since it is
# in-process), but only the extraction curves the tests read and no inversion.
QUICK = Plan(
    (10, 50, 200),
    3,
    300,
    2,
    1000,
    30,
    10,
    0,
    ("raw/uniform", "label/uniform", "rounded2/boundary"),
    # Each defence alone (the combinations are the full run's): 30 rows per configuration.
    ("none", "squeeze flag", "squeeze refuse", "smoothing", "adversarial training"),
)
# Benign keys drain the queue every 10 requests, as the SQS event source batches for them.
BENIGN_DRAIN_EVERY = 10


@dataclass(frozen=True)
class Armoury:
    """One model's calibrated defences."""

    squeeze: SqueezeConfig
    monitor: MonitorReference


def armoury(model_dir: Path, case: ModelCase) -> Armoury:
    """Load the model's shipped defences.json."""
    defences = load_defences(model_dir / case.name / "defences.json")
    return Armoury(defences.squeeze, MonitorReference.from_dict(case.name, defences.monitor))


def robust_arms(model_dir: Path, case: ModelCase) -> robustness.Arms:
    """The model's squeezing grid and smoothing settings, from its shipped defences.json."""
    path = model_dir / case.name / "defences.json"
    return robustness.Arms(load_defences(path).squeeze, load_smoothing(path))


def run(
    cases: list[ModelCase],
    dp_cases: dict[str, ModelCase],
    model_dir: Path,
    *,
    plan: Plan,
    seed: int,
    audit_path: Path,
    adv_cases: dict[str, ModelCase] | None = None,
) -> dict[str, Any]:
    """Run every experiment through the real handlers; return the JSON-able results.

    ``adv_cases`` maps a model's name to its adversarially trained variant (in ``model_dir``),
    which the robustness table measures beside it.
    """
    adv_cases = adv_cases or {}
    started = time.time()
    results: dict[str, Any] = {"seed": seed, "plan": plan.__dict__, "models": {}}
    steps = len(cases) * 6
    with (
        LocalStack(model_dir=model_dir, audit_path=audit_path) as stack,
        tqdm(total=steps, desc="redteam", unit="step") as bar,
    ):
        for case in cases:
            arms = armoury(model_dir, case)
            out: dict[str, Any] = {"version": case.version}
            timings: dict[str, float] = {}
            out["seconds"] = timings
            mark = time.time()
            configs: dict[str, tuple[ModelCase, str, str]] = {
                name: (case, policy, squeeze) for name, (policy, squeeze) in CONFIGS.items()
            }
            if case.name in dp_cases:
                configs["dp"] = (dp_cases[case.name], *DP_CONFIG)

            def target(
                config: str,
                configs: dict[str, tuple[ModelCase, str, str]] = configs,
                **kw: Any,
            ) -> StackTarget:
                model, policy, squeeze = configs[config]
                kw.setdefault("squeeze_policy", squeeze)
                return StackTarget(stack, model, policy, **kw)

            def local(
                policy: str, squeeze: str, config: SqueezeConfig, case: ModelCase = case, **kw: Any
            ) -> ServedTarget:
                return ServedTarget(case, policy, squeeze_policy=squeeze, squeeze=config, **kw)

            def inproc(
                config: str, configs: dict[str, tuple[ModelCase, str, str]] = configs
            ) -> ServedTarget:
                model, policy, squeeze = configs[config]
                grid = load_defences(model_dir / model.name / "defences.json").squeeze
                return ServedTarget(model, policy, squeeze_policy=squeeze, squeeze=grid)

            bar.set_postfix_str(f"{case.name}: extraction")
            counts = list(plan.counts)
            extraction: dict[str, Any] = {}
            for config in configs:
                for kind in ("uniform", "boundary"):
                    if plan.extraction is not None and f"{config}/{kind}" not in plan.extraction:
                        continue
                    curve = attacks.extraction_curve(target(config), kind, counts, seed)
                    extraction[f"{config}/{kind}"] = {
                        "curve": curve,
                        "queries_for_95": {
                            k: attacks.queries_for(v, counts) for k, v in curve.items()
                        },
                    }
            out["extraction"] = {"counts": counts, "results": extraction}
            bar.update()
            timings[bar.postfix.split(": ")[-1]] = round(time.time() - mark, 1)
            mark = time.time()

            bar.set_postfix_str(f"{case.name}: detection")
            detection: dict[str, list[int | None]] = {}
            flag_records: list[bool] = []
            variants = [
                ("uniform", "uniform", 1, 0),
                ("boundary", "boundary", 100, 0),
                ("uniform_batches_of_10", "uniform", 10, 50),
            ]
            for name, kind, batch, offset in variants:
                detection[name] = []
                for s in range(plan.detection_seeds):
                    attacker = target(
                        "rounded2", monitored=True, stop_when_flagged=True, batch_rows=batch
                    )
                    row = attacks.detection_row(
                        attacker, kind, plan.detection_rows, seed + offset + s
                    )
                    detection[name].append(row)
                    if row is not None:
                        # The monitor's flag must be on the key item itself, not only in its state.
                        flags = stack.key_item(attacker.principal_id).get("flags") or set()
                        flag_records.append(any(f.startswith("extraction:") for f in flags))
            out["detection"] = detection
            out["flags_written"] = {"flagged": len(flag_records), "on_key": sum(flag_records)}
            # The adaptive attacker (queries from the data's own distribution): its clone's
            # fidelity by rows, and the row at which the monitor flags it, if ever.
            from mlmoat.redteam.budget import adaptive_curve

            flagged_at = []
            for s in range(plan.detection_seeds):
                attacker = target("rounded2", monitored=True, stop_when_flagged=True, batch_rows=1)
                flagged_at.append(
                    attacks.detection_row(attacker, "adaptive", plan.detection_rows, seed + 300 + s)
                )
            out["adaptive"] = {
                **adaptive_curve(
                    case,
                    policy="probabilities:2",
                    seeds=plan.detection_seeds,
                    seed=seed + 400,
                    counts=tuple(c for c in (5, 10, 20, 50, 100, 200) if c <= plan.detection_rows),
                ),
                "flagged_at": flagged_at,
                "detection_rows": plan.detection_rows,
            }
            bar.update()
            timings[bar.postfix.split(": ")[-1]] = round(time.time() - mark, 1)
            mark = time.time()

            bar.set_postfix_str(f"{case.name}: benign")
            out["benign_false_flags"] = []
            # Rows the monitor observed per benign key: the check is only as good as its stream.
            out["benign_rows_monitored"] = []
            for k in range(plan.benign_keys):
                caller = target(
                    "rounded2",
                    monitored=True,
                    stop_when_flagged=True,
                    batch_rows=50,
                    drain_every=BENIGN_DRAIN_EVERY,
                )
                out["benign_false_flags"].append(
                    attacks.benign_flag_row(caller, plan.benign_rows, seed + 1000 + k)
                )
                out["benign_rows_monitored"].append(caller.state.rows_seen)
            bar.update()
            timings[bar.postfix.split(": ")[-1]] = round(time.time() - mark, 1)
            mark = time.time()

            bar.set_postfix_str(f"{case.name}: membership")
            # In-process (same Squeezer and output-policy code as the handler): through the
            # handler, every batch holding one out-of-envelope held-out row is refused and must
            # be resent row by row, which costs minutes per model here.
            for name, (policy, squeeze) in INPROC_CONFIGS.items():
                configs[name] = (case, policy, squeeze)
            out["membership"] = {
                config: attacks.membership_inference(inproc(config), seed) for config in configs
            }
            out["accuracy"] = {config: attacks.accuracy(inproc(config)) for config in configs}
            for name in INPROC_CONFIGS:
                del configs[name]
            bar.update()
            timings[bar.postfix.split(": ")[-1]] = round(time.time() - mark, 1)
            mark = time.time()

            bar.set_postfix_str(f"{case.name}: hopskipjump")
            adv = adv_cases.get(case.name)
            table = robustness.measure(
                case,
                robust_arms(model_dir, case),
                (adv, robust_arms(model_dir, adv)) if adv is not None else None,
                rows=plan.hsj_rows,
                seed=seed,
                max_iter=plan.hsj_iter,
                configs=plan.robustness,
            )
            out["robustness"] = table
            # The squeeze policies' rows of the table are the HopSkipJump figures of issue 5.
            hsj: dict[str, Any] = {
                "off": table["none"],
                "flag": table["squeeze flag"],
                "refuse": table["squeeze refuse"],
            }
            hsj["false_detections"] = attacks.squeeze_false_detections(
                local("label", "refuse", arms.squeeze, batch_rows=1), arms.squeeze, seed + 2000
            )
            width = float(case.upper[0] - case.lower[0]) or 1.0
            hsj["levels"] = round(width / arms.squeeze.step[0])
            hsj["threshold"] = arms.squeeze.threshold
            out["hopskipjump"] = hsj
            bar.update()
            timings[bar.postfix.split(": ")[-1]] = round(time.time() - mark, 1)
            mark = time.time()

            bar.set_postfix_str(f"{case.name}: inversion")
            out["inversion"] = (
                {
                    config: attacks.inversion_transfer(
                        target(config), queries=plan.inversion_queries, seed=seed
                    )
                    for config in ("rounded2", "label")
                }
                if plan.inversion_queries
                else {}
            )
            bar.update()
            timings[bar.postfix.split(": ")[-1]] = round(time.time() - mark, 1)
            mark = time.time()
            results["models"][case.name] = out
    results["elapsed_seconds"] = round(time.time() - started, 1)
    return results


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue 5, measured: name, figure, met."""
    rows = []
    for name, out in results["models"].items():
        uni = out["detection"]["uniform"]
        hit = sum(1 for r in uni if r is not None and r <= 100)
        rows.append(
            _target(
                name,
                "uniform extraction flagged within 100 rows in >= 9/10 runs",
                f"{hit}/{len(uni)} (rows: {_fmt_rows(uni)})",
                hit >= 9 * len(uni) / 10,
            )
        )
        batches = out["detection"]["uniform_batches_of_10"]
        hit_b = sum(1 for r in batches if r is not None and r <= 100)
        rows.append(
            _target(
                name,
                "uniform extraction in batches of 10, within 100 rows, >= 9/10",
                f"{hit_b}/{len(batches)} (rows: {_fmt_rows(batches)})",
                hit_b >= 9 * len(batches) / 10,
            )
        )
        bnd = out["detection"]["boundary"]
        hit2 = sum(1 for r in bnd if r is not None and r <= 300)
        rows.append(
            _target(
                name,
                "boundary-probing extraction flagged within 300 rows",
                f"{hit2}/{len(bnd)} (rows: {_fmt_rows(bnd)})",
                hit2 == len(bnd),
            )
        )
        ff = out["benign_false_flags"]
        flagged = sum(1 for r in ff if r is not None)
        rows.append(
            _target(
                name,
                "zero false flags on benign keys",
                f"{flagged} of {len(ff)} keys flagged",
                flagged == 0,
            )
        )
        auc = out["membership"]["rounded2"]["auc"]
        raw = out["membership"]["raw"]["auc"]
        rows.append(
            _target(
                name,
                "MIA AUC <= 0.55 under the default policy (probabilities:2)",
                f"{auc:.3f} (raw {raw:.3f})",
                auc <= 0.55,
            )
        )
        hsj = out["hopskipjump"]
        base = hsj["off"]["success_rate"]
        flag, refuse = hsj["flag"]["success_rate"], hsj["refuse"]["success_rate"]
        fd = hsj["false_detections"]["held_out"]
        figure = f"{base:.2f} -> flag {flag:.2f} / refuse {refuse:.2f}; FD {fd:.3f}"
        if base == 0:
            # HopSkipJump never succeeded within 5% undefended: nothing to halve.
            met: bool | None = None
        else:
            met = min(flag, refuse) <= base / 2 and fd <= 0.05
        rows.append(
            _target(
                name, "squeezing halves HopSkipJump success (<=5% range) at <=5% FD", figure, met
            )
        )
        if name in _ROBUSTNESS_TARGET_MODELS and "robustness" in out:
            rows.append(robustness.target(name, out["robustness"]))
    return rows


# Issue 16's robustness target is set for the breast-cancer models; iris's undefended rate is a
# handful of rows, too few to halve with any confidence.
_ROBUSTNESS_TARGET_MODELS = ("breast-cancer", "breast-cancer-forest")


def _target(model: str, target: str, figure: str, met: bool | None) -> dict[str, Any]:
    # met is None when the measurement cannot decide the target (reported as n/a).
    return {"model": model, "target": target, "measured": figure, "met": met}


def _fmt_rows(values: list[int | None]) -> str:
    return ", ".join("-" if v is None else str(v) for v in values)


def write_json(results: dict[str, Any], out: Path) -> Path:
    """Write results.json."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    path.write_text(json.dumps(results, indent=1, sort_keys=True, default=_jsonable) + "\n")
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(type(value).__name__)
