"""``mlmoat models import|check|list|show|remove``: the served models under ``models/``.

``import NAME`` turns a user's fitted classifier (or ONNX file) and its CSV into
``models/NAME/`` (``mlmoat.models_import``): the next ``make build`` / ``make local`` /
``sam deploy`` serves it at ``/models/NAME/predict`` with squeezing, smoothing and the
extraction monitor calibrated on the user's data. Nothing is written unless the converted graph
agrees with the estimator on every held-out row. ``check`` verifies every model directory
(``mlmoat.models_check``; ``make build`` runs it); ``list`` and ``show`` read what is there;
``remove`` deletes a model's directory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mlmoat.models_columns import FrameEstimator, category_bounds, feature_sections

_REPO_MODELS = Path(__file__).resolve().parents[2] / "models"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlmoat models", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    imp = sub.add_parser(
        "import",
        help="import a fitted classifier and its CSV as models/NAME/",
        description="Import a fitted scikit-learn classifier (or an ONNX file) and its data as "
        "models/NAME/ (model.onnx, manifest.json, defences.json).",
    )
    imp.add_argument("name", help="the model's name: [a-z0-9][a-z0-9-]*, its route segment")
    source = imp.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--estimator",
        type=Path,
        help="a fitted estimator or pipeline: .skops (skops' safe loader) or .joblib/.pkl "
        "(only with --allow-pickle)",
    )
    source.add_argument("--onnx", type=Path, help="a model already exported to ONNX (no ZipMap)")
    imp.add_argument(
        "--allow-pickle",
        action="store_true",
        help="load a .joblib/.pkl file: unpickling RUNS CODE from the file, so only for files "
        "you made yourself",
    )
    imp.add_argument(
        "--trust",
        default="",
        help="comma-separated types a .skops file may load beyond skops' defaults",
    )
    imp.add_argument("--data", type=Path, required=True, help="CSV with a header row")
    imp.add_argument("--target", required=True, help="the label column of --data")
    imp.add_argument("--features", help="comma-separated feature columns, in the model's order")
    imp.add_argument("--test-data", type=Path, help="held-out CSV (default: split --data)")
    imp.add_argument("--test-fraction", type=float, default=0.3)
    imp.add_argument("--seed", type=int, default=0, help="split and parity-sample seed")
    imp.add_argument("--description", default="", help="one line for the manifest")
    imp.add_argument("--model-dir", type=Path, default=_REPO_MODELS, help="default: models/")
    imp.add_argument("--force", action="store_true", help="replace an existing models/NAME/")
    imp.add_argument(
        "--adversarial",
        action="store_true",
        help="re-fit a clone of the estimator on the training rows augmented with adversarial "
        "examples (mlmoat.adversarial: PGD for a StandardScaler+LogisticRegression pipeline, "
        "HopSkipJump otherwise) and serve that; the manifest records how",
    )
    imp.add_argument(
        "--max-fidelity",
        type=float,
        default=0.9,
        help="print the budget that keeps an adaptive clone below this agreement (default 0.9)",
    )
    _settings_options(imp)
    sub.add_parser(
        "check",
        help="verify every model directory (hash, graph, defences, monitor, parity)",
        add_help=False,
    )
    for name, help_ in (("list", "list the models"), ("show", "show one model")):
        p = sub.add_parser(name, help=help_)
        if name == "show":
            p.add_argument("name")
        p.add_argument("--model-dir", type=Path, default=_REPO_MODELS)
    rb = sub.add_parser(
        "recommend-budget",
        help="the per-principal budget that keeps an adaptive clone below a fidelity",
        description="Measure an adaptive extraction (queries from the data's own distribution) "
        "and print the largest budget (rows per principal) at which the clone's agreement with "
        "the served model stays below --max-fidelity (mlmoat.redteam.budget).",
    )
    rb.add_argument("name")
    rb.add_argument("--max-fidelity", type=float, required=True, help="e.g. 0.9")
    rb.add_argument(
        "--policy",
        help="the output policy served: label | probabilities:2 for a classifier (default "
        "label; fidelity is label agreement), value:N | buckets:K for a regressor (default "
        "value:2; fidelity is the clone's R^2)",
    )
    rb.add_argument("--data", type=Path, help="an imported model's CSV (checked by hash)")
    rb.add_argument("--seeds", type=int, default=5)
    rb.add_argument("--model-dir", type=Path, default=_REPO_MODELS)
    st = sub.add_parser(
        "set",
        help="change a model's own settings (models/NAME/settings.json)",
        description="Set or unset one model's output policy, squeeze policy, envelope margin or "
        "row cap; the deployment's values apply to what is not set, and mlmoat config set "
        "--model overrides both at run time.",
    )
    st.add_argument("name")
    st.add_argument("--model-dir", type=Path, default=_REPO_MODELS)
    _settings_options(st)
    st.add_argument(
        "--unset",
        action="append",
        default=[],
        choices=("output_policy", "squeeze_policy", "envelope_margin", "max_rows"),
        help="back to the deployment's value; repeatable",
    )
    rm = sub.add_parser("remove", help="delete models/NAME/")
    rm.add_argument("name")
    rm.add_argument("--model-dir", type=Path, default=_REPO_MODELS)
    rm.add_argument("--yes", action="store_true", help="required: removing cannot be undone")
    return parser


def _settings_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output-policy",
        help="the most any caller sees of this model: label | probabilities:N[:topK][:minT] "
        "(classifiers) | value:N | buckets:K (regressors)",
    )
    parser.add_argument("--squeeze-policy", choices=("off", "flag", "refuse"))
    parser.add_argument(
        "--envelope-margin", type=float, help="validation margin, fraction of each range (0-1)"
    )
    parser.add_argument("--max-rows", type=int, help="rows per request for this model")


def _settings_from(args: argparse.Namespace, name: str, current: Any) -> Any:
    """The model's settings after ``args`` (raises ``ModelIntegrityError`` when invalid)."""
    from security.model_settings import FIELDS, parse_settings

    document = current.to_dict(name)
    for field in FIELDS:
        value = getattr(args, field, None)
        if value is not None:
            document[field] = value
    for field in getattr(args, "unset", []):
        document.pop(field, None)
    return parse_settings(document, name=name)


