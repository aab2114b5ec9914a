"""Stage specs against the recipes' man pages (committed under tests/data/man/)."""

import re
from pathlib import Path

import pytest

from musedrp.topology import STAGES, queue, queues, work_key

MAN = Path(__file__).parent.parent / "data" / "man"
# stages that run an ESO recipe; the others are musedrp's own steps (``musedrp_<name>``)
RECIPES = [s for s in STAGES if not s.spec.own]


def test_every_recipe_stage_has_its_man_page():
    assert {s.spec.recipe for s in RECIPES} == {p.stem for p in MAN.glob("*.txt")}


def man_options(text: str) -> dict[str, str]:
    """Option name -> default, from the OPTIONS section of ``esorex --man-page``."""
    section = text.split("\nOPTIONS", 1)[1].split("\n  Note that", 1)[0]
    options = {}
    for block in re.split(r"\n  (?=--)", section):
        m = re.match(r"--(\w+)\s*:(.*)", block, re.S)
        if m:
            options[m[1]] = re.findall(r"\[([^\]]*)\]", m[2])[-1]
    return options


def man_inputs(text: str) -> dict[str, tuple[bool, bool, str]]:
    """Input tag -> (raw, required, min count) from the input frame table."""
    table = text.split("Input frames for raw frame tag", 1)[1].split("Product frames", 1)[0]
    rows = {}
    for line in table.splitlines():
        m = re.match(r"\s+([A-Z_]+)\s+(raw|calib)\s+(Y|\.)\s*(\S*)", line)
        if m:
            rows[m[1]] = (m[2] == "raw", m[3] == "Y", m[4])
    return rows


def man_products(text: str) -> dict[str, bool]:
    """Product tag -> whether the recipe always writes it (no "if --option" condition)."""
    table = text.split("Product frames for raw frame tag", 1)[1].split("\n  Input frames", 1)[0]
    table = table.split("OPTIONS", 1)[0]
    return {m[1]: not re.search(r"\((only )?if |\bif --", m[2]) for m in
            re.finditer(r"^\s+([A-Z_]+)\s+(?:final|intermed)\s+(.*)$", table, re.M)}


@pytest.mark.parametrize("stage", RECIPES, ids=lambda s: s.name)
def test_params_match_man_page(stage):
    spec = stage.spec
    options = man_options((MAN / f"{spec.recipe}.txt").read_text())
    options.pop("nifu", None)  # scheduling, not a parameter: it comes with the work order
    fields = {k: v for k, v in spec.params.model_fields.items() if k not in spec.params.OWN}
    assert set(options) == set(fields)
    for name, default in options.items():
        ours = fields[name].default
        if name in spec.deviations:  # deliberate, explained in the params docstring
            assert default != str(ours) and name in spec.params.__doc__, name
            continue
        if isinstance(ours, bool):
            assert default == ("TRUE" if ours else "FALSE"), name
        elif isinstance(ours, float):
            assert float(default) == ours, name
        else:
            assert default == str(ours), name


@pytest.mark.parametrize("stage", RECIPES, ids=lambda s: s.name)
def test_inputs_and_products_match_man_page(stage):
    spec = stage.spec
    text = (MAN / f"{spec.recipe}.txt").read_text()
    rows = man_inputs(text)
    assert set(rows) == {str(i.tag) for i in spec.inputs if not i.own}
    for i in (i for i in spec.inputs if not i.own):
        raw, required, count = rows[i.tag]
        assert (i.raw, i.required) == (raw, required), i.tag
        if count.startswith(">="):
            assert i.min_count == int(count[2:]), i.tag
    products = man_products(text)
    ours = {str(p.tag): not p.when for p in spec.products}
    assert set(ours) <= set(products)
    assert {t for t, always in products.items() if always} <= set(ours)
    for tag, always in ours.items():
        assert always == products[tag], f"{tag}: optional in one place, not the other"


def test_esorex_args():
    from musedrp.services.flat.spec import FlatParams
    args = FlatParams(samples=True, nsum=16).to_esorex_args()
    assert "--samples=TRUE" in args and "--nsum=16" in args and "--merge=FALSE" in args
    assert all(a.startswith("--") and "=" in a for a in args)
    with pytest.raises(ValueError):
        FlatParams(combine="mean")


def test_topology_matches_the_service_folders_and_holds_messages_long_enough():
    services = Path(__file__).parents[2] / "services"
    folders = {p.parent.name for p in services.glob("*/spec.py")}
    assert folders == {s.name for s in STAGES}
    assert {p.parent.name for p in services.glob("*/service.py")} == {"ingest", "planner"}
    names = [q.name for q in queues()]
    assert len(names) == len(set(names))
    for s in STAGES:
        q = queue(work_key(s.name))
        assert q.bindings == (work_key(s.name),) and q.hold_s > s.spec.timeout_s
