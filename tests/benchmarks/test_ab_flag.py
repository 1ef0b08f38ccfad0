"""`benchmarks/ab_flag.py` on the CPU: naming the switch and its values (the timings need a GPU)."""

import pytest

from benchmarks.ab_flag import main, parse_values, resolve


def test_resolve_finds_the_module_attribute():
    module, attr = resolve("kernels.selective_scan.scan.DBC_SCATTER")
    assert attr == "DBC_SCATTER" and isinstance(getattr(module, attr), bool)


@pytest.mark.parametrize(
    "path,error",
    [("kernels.selective_scan.scan.DBC_SCATER", AttributeError), ("DBC_SCATTER", ValueError)],
    ids=["typo", "no-module"],
)
def test_resolve_rejects_a_switch_that_is_not_there(path, error):
    with pytest.raises(error, match="DBC_SCAT"):
        resolve(path)


def test_values_are_python_literals():
    assert parse_values(["True", "False"]) == [True, False]
    assert parse_values(["'atomics'", "'partials'", "8"]) == ["atomics", "partials", 8]


@pytest.mark.parametrize("texts", [["True"], ["True", "True"]], ids=["one", "same-twice"])
def test_values_must_differ(texts):
    with pytest.raises(ValueError, match="two different values"):
        parse_values(texts)


def test_unknown_part_is_named(capsys):
    with pytest.raises(SystemExit):
        main(["kernels.selective_scan.scan.DBC_SCATTER", "True", "False", "--parts", "scan,stpe"])
    assert "stpe" in capsys.readouterr().err
