"""The attacks: extraction (surrogate training), membership inference, HopSkipJump, inversion."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]
from sklearn.metrics import roc_auc_score, roc_curve  # type: ignore[import-untyped]
from sklearn.pipeline import make_pipeline  # type: ignore[import-untyped]
from sklearn.preprocessing import StandardScaler  # type: ignore[import-untyped]

from mlmoat.redteam.cases import ModelCase
from mlmoat.redteam.stack import FlaggedError, StackTarget
from mlmoat.redteam.target import ServedTarget
from mlmoat.redteam.traffic import benign_rows, boundary_probe, data_rows, uniform_rows
from security.defences import SqueezeConfig

AnyTarget = ServedTarget | StackTarget


def _art() -> Any:
    # ART warns at import time that optional deep-learning back-ends are missing.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import art.attacks.evasion as evasion  # type: ignore[import-untyped]
        import art.attacks.inference.membership_inference as mia  # type: ignore[import-untyped]
        import art.attacks.inference.model_inversion as inversion  # type: ignore[import-untyped]
        import art.estimators.classification as estimators  # type: ignore[import-untyped]
    return evasion, mia, inversion, estimators


# --------------------------------------------------------------------------- extraction


def attack_stream(
    kind: str, target: AnyTarget, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Query ``count`` rows of strategy ``kind`` (uniform | boundary | adaptive); return rows and
    answers. ``adaptive`` draws from the data's own distribution (``traffic.data_rows``)."""
    case = target.case
    if kind in ("uniform", "adaptive"):
        rows = (
            uniform_rows(case.domain, count, rng)
            if kind == "uniform"
            else data_rows(case.x_test, case.y_test, case.domain, count, rng)
        )
        seen, _ = target.query(rows)
        return rows, seen
    seeds = case.x_test[rng.choice(case.x_test.shape[0], size=10, replace=False)]
    answers: list[np.ndarray] = []

    def oracle(batch: np.ndarray) -> np.ndarray:
        seen, _ = target.query(batch)
        answers.extend(seen)
        labels: np.ndarray = seen.argmax(axis=1)
        return labels

    rows, _ = boundary_probe(seeds, oracle, case.domain, count, rng)
    return rows, np.asarray(answers[:count])


def train_surrogate(
    rows: np.ndarray,
    seen: np.ndarray,
    *,
    soft: bool,
    n_classes: int,
    categories: dict[int, int] | None = None,
) -> Any:
    """Fit a surrogate: on labels, or on the visible probabilities (soft labels as weights).

    ``categories`` (feature index -> its number of categories) one-hot encodes the categorical
    features, as the attacker who knows the categories would; the others are standardised.
    """
    labels = seen.argmax(axis=1)
    model = make_pipeline(
        surrogate_encoder(rows.shape[1], categories), LogisticRegression(C=10.0, max_iter=2000)
    )
    if np.unique(labels).size < 2:
        return _Constant(int(labels[0]) if labels.size else 0)
    if not soft or np.all(seen.max(axis=1) == 1.0):
        model.fit(rows, labels)
        return model
    reps = np.repeat(rows, n_classes, axis=0)
    classes = np.tile(np.arange(n_classes), rows.shape[0])
    weights = seen.reshape(-1)
    keep = weights > 0
    model.fit(reps[keep], classes[keep], logisticregression__sample_weight=weights[keep])
    return model


def surrogate_encoder(n_features: int, categories: dict[int, int] | None) -> Any:
    """A surrogate's input step: the numeric features standardised and ``categories`` (feature
    index -> its number of categories) one-hot encoded, as the attacker who knows them would."""
    if not categories:
        return StandardScaler()
    from sklearn.compose import ColumnTransformer  # type: ignore[import-untyped]
    from sklearn.preprocessing import OneHotEncoder

    cat = sorted(categories)
    codes = [np.arange(categories[j], dtype=np.float64) for j in cat]
    numeric = [j for j in range(n_features) if j not in categories]
    return ColumnTransformer(
        [
            ("categories", OneHotEncoder(categories=codes, handle_unknown="ignore"), cat),
            ("numeric", StandardScaler(), numeric),
        ]
    )


class _Constant:
    def __init__(self, label: int) -> None:
        self.label = label

    def predict(self, rows: np.ndarray) -> np.ndarray:
        return np.full(rows.shape[0], self.label)


