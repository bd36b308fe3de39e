"""Every registered recipe, alone and in every combinable pair: each term is non-zero and sends
gradient exactly where its references say, and combining never changes another term's gradient."""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import pytest
import torch

from auxilia.config import load_config
from auxilia.data.types import DatasetSplits
from auxilia.engine.batches import make_batch
from auxilia.engine.context import build_run
from auxilia.engine.setup import Setup, build_setup
from auxilia.engine.stepper import Stepper, forward_all
from auxilia.models.multi_exit import MultiExitModel
from auxilia.recipes import RECIPES, semi
from auxilia.recipes.mixmatch import MixMatchStep
from auxilia.terms import (
    ConfidenceMaskedCE,
    FeatureL2,
    HintMSE,
    KLDistill,
    Progress,
    ProjectionDistance,
    Ref,
    SimilarityKL,
    SoftmaxConsistency,
    SoftTargetCE,
    TemporalEnsemble,
    Term,
)

BATCH = 16
WHERE = Progress(30, 100, 10)
TERM_CLASH = "two methods define a term 'ce' differently.*ce_weight"
# Pairs that must refuse to combine, with the conflict their ValueError names. A pair that
# starts (or stops) refusing fails the test: a new refusal is a decision, not an accident.
REFUSALS: dict[tuple[str, str], str] = {
    ("byot", "cds"): TERM_CLASH,  # BYOT's ce_weight 0.9 (1 − α) against 1.0
    ("byot", "ddgsd"): TERM_CLASH,
    ("byot", "deep_supervision"): TERM_CLASH,  # (their s1/s2 logits heads differ too)
    ("byot", "supervised"): TERM_CLASH,
    ("byot", "cds_kd"): TERM_CLASH,  # CDS's CE at 1.0 (kd's and hints' CE give way)
    ("byot", "dml"): TERM_CLASH,
    ("byot", "dogo"): TERM_CLASH,
}
# Recipes of another task, tested on their own data: dense regression maps
# (tests/engine/test_dense.py checks its terms' values and gradients the same way).
OTHER_TASKS = {"dense"}
CLASSIFIERS = sorted(set(RECIPES) - OTHER_TASKS)
SEMI = sorted(semi.RECIPES)
# semi-supervised methods pair with the families they are meant to compose with (pairs of two
# semi-supervised methods mostly disagree on their EMA model or step, and are refused)
SEMI_PARTNERS = ("supervised", "deep_supervision", "cds", "byot", "kd")
SINGLES = [(name,) for name in CLASSIFIERS]
PAIRS = ([p for p in itertools.combinations(sorted(set(CLASSIFIERS) - set(SEMI)), 2)]
         + [tuple(sorted((s, o))) for s in SEMI for o in SEMI_PARTNERS])
COMBINABLE = [pair for pair in PAIRS if pair not in REFUSALS]
# settings under which every term of a recipe is non-zero on an untrained model's first batch
# (a 0.95 confidence threshold masks everything out at the start)
TEST_SETTINGS = {"fixmatch": "threshold: 0.0", "pseudo_label": "threshold: 0.0",
                 "uda": "threshold: 0.0", "cds": None,
                 "meta_pseudo_labels": "threshold: 0.0"}

Built = tuple[Setup, dict[str, torch.Tensor], dict]


def _config(method: str, *extra: str):
    return load_config(None, [f"method={method}", f"data.batch_size={BATCH}",
                              "train.device=cpu", *extra])


def first_batch(setup: Setup, run) -> dict:
    """Every stream's first indices, the views, and what the step strategy adds (MixMatch's
    mixed inputs and targets)."""
    streams = setup.objective.streams
    batch = make_batch(setup, {n: torch.arange(s.size(BATCH)) for n, s in streams.items()})
    step = setup.objective.step
    if isinstance(step, MixMatchStep):
        batch.update(step.mix(batch, step.guess(Stepper(run), batch), 0))
    return batch