def write_settings(directory: Path, settings: Any) -> Path | None:
    """Write ``settings.json`` (removed when nothing is set); the path written, if any."""
    from security.model_settings import SETTINGS_FILE

    path = directory / SETTINGS_FILE
    document = settings.to_dict(directory.name)
    if len(document) == 2:  # schema_version and model only: nothing of the model's own
        path.unlink(missing_ok=True)
        return None
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def import_model(args: argparse.Namespace) -> dict[str, Any]:
    """Run the import; return the summary printed (raises ``ImportRefused``)."""
    from mlmoat import models_import as mi
    from mlmoat.redteam.calibrate import calibrate_case
    from mlmoat.redteam.cases import ModelCase
    from mlmoat.train import ONNX_FILE, ONNX_OPSETS, _opsets_of, _round, manifest_bytes
    from security.errors import ModelIntegrityError
    from security.model import Manifest, ServedModel
    from security.model_settings import ModelSettings

    if not mi_valid_name(args.name):
        raise mi.ImportRefused("the name must match [a-z0-9][a-z0-9-]{0,62}")
    target_dir = args.model_dir / args.name
    if target_dir.exists() and not args.force:
        raise mi.ImportRefused(f"{target_dir} exists: choose another name or add --force")
    try:
        own = _settings_from(args, args.name, ModelSettings())
    except ModelIntegrityError as exc:
        raise mi.ImportRefused(f"settings: {exc.detail}") from exc
    features = [f.strip() for f in args.features.split(",")] if args.features else None
    estimator: Any | None = None
    adversarial: dict[str, Any] | None = None
    if args.adversarial and args.estimator is None:
        raise mi.ImportRefused("--adversarial re-fits the estimator: give it with --estimator")
    if args.estimator is not None:
        trust = [t.strip() for t in args.trust.split(",") if t.strip()]
        estimator, fmt = mi.load_estimator(
            args.estimator, allow_pickle=args.allow_pickle, trust=trust
        )
    data, test, found = _read_data(args, features, estimator)
    if estimator is not None:
        from mlmoat import models_regress as mr

        if mr.is_regressor(estimator):
            return mr.import_regressor(args, data, test, estimator, fmt, own)
    x_train, y_train, x_test, y_test = mi.split(
        data, test=test, test_fraction=args.test_fraction, seed=args.seed
    )
    lower, upper = category_bounds(x_train.min(axis=0), x_train.max(axis=0), data.categories)
    description = args.description or f"Imported from {data.file_name} (target {args.target})."
    # The parity reference: the pipeline itself, fed DataFrames when it has categorical columns.
    reference: Any = None
    if estimator is not None:
        classes = mi.check_classifier(estimator, len(data.columns))
        reference = FrameEstimator(estimator, data.columns, data.categories) if found else estimator
        if args.adversarial and found:
            raise mi.ImportRefused("--adversarial supports numeric features only")
        if args.adversarial:
            estimator, adversarial = _adversarial(
                estimator, args.seed, x_train, y_train, x_test, y_test
            )
            description += f" Adversarially trained ({adversarial['attack']})."
            reference = estimator
        mixed = {"data": data} if data.categories else {}
        onnx_bytes = mi.convert(
            args.name, estimator, len(data.columns), len(classes), description, **mixed
        )
        source_name = args.estimator.name
    else:
        fmt, source_name = "onnx", args.onnx.name
        onnx_bytes = args.onnx.read_bytes()
        classes = mi.onnx_classes(onnx_bytes)
    input_name, label_out, proba_out = mi.onnx_outputs(onnx_bytes, len(data.columns), len(classes))
    proba_test = mi.onnx_probabilities(onnx_bytes, input_name, proba_out, x_test)
    if estimator is not None:
        failures = mi.parity_failures(reference, proba_test, x_test, classes)
        if failures:
            raise mi.ImportRefused(
                f"the ONNX graph disagrees with the estimator on {len(failures)} held-out rows "
                f"(tolerance {mi.PARITY_TOLERANCE}); nothing written:\n  " + "\n  ".join(failures)
            )
    labels_test = np.asarray(classes)[proba_test.argmax(axis=1)]
    accuracy = float((labels_test == np.asarray([str(v) for v in y_test])).mean())
    index = {c: i for i, c in enumerate(classes)}
    picked = proba_test[np.arange(len(y_test)), [index.get(str(v), 0) for v in y_test]]
    log_loss = float(-np.log(np.clip(picked, 1e-15, 1.0)).mean())
    digest = hashlib.sha256(onnx_bytes).hexdigest()
    manifest: dict[str, Any] = {
        "schema_version": 1,
        "name": args.name,
        "version": f"{args.name}-{digest[:12]}",
        "description": description,
        "estimator": mi.describe(estimator) if estimator is not None else "ONNX (imported)",
        "framework": _framework(onnx_bytes, ONNX_OPSETS, _opsets_of, imported=fmt),
        "feature_names": list(data.feature_names),
        "classes": list(classes),
        **feature_sections(data.feature_names, data.categories),
        "envelope": {
            name: {"min": float(lower[i]), "max": float(upper[i])}
            for i, name in enumerate(data.feature_names)
        },
        "metrics": {
            "accuracy": _round(accuracy),
            "log_loss": _round(log_loss),
            "n_train": int(len(y_train)),
            "n_test": int(len(y_test)),
        },
        "train_split": mi.split_record(data, test, args, stratified=test is None),
        "imported": {"source": source_name, "format": fmt},
        "dp_epsilon": None,
        "dp_data_norm": None,
        "onnx": {
            "file": ONNX_FILE,
            "sha256": digest,
            "size_bytes": len(onnx_bytes),
            "input": input_name,
            "input_dtype": "float32",
            "outputs": {"label": label_out, "probabilities": proba_out},
        },
    }
    if adversarial is not None:
        manifest["adversarial_training"] = adversarial
        manifest["metrics"]["undefended_accuracy"] = adversarial["undefended_accuracy"]
        manifest["metrics"]["adversarial_accuracy_cost"] = _round(
            adversarial["undefended_accuracy"] - accuracy
        )
    manifest["parity"] = mi.parity_sample(
        reference,
        lambda rows: mi.onnx_probabilities(onnx_bytes, input_name, proba_out, rows),
        lower,
        upper,
        args.seed,
        categorical=sorted(data.categories),
    )
    served = ServedModel(Manifest.from_dict(json.loads(manifest_bytes(manifest))), onnx_bytes)
    case = ModelCase(
        name=args.name,
        version=manifest["version"],
        classes=classes,
        lower=lower,
        upper=upper,
        predict_proba=served.predict_proba,
        x_train=x_train,
        y_train=np.asarray([str(v) for v in y_train]),
        x_test=x_test,
        y_test=np.asarray([str(v) for v in y_test]),
        categorical=tuple(sorted(data.categories)),
    )
    defences = calibrate_case(case)
    from mlmoat.redteam.budget import recommend

    budget = recommend(
        case,
        max_fidelity=args.max_fidelity,
        policy="label" if own.output_policy == "label" else "probabilities:2",
        seeds=3,
    )
    target_dir = stage_model(args, onnx_bytes, manifest_bytes(manifest), defences, own)
    return {
        "model": args.name,
        "version": manifest["version"],
        "path": str(target_dir),
        "estimator": manifest["estimator"],
        "format": fmt,
        # In the model's order: feature name (the API's) <- CSV column.
        "features": [[n, c] for n, c in zip(data.feature_names, data.columns, strict=True)],
        "categorical": [data.feature_names[j] for j in sorted(data.categories)],
        "classes": list(classes),
        "accuracy": manifest["metrics"]["accuracy"],
        "n_train": manifest["metrics"]["n_train"],
        "n_test": manifest["metrics"]["n_test"],
        "parity_rows": len(y_test) if estimator is not None else 0,
        "squeeze_levels": defences["calibration"]["squeeze"]["levels"],
        "settings": own.to_dict(args.name),
        "adversarial_training": adversarial,
        "recommended_budget": {k: budget[k] for k in ("budget", "max_fidelity", "output_policy")},
        "budget_note": budget["note"],
        "smoothing": defences["smoothing"].get("enabled"),
    }