def fidelity(case: ModelCase, surrogate: Any) -> float:
    """Label agreement between surrogate and target on the held-out rows."""
    truth = case.predict_proba(case.x_test).argmax(axis=1)
    return float((surrogate.predict(case.x_test) == truth).mean())


def extraction_curve(
    target: AnyTarget, kind: str, counts: list[int], seed: int
) -> dict[str, list[float]]:
    """Fidelity of label and probability surrogates after each query count."""
    rng = np.random.default_rng(seed)
    rows, seen = attack_stream(kind, target, max(counts), rng)
    n_classes = len(target.case.classes)
    categories = target.case.category_counts
    curve: dict[str, list[float]] = {"label": [], "probabilities": []}
    for count in counts:
        for soft, key in ((False, "label"), (True, "probabilities")):
            surrogate = train_surrogate(
                rows[:count], seen[:count], soft=soft, n_classes=n_classes, categories=categories
            )
            curve[key].append(fidelity(target.case, surrogate))
    return curve


def queries_for(curve: list[float], counts: list[int], goal: float = 0.95) -> int | None:
    """The first query count whose fidelity reaches ``goal`` (None: not within the counts)."""
    return next((c for c, f in zip(counts, curve, strict=True) if f >= goal), None)


def detection_row(target: AnyTarget, kind: str, count: int, seed: int) -> int | None:
    """The row at which the monitor flags an attack stream (None: not within ``count``)."""
    with contextlib.suppress(FlaggedError):
        attack_stream(kind, target, count, np.random.default_rng(seed))
    state = target.state
    return state.flagged_at_row if state.flagged else None


def benign_flag_row(target: AnyTarget, count: int, seed: int) -> int | None:
    """The row at which a benign caller is (falsely) flagged, if ever."""
    rng = np.random.default_rng(seed)
    with contextlib.suppress(FlaggedError):
        target.query(benign_rows(target.case.x_test, target.case.domain, count, rng))
    state = target.state
    return state.flagged_at_row if state.flagged else None


# --------------------------------------------------------------------------- membership inference


def membership_inference(target: AnyTarget, seed: int) -> dict[str, Any]:
    """ART black-box MIA on what the policy shows, and the label-only gap attack; AUC and ROC."""
    _, mia, _, estimators = _art()
    case = target.case
    rng = np.random.default_rng(seed)
    n = min(case.x_train.shape[0], case.x_test.shape[0])
    member_idx = rng.permutation(case.x_train.shape[0])[:n]
    members, member_y = case.x_train[member_idx], case.label_index(case.y_train)[member_idx]
    non_idx = rng.permutation(case.x_test.shape[0])[:n]
    nonmembers, non_y = case.x_test[non_idx], case.label_index(case.y_test)[non_idx]
    member_seen, _ = target.query(members)
    non_seen, _ = target.query(nonmembers)
    half = n // 2
    n_classes = len(case.classes)
    classifier = estimators.BlackBoxClassifier(
        lambda rows: target.query(rows)[0], (case.x_train.shape[1],), n_classes
    )
    attack = mia.MembershipInferenceBlackBox(classifier, attack_model_type="rf")
    attack.fit(
        x=members[:half],
        y=_onehot(member_y[:half], n_classes),
        test_x=nonmembers[:half],
        test_y=_onehot(non_y[:half], n_classes),
        pred=member_seen[:half],
        test_pred=non_seen[:half],
    )
    x_eval = np.vstack([members[half:], nonmembers[half:]])
    y_eval = np.concatenate([member_y[half:], non_y[half:]])
    pred_eval = np.vstack([member_seen[half:], non_seen[half:]])
    truth = np.concatenate([np.ones(n - half), np.zeros(n - half)])
    scores = attack.infer(x_eval, _onehot(y_eval, n_classes), pred=pred_eval, probabilities=True)
    scores = np.asarray(scores)
    member_score = scores[:, 1] if scores.ndim == 2 and scores.shape[1] == 2 else scores.ravel()
    auc = float(roc_auc_score(truth, member_score))
    fpr, tpr, _ = roc_curve(truth, member_score)
    gap = mia.LabelOnlyGapAttack(classifier)
    gap_pred = np.asarray(gap.infer(x_eval, _onehot(y_eval, n_classes))).ravel()
    gap_auc = float(roc_auc_score(truth, gap_pred))
    return {
        "auc": auc,
        "label_only_auc": gap_auc,
        "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()},
    }