def fill_banks(setup: Setup) -> None:
    """Temporal Ensembling's bank as after one epoch, so that its term is non-zero."""
    for term in setup.objective.terms.values():
        if isinstance(term, TemporalEnsemble):
            generator = torch.Generator().manual_seed(0)
            term.bank.copy_(torch.rand(term.bank.shape, generator=generator).softmax(1) * 0.4)
            term.updates.fill_(1)


TEACHERS: dict[int, MultiExitModel] = {}


def teacher_for(data: DatasetSplits | None) -> MultiExitModel | None:
    """A CDS-shaped teacher (projection heads on every stage) for the digits builds: the
    distillation recipes read its logits, features and projections."""
    if data is None:
        return None
    if id(data) not in TEACHERS:
        TEACHERS[id(data)] = build_setup(_config("cds", "seed=7"), data).model.eval()
    return TEACHERS[id(data)]


def build(method: str, *extra: str, data: DatasetSplits | None = None) -> Built:
    """Build a run (every slot), make the first batch and run every slot's forwards."""
    setup = build_setup(_config(method, *extra), data, teacher=teacher_for(data))
    run = build_run(setup)
    setup.slot_models = run.models  # type: ignore[attr-defined]
    fill_banks(setup)
    batch = first_batch(setup, run)
    outputs = Stepper(run).forward(setup.objective.inputs(), batch)
    return setup, batch, outputs


def trainable(setup: Setup) -> dict[str, MultiExitModel]:
    """The models gradient may reach: the student and any peer."""
    models = getattr(setup, "slot_models", {"student": setup.model})
    return {n: m for n, m in models.items()
            if n == "student" or setup.objective.slots[n].trained}


@pytest.fixture(scope="module")
def digits(pseudo_labelled) -> DatasetSplits:
    """The default data (embedded digits, small_cnn) with 30 labels per class and the rest
    unlabeled, loaded once for every build here, 64 unlabeled images pseudo-labelled (Noisy
    Student's split)."""
    return pseudo_labelled(build_setup(_config("supervised", "data.labels_per_class=30")).data)


def _method(names: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"{{name: {n}, {TEST_SETTINGS[n]}}}" if TEST_SETTINGS.get(n) else n
                           for n in names) + "]"


# --- where each term's gradient must go, derived from its references -----------------------

def live_refs(term: Term) -> tuple[Ref, ...]:
    """The references gradient flows through: a distillation target is detached."""
    if isinstance(term, KLDistill | FeatureL2 | SoftTargetCE | HintMSE | SoftmaxConsistency
                  | ConfidenceMaskedCE):
        return (term.student,)
    if isinstance(term, ProjectionDistance | SimilarityKL):
        return term.student
    return term.refs()


