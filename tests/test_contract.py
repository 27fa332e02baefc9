"""Every built-in distiller passes the same contract checks a third party is held to."""
import pytest

from kdbench import available_distillers
from kdbench.contract import check_distiller

BUILTINS = ["vanilla", "fitnet", "at", "pkt", "sp", "vid", "tokd",
            # the later seven: in the slow set (each check builds res18t and a teacher ~14 times)
            *(pytest.param(m, marks=pytest.mark.slow) for m in ("kd", "dkd", "dist", "rkd", "cc", "crd", "reviewkd"))]


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_passes_contract(name):
    lines: list[str] = []
    results = check_distiller(name, ["res18t"], progress=lines.append)
    failed = [(r.mode, r.check, r.detail) for r in results if not r.ok]
    assert not failed
    modes = len(available_distillers()[name].modes)
    assert len(results) == 7 * modes
    assert len(lines) == modes and lines[-1].startswith(f"[{modes}/{modes}] {name} on res18t")
    assert "7/7 checks passed" in lines[-1]


def test_unknown_distiller_is_reported_not_raised():
    (result,) = check_distiller("nosuch", ["res18t"])
    assert not result.ok and "unknown method 'nosuch'" in result.detail