def _onehot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    onehot: np.ndarray = np.eye(n_classes)[labels]
    return onehot


def accuracy(target: AnyTarget) -> float:
    """Held-out accuracy of the labels the caller is served."""
    seen, served = target.query(target.case.x_test)
    truth = target.case.label_index(target.case.y_test)
    return float(((seen.argmax(axis=1) == truth) & served).mean())


# --------------------------------------------------------------------------- HopSkipJump


class QueryCapReached(Exception):
    """The attacker spent its query allowance on one row (``hopskipjump``)."""


def hsj_query_cap(*, max_iter: int, max_eval: int, init_size: int) -> int:
    """Rows HopSkipJump may send for one input: every phase at its most, with room to spare.

    Per iteration: the gradient estimate (at most ``max_eval`` rows), the binary search back to
    the boundary and the step-size search (each a few dozen single rows); before the first, the
    random initialisation (``init_size``) and its binary search. ART's step-size search halves
    the step until the point is adversarial, with no bound: when an answer changes between two
    queries (a refusal, a key flagged mid-attack) it would query for ever. The cap ends that row
    as a failed attack instead.
    """
    return max_iter * (max_eval + 200) + init_size + 200


def _seeded_start(
    predict: Callable[[np.ndarray], np.ndarray],
    label: int,
    n_features: int,
    tries: int,
    seed: tuple[int, int],
) -> np.ndarray | None:
    """HopSkipJump's starting point, drawn as ART draws it but from a seeded generator.

    ART's own initialisation draws from ``np.random.RandomState()``, seeded by the operating
    system on every call, so the same seed gave other figures on every run. This is the same
    search (uniform points in the clip range, one query each, the first that is answered with
    another label), from ``seed``; ``None`` when ``tries`` draws find none.
    """
    rng = np.random.default_rng(list(seed))
    for _ in range(tries):
        point = rng.uniform(-0.1, 1.1, size=(1, n_features)).astype(np.float32)
        if int(predict(point).argmax(axis=1)[0]) != label:
            return point
    return None


def hopskipjump(
    target: AnyTarget,
    *,
    rows: int,
    seed: int,
    budget: float = 0.05,
    max_iter: int = 10,
    x: np.ndarray | None = None,
) -> dict[str, Any]:
    """HopSkipJump (L-inf) through the target; success = misclassified within ``budget`` x range.

    Attacks ``rows`` held-out rows drawn with ``seed``, or the rows ``x`` when given.
    """
    evasion, _, _, estimators = _art()
    case = target.case
    if x is None:
        rng = np.random.default_rng(seed)
        index = rng.permutation(case.x_test.shape[0])[:rows]
        x = case.x_test[index]
    rows = int(x.shape[0])
    truth_model = case.predict_proba(x).argmax(axis=1)
    width = case.domain.width
    # ART works in envelope units so one L-inf budget means "percent of each feature's range".
    lower = case.lower

    current = {"label": 0, "left": 0}
    max_eval, init_size = 500, 50
    cap = hsj_query_cap(max_iter=max_iter, max_eval=max_eval, init_size=init_size)

    def predict(z: np.ndarray) -> np.ndarray:
        current["left"] -= z.shape[0]
        if current["left"] < 0:
            raise QueryCapReached
        seen, served = target.query(lower + z * width)
        # A refused request tells the attacker nothing: it looks like the original class.
        seen[~served] = np.eye(len(case.classes))[current["label"]]
        return seen

    classifier = estimators.BlackBoxClassifier(
        predict, (x.shape[1],), len(case.classes), clip_values=(-0.1, 1.1)
    )
    attack = evasion.HopSkipJump(
        classifier,
        norm=np.inf,
        max_iter=max_iter,
        max_eval=max_eval,
        init_eval=50,
        init_size=init_size,
        verbose=False,
    )
    z = (x - lower) / width
    np.random.seed(seed)  # ART's HopSkipJump draws from numpy's global generator
    before = target.queries
    # The attacker's goal is to change the answer the defended service gives for the clean row.
    clean_seen, clean_served = target.query(x)
    reference = np.where(clean_served, clean_seen.argmax(axis=1), truth_model)
    z_adv = np.empty_like(z)
    capped = 0
    for i in range(z.shape[0]):
        current["label"], current["left"] = int(reference[i]), cap
        try:
            # The start must be adversarial for the label ART sees for this row (a smoothed
            # answer can differ between the float64 row and ART's float32 copy of it).
            seen_label = int(predict(z[i : i + 1].astype(np.float32)).argmax(axis=1)[0])
            start = _seeded_start(predict, seen_label, z.shape[1], init_size, (seed, i))
            if start is None:
                z_adv[i] = z[i]  # no adversarial start found: ART gives up on the row too
                continue
            z_adv[i] = attack.generate(z[i : i + 1], x_adv_init=start)[0]
        except QueryCapReached:
            z_adv[i] = z[i]  # the attack on this row failed: the clean row is what is left
            capped += 1
    spent = target.queries - before
    x_adv = lower + z_adv * width
    distance = np.abs(z_adv - z).max(axis=1)
    seen, served = target.query(x_adv)
    fooled = served & (seen.argmax(axis=1) != reference)
    success = fooled & (distance <= budget)
    return {
        "rows": rows,
        "successes": int(success.sum()),
        "success_rate": float(success.mean()),
        "fooled_any_distance": float(fooled.mean()),
        "median_linf": float(np.median(distance)),
        "queries": int(spent),
        "capped_rows": capped,
        "query_cap_per_row": cap,
    }