def stage_model(
    args: argparse.Namespace, onnx_bytes: bytes, manifest: bytes, defences: Any, own: Any
) -> Path:
    """Write ``models/NAME/`` (model.onnx, manifest.json, defences.json, settings.json) aside,
    then move it into place: a failed import leaves no half model behind."""
    from mlmoat.redteam.calibrate import write_defences
    from mlmoat.train import ONNX_FILE
    from security.model import MANIFEST_FILE

    target_dir: Path = args.model_dir / args.name
    args.model_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.model_dir, prefix=f".{args.name}-") as tmp:
        staged = Path(tmp) / args.name
        staged.mkdir()
        (staged / ONNX_FILE).write_bytes(onnx_bytes)
        (staged / MANIFEST_FILE).write_bytes(manifest)
        write_defences(defences, Path(tmp))
        write_settings(staged, own)
        if target_dir.exists():
            shutil.rmtree(target_dir)
        staged.rename(target_dir)
    return target_dir


def _read_data(
    args: argparse.Namespace, features: list[str] | None, estimator: Any | None
) -> tuple[Any, Any, dict[str, tuple[str, ...]]]:
    """The CSV (and held-out CSV), its categorical columns read as the estimator's encoders'
    categories (``mlmoat.models_columns``); returns them and those categories by column."""
    from mlmoat import models_import as mi
    from mlmoat.models_columns import ColumnsRefused, check_categories, encoder_categories

    try:
        found = encoder_categories(estimator) if estimator is not None else {}
    except ColumnsRefused as exc:
        raise mi.ImportRefused(str(exc)) from exc
    data = mi.read_csv(args.data, target=args.target, features=features, categories=found)
    missing = sorted(set(found) - set(data.columns))
    if missing:
        raise mi.ImportRefused(f"the estimator encodes columns the features lack: {missing}")
    test = (
        mi.read_csv(
            args.test_data, target=args.target, features=list(data.columns), categories=found
        )
        if args.test_data
        else None
    )
    try:
        check_categories(data.x, data.columns, found)
    except ColumnsRefused as exc:
        raise mi.ImportRefused(str(exc)) from exc
    return data, test, found