def producers(model: MultiExitModel, x: torch.Tensor) -> dict[tuple[str, str], str]:
    """(exit, field) → key of the head that writes it, a multi-output head's fields included."""
    found = {(spec.exit, spec.field): key for key, spec in model.head_specs.items()}

    def recorder(key: str):
        def record(_module: torch.nn.Module, _args: object, out: object) -> None:
            if isinstance(out, dict):  # e.g. BYOT's head: logits and hint
                found.update({(model.head_specs[key].exit, f): key for f in out})
        return record

    handles = [head.register_forward_hook(recorder(key)) for key, head in model.heads.items()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return found


def parts(ref: Ref, model: MultiExitModel, heads: Mapping[tuple[str, str], str],
          slot: str = "student") -> set[str]:
    """Parameter prefixes of slot ``slot`` that gradient through ``ref`` must reach."""
    if ref.model != slot:
        return set()
    if ref.field == "feat":
        return {"backbone."}
    if (ref.exit, ref.field) == ("final", "logits"):
        return {"backbone.", "classifier."}
    key = heads[(ref.exit, ref.field)]
    if model.head_specs[key].kind == "probe":  # the main classifier on detached features
        return {"classifier."}
    return {"backbone.", f"heads.{key}."}


def all_parts(model: MultiExitModel) -> set[str]:
    return {"backbone.", "classifier."} | {
        f"heads.{key}." for key, head in model.heads.items() if list(head.parameters())}


def reached(model: MultiExitModel) -> set[str]:
    """Prefixes of the parameters with a non-zero gradient."""
    hit = {name for name, p in model.named_parameters()
           if p.grad is not None and p.grad.abs().sum() > 0}
    return {part for part in all_parts(model) if any(n.startswith(part) for n in hit)}


def check_terms(label: str, built: Built) -> None:
    setup, batch, outputs = built
    models = trainable(setup)
    heads = {slot: producers(m, batch["x_lb"]) for slot, m in models.items()}
    frozen = [m for n, m in getattr(setup, "slot_models", {}).items() if n not in models]
    for name, term in setup.objective.terms.items():
        for model in models.values():
            model.zero_grad(set_to_none=True)
        value = term.compute(outputs, batch, WHERE)
        assert torch.isfinite(value) and value.item() > 0, f"{label}.{name} = {value}"
        value.backward(retain_graph=True)
        # a parameter-free head (CDS's projection of the last stage: pool + normalise) has
        # nothing to reach
        musts = {slot: set().union(*(parts(r, m, heads[slot], slot) for r in live_refs(term)))
                 & all_parts(m) for slot, m in models.items()}
        assert any(musts.values()), f"{label}.{name} reads nothing of a trained model"
        for slot, model in models.items():
            assert reached(model) == musts[slot], (
                f"{label}.{name}: gradient reaches {slot}'s {reached(model)}")
        for model in frozen:  # a teacher: no gradient, ever
            assert all(p.grad is None and not p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("names", SINGLES + COMBINABLE, ids="+".join)
def test_every_term_is_nonzero_and_sends_gradient_where_its_refs_say(
        names: tuple[str, ...], digits: DatasetSplits) -> None:
    check_terms("+".join(names), build(_method(names), data=digits))


@pytest.mark.parametrize("pair", sorted(REFUSALS), ids="+".join)
def test_refused_pairs_name_the_conflict(pair: tuple[str, str], digits: DatasetSplits) -> None:
    with pytest.raises(ValueError, match=REFUSALS[pair]):
        build(_method(pair), data=digits)


# --- combining leaves every other term's gradient as it was ---------------------------------

Grads = dict[str, dict[str, torch.Tensor]]


def term_grads(setup: Setup, batch: dict, wanted: dict, names: list[str]) -> Grads:
    """Term name → every parameter's gradient of that term, one forward on ``wanted`` views."""
    saved = {k: v.clone() for k, v in setup.objective.state_dict().items()}
    models = getattr(setup, "slot_models", {"student": setup.model})
    no_grad = [n for n in models if n != "student" and not setup.objective.slots[n].grad]
    outputs = forward_all(models, wanted, batch, no_grad=no_grad)
    grads: Grads = {}
    for name in names:
        for model in trainable(setup).values():
            model.zero_grad(set_to_none=True)
        setup.objective.terms[name].compute(outputs, batch, WHERE).backward(retain_graph=True)
        grads[name] = {f"{slot}.{n}": torch.zeros_like(p) if p.grad is None else p.grad.clone()
                       for slot, m in trainable(setup).items()
                       for n, p in m.named_parameters()}
    setup.objective.load_state_dict(saved)  # PS-KD's bank: the next use sees it as it was
    return grads


@pytest.fixture(scope="module")
def alone(digits: DatasetSplits):
    """Method → (weights, first batch, its views, every term's gradient), built once each."""
    cache: dict[str, tuple[dict, dict, dict, Grads]] = {}

    def get(method: str) -> tuple[dict, dict, dict, Grads]:
        if method not in cache:
            setup, batch, _ = build(_method((method,)), data=digits)
            wanted = setup.objective.inputs()
            grads = term_grads(setup, batch, wanted, list(setup.objective.terms))
            weights = {slot: m.state_dict() for slot, m in trainable(setup).items()}
            cache[method] = (weights, batch, wanted, grads)
        return cache[method]

    return get


def check_unchanged(method: str, both: Setup, alone) -> None:
    """Each term of ``method`` has, in the combination ``both``, the gradient it has alone."""
    weights, batch, wanted, want = alone(method)
    models = trainable(both)
    for slot, state in weights.items():
        loaded = models[slot].load_state_dict(state, strict=False)
        assert not loaded.unexpected_keys  # the same weights: only the other's heads are extra
    # the same inputs: the method's own batch on its own views (BatchNorm sees the same samples)
    got = term_grads(both, batch, wanted, list(want))
    for name, grads in want.items():
        for param, grad in grads.items():
            assert torch.allclose(got[name][param], grad, atol=1e-7), (
                f"{method}.{name} in {both.config.method}: gradient on {param} changed")


@pytest.mark.parametrize("pair", COMBINABLE, ids="+".join)
def test_combining_leaves_each_methods_gradients_as_they_were(
        pair: tuple[str, str], digits: DatasetSplits, alone) -> None:
    both, _, _ = build(_method(pair), data=digits)
    for method in pair:
        check_unchanged(method, both, alone)


def test_metric_leaves_deep_supervisions_main_ce_on_the_backbone(
        digits: DatasetSplits, alone) -> None:
    """The linear probe once detached the main classifier for the whole model (issue 9)."""
    weights, batch, wanted, want = alone("deep_supervision")
    both, _, _ = build("[metric, deep_supervision]", data=digits)
    both.model.load_state_dict(weights["student"], strict=False)
    got = term_grads(both, batch, wanted, ["ce"])["ce"]
    backbone = [n for n in want["ce"] if n.startswith("student.backbone.")]
    assert all(want["ce"][n].abs().sum() > 0 for n in backbone)
    assert all(torch.allclose(got[n], want["ce"][n]) for n in backbone)


# --- single behaviours -----------------------------------------------------------------------

@pytest.mark.parametrize("methods", [
    "[cds, deep_supervision]", "[{name: cds, ce_weight: 0.9}, byot]",
    "[ddgsd, {name: cds, ce_views: both}]", "[{name: cds, ce_weight: 0}, ps_kd]"])
def test_combinations_run_one_forward_per_model(methods: str, digits: DatasetSplits) -> None:
    setup, batch, outputs = build(methods, data=digits)
    assert set(setup.objective.inputs()) == {"student"}
    calls = []
    handle = setup.model.register_forward_hook(lambda *a: calls.append(1))
    outputs = forward_all({"student": setup.model}, setup.objective.inputs(), batch)
    handle.remove()
    assert len(calls) == 1  # every view of every term in one concatenated forward
    losses = setup.objective(outputs, batch, Progress(0, 10, 5))
    assert torch.isfinite(losses["loss"])
    assert len(losses) - 1 == len(setup.objective.terms)


def test_cds_uses_the_papers_views_and_head_layout() -> None:
    setup, _, _ = build("[{name: cds}]", "model.name=resnet18", "data.image_size=32")
    assert setup.objective.views == {"x_lb": "cutout", "x_lb2": "color"}
    blocks = {s.exit: dict(s.options)["blocks"] for s in setup.objective.heads.values()}
    assert blocks == {"s1": 3, "s2": 2, "s3": 1, "s4": 0}
    assert set(setup.objective.terms) == {"ce", "supcon_s1", "supcon_s2", "supcon_s3",
                                          "supcon_s4"}
    assert all(t.weight == pytest.approx(0.1) for n, t in setup.objective.terms.items()
               if n.startswith("supcon"))


def test_views_can_be_overridden_in_the_config(digits: DatasetSplits) -> None:
    setup, _, _ = build("cds", "data.views={x_lb2: weak}", data=digits)
    assert setup.objective.views["x_lb2"] == "weak"
    with pytest.raises(ValueError, match="data.views.x_ulb_s: the methods use no view"):
        build("cds", "data.views={x_ulb_s: color}", data=digits)