def squeeze_false_detections(
    target: AnyTarget, squeeze: SqueezeConfig, seed: int
) -> dict[str, float]:
    """Share of benign held-out rows (clean, and with noise) the service refuses as adversarial.

    ``target`` must run the ``refuse`` squeeze policy with one row per request, so each refusal
    is one flagged row; ``squeeze`` gives the same figure offline as a cross-check.
    """
    rng = np.random.default_rng(seed)
    sets = [target.case.x_test, benign_rows(target.case.x_test, target.case.domain, 500, rng)]
    rates, offline = [], []
    for rows in sets:
        _, served = target.query(rows)
        rates.append(float((~served).mean()))
        raw = target.case.predict_proba(rows)
        squeezed = target.case.predict_proba(squeeze.squeeze(rows))
        offline.append(float((np.abs(raw - squeezed).sum(axis=1) > squeeze.threshold).mean()))
    return {"held_out": rates[0], "held_out_noisy": rates[1], "offline_held_out": offline[0]}


# --------------------------------------------------------------------------- inversion


def inversion_transfer(target: AnyTarget, *, queries: int, seed: int) -> dict[str, Any]:
    """MIFace on a label surrogate extracted with ``queries`` uniform queries.

    Scores each class's inverted representative by its distance (in envelope units) to the true
    training mean of that class, against the distance from the envelope centre (no knowledge).
    """
    _, _, inversion, estimators = _art()
    case = target.case
    rng = np.random.default_rng(seed)
    rows = uniform_rows(case.domain, queries, rng)
    seen, _ = target.query(rows)
    labels = seen.argmax(axis=1)
    width = case.domain.width
    z = (rows - case.lower) / width
    result: dict[str, Any] = {"queries": queries, "classes": {}}
    if np.unique(labels).size < 2:
        # Uniform queries all got one answer: the surrogate has nothing to invert.
        result["note"] = "all uniform queries answered with one class; nothing to invert"
        return result
    surrogate = LogisticRegression(C=10.0, max_iter=5000).fit(z, labels)
    classifier = estimators.SklearnClassifier(surrogate, clip_values=(0.0, 1.0))
    attack = inversion.MIFace(
        classifier, max_iter=300, threshold=1.0, learning_rate=0.1, verbose=False
    )
    present = np.unique(labels)
    start = np.full((present.size, z.shape[1]), 0.5)
    inverted = attack.infer(start, y=present)
    y_train = case.label_index(case.y_train)
    for row, cls in zip(inverted, present, strict=True):
        true_mean = ((case.x_train[y_train == cls] - case.lower) / width).mean(axis=0)
        result["classes"][case.classes[cls]] = {
            "inverted_distance": float(np.sqrt(((row - true_mean) ** 2).mean())),
            "centre_distance": float(np.sqrt(((0.5 - true_mean) ** 2).mean())),
        }
    return result