def _adversarial(
    estimator: Any,
    seed: int,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
) -> tuple[Any, dict[str, Any]]:
    """A clone of ``estimator`` adversarially trained on the training rows, and its record."""
    from sklearn.base import clone  # type: ignore[import-untyped]

    from mlmoat.adversarial import adversarial_fit

    undefended = float((np.asarray([str(v) for v in estimator.predict(x_test)]) == y_test).mean())
    labels = np.asarray([str(v) for v in y_train], dtype=object)
    trained, recipe, added = adversarial_fit(lambda _: clone(estimator), seed, x_train, labels)
    return trained, {
        **recipe.to_dict(),
        "adversarial_rows": added,
        "refit_on": "the import's training rows (a clone of the estimator)",
        "undefended_accuracy": round(undefended, 10),
    }


def mi_valid_name(name: str) -> bool:
    """The manifest's model-name rule (``security.model``)."""
    import re

    return re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", name) is not None


def _framework(
    onnx_bytes: bytes, opsets: dict[str, int], opsets_of: Any, *, imported: str
) -> dict[str, Any]:
    import onnx
    import skl2onnx  # type: ignore[import-untyped]
    import sklearn  # type: ignore[import-untyped]

    framework: dict[str, Any] = {
        "onnx": onnx.__version__,
        "opset": opsets_of(onnx_bytes),
    }
    if imported != "onnx":
        framework["scikit-learn"] = sklearn.__version__
        framework["skl2onnx"] = skl2onnx.__version__
        framework["target_opset"] = {k or "ai.onnx": v for k, v in opsets.items()}
    return framework


