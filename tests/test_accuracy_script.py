"""benchmarks.accuracy, the error budget, on tiny seeded models in-process.

Only what holds by construction is checked: with every approximation exact the run is the
exact backend (zero error), with every twin on the error is positive, and the approximations
found are the ones each family calls.
"""

import pytest

from benchmarks import accuracy


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (lambda: accuracy.gpt2_case(layers=2, hidden=64, prompts=2, tokens=8), ["gelu", "softmax", "layernorm"]),
        (lambda: accuracy.bert_case(layers=2, hidden=64, seq=8), ["gelu", "softmax", "layernorm"]),
    ],
    ids=["gpt2", "bert"],
)
def test_budget_is_zero_all_exact_and_positive_all_approximated(case, expected):
    budget = accuracy.error_budget(case())
    assert budget.approximations == expected
    assert budget.none["max abs"] == budget.none["mean abs"] == 0.0
    assert budget.all["max abs"] > 0 and budget.all["mean abs"] > 0
    table = accuracy.format_budget(budget)
    assert all(f"| {name} |" in table for name in expected)