def _summary(directory: Path) -> dict[str, Any]:
    manifest = json.loads((directory / "manifest.json").read_text())
    defences = directory / "defences.json"
    return {
        "model": manifest["name"],
        "version": manifest["version"],
        "estimator": manifest.get("estimator"),
        "features": len(manifest["feature_names"]),
        "kind": manifest.get("kind", "classifier"),
        "classes": manifest["classes"],
        "accuracy": manifest.get("metrics", {}).get("accuracy"),
        **({"r2": manifest["metrics"].get("r2")} if manifest.get("kind") == "regressor" else {}),
        "imported": manifest.get("imported", {}).get("source"),
        "defences": defences.is_file()
        and json.loads(defences.read_text()).get("model_version") == manifest["version"],
    }


def main(argv: list[str]) -> int:
    """Run ``mlmoat models``."""
    from mlmoat.models_import import ImportRefused

    if argv[:1] == ["check"]:
        from mlmoat.models_check import main as check

        return check(argv[1:])
    args = _parser().parse_args(argv)
    if args.action == "import":
        try:
            summary = import_model(args)
        except ImportRefused as exc:
            print(f"mlmoat models import: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(summary, sort_keys=True))
        return 0
    root: Path = args.model_dir
    if args.action == "recommend-budget":
        from mlmoat.redteam.budget import recommend
        from mlmoat.redteam.cases import load_cases

        try:
            data = {args.name: args.data} if args.data else None
            (case,) = load_cases(root, [args.name], data)
            from mlmoat.redteam import regression

            if isinstance(case, regression.RegressorCase):
                result = regression.recommend(
                    case,
                    max_fidelity=args.max_fidelity,
                    policy=args.policy or "value:2",
                    seeds=args.seeds,
                )
            else:
                result = recommend(
                    case,
                    max_fidelity=args.max_fidelity,
                    policy=args.policy or "label",
                    seeds=args.seeds,
                )
        except (ValueError, KeyError) as exc:
            print(f"mlmoat models recommend-budget: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(result, sort_keys=True))
        return 0
    if args.action == "list":
        for directory in sorted(p for p in root.iterdir() if (p / "manifest.json").is_file()):
            print(json.dumps(_summary(directory), sort_keys=True))
        return 0
    directory = root / args.name
    if not mi_valid_name(args.name) or not (directory / "manifest.json").is_file():
        print(f"mlmoat models: no model {args.name!r} under {root}", file=sys.stderr)
        return 2
    from security.errors import ModelIntegrityError
    from security.model_settings import read_settings

    try:
        current = read_settings(directory)
        if args.action == "set":
            updated = _settings_from(args, args.name, current)
    except ModelIntegrityError as exc:
        print(f"mlmoat models: {exc.reason}: {exc.detail}", file=sys.stderr)
        return 2
    if args.action == "show":
        manifest = json.loads((directory / "manifest.json").read_text())
        manifest.pop("parity", None)
        shown = {
            **_summary(directory),
            "settings": current.to_dict(args.name),
            "manifest": manifest,
        }
        print(json.dumps(shown, indent=2, sort_keys=True))
        return 0
    if args.action == "set":
        path = write_settings(directory, updated)
        print(
            json.dumps(
                {"model": args.name, "settings": updated.to_dict(args.name), "path": str(path)}
            )
        )
        return 0
    if not args.yes:
        print(f"mlmoat models remove: add --yes to delete {directory}", file=sys.stderr)
        return 2
    shutil.rmtree(directory)
    print(json.dumps({"removed": args.name, "path": str(directory)}))
    return 0
