"""kubeflow/kfp_conditions.py: a task's triggerPolicy.condition as the open-source
KFP driver evaluates it (driver/driver.go Container @2.5.0, driver/container.go
@2.14.0, expression/expression.go Condition with cel-go), and which tasks Argo
omits after a skipped one (compiler/argocompiler/dag.go depends)."""

import pytest

from kubeflow.kfp_conditions import OMITTED, SKIPPED, ConditionError, evaluate, omitted, triggered
from kubeflow.local_metadata import NotEmulated

KEY = "_change-check.result"
# What TFX 1.16's V2 compiler writes for tfx.dsl.Cond(ch.future()[0].custom_property('changed') == 1)
# (compiler_utils.placeholder_to_cel: ints become doubles; test_kubeflow_compile.py checks the spec).
TFX_CONDITION = f"(inputs.artifacts['{KEY}'].artifacts[0].metadata['changed'] == 1.0)"


def _inputs(**metadata):
    """ExecutorInput.inputs as the driver resolves them: one artifact read back from MLMD."""
    return {"artifacts": {KEY: {"artifacts": [{"name": "12", "type": {"instanceSchema": ""},
                                               "uri": "minio://b/r/change-check/u/result",
                                               "metadata": metadata}]}},
            "parameterValues": {"mode": "nightly"}}


@pytest.mark.parametrize("value, expected", [
    (1, True), (1.0, True),     # MLMD stores ints as doubles: 1 == 1.0
    (0, False), (0.0, False),
    ("1", False),               # heterogeneous equality: a string is never a number
    (True, False),              # a Struct bool is not the double 1.0
    (None, False),
    ({"list": [1]}, False),     # a wrapped list, as the launcher stores lists
])
def test_tfx_condition_on_metadata_as_read_back(value, expected):
    assert evaluate(TFX_CONDITION, _inputs(changed=value)) is expected


@pytest.mark.parametrize("condition, expected", [
    (f"!{TFX_CONDITION}", False),
    (f"({TFX_CONDITION} && (inputs.artifacts['{KEY}'].artifacts[0].metadata['n'] > 2.5))", True),
    (f"(inputs.artifacts['{KEY}'].artifacts[0].metadata['n'] < 2.5) || {TFX_CONDITION}", True),
    (f"(inputs.artifacts['{KEY}'].artifacts[0].uri + '/x') == 'minio://b/r/change-check/u/result/x'", True),
    (f"inputs.artifacts['{KEY}'].artifacts[0].metadata['reason'] == 'new images'", True),
    (f"inputs.artifacts['{KEY}'].artifacts[0].metadata.reason > 'a'", True),
    ("inputs.parameter_values['mode'] == 'nightly'", True),
    ("-1.0 < 0.5 && 3 > 2", True),
    ("outputs.output_file == ''", True),  # not provisioned before the condition: proto defaults
    # && and || absorb an error when the other side decides (cel-go logical operators)
    ("false && inputs.artifacts['missing'].artifacts[0].uri == 'x'", False),
    ("inputs.artifacts['missing'].artifacts[0].uri == 'x' || true", True),
])
def test_operators_tfx_can_emit(condition, expected):
    assert evaluate(condition, _inputs(changed=1.0, n=3.0, reason="new images")) is expected


@pytest.mark.parametrize("condition, message", [
    # refused when compiled (cel-go's parser and checker)
    (f"inputs.artifacts['{KEY}'].artifacts[0].metadata['changed'] = 1.0", "Syntax error"),
    (f"({TFX_CONDITION}", "Syntax error: expected ')'"),
    ("input.artifacts['x'].artifacts[0].uri == ''", "undeclared reference to 'input'"),
    ("inf == 1.0", "undeclared reference to 'inf'"),  # what TFX writes for float('inf')
    (f"inputs.artifacts['{KEY}'].artifacts[0].metadatas['changed'] == 1.0", "undefined field 'metadatas'"),
    ("1 == 1.0", "no matching overload for '_==_' applied to '(int, double)'"),
    ("'a' && true", "no matching overload for '_&&_'"),
    # refused when run: the driver fails, so does the run
    (f"inputs.artifacts['{KEY}'].artifacts[0].metadata['changed']", "return type is not bool, got 1.0"),
    (f"inputs.artifacts['{KEY}'].artifacts[0].metadata['nope'] == 1.0", "no such key: nope"),
    (f"inputs.artifacts['{KEY}'].artifacts[1].uri == ''", "index '1' out of range"),
    (f"inputs.artifacts['{KEY}'].artifacts[0].metadata['reason'] < 1.0", "no such overload"),
    (f"!(inputs.artifacts['{KEY}'].artifacts[0].metadata['changed'])", "no such overload"),
])
def test_malformed_conditions_fail_as_the_driver_fails(condition, message):
    with pytest.raises(ConditionError) as err:
        evaluate(condition, _inputs(changed=1.0, reason="r"))
    assert message in str(err.value)


@pytest.mark.parametrize("condition", [
    "true ? true : false", "size(inputs.artifacts) > 0", "'a' in ['a']", "2 * 2 == 4",
    "inputs.artifacts['x'].artifacts[0].uri.startsWith('a')", "{'a': 1}['a'] == 1",
])
def test_cel_beyond_what_tfx_emits_is_named(condition):
    with pytest.raises(NotEmulated, match="not emulated"):
        evaluate(condition, _inputs())


def test_triggered_reads_the_tasks_policy():
    task = {"triggerPolicy": {"condition": TFX_CONDITION}}
    artifacts = {KEY: _inputs(changed=0.0)["artifacts"][KEY]["artifacts"]}
    assert triggered("t", task, artifacts, {}, oss=True) is False
    assert triggered("t", {}, {}, {}, oss=True) is True
    with pytest.raises(NotEmulated, match="task t: triggerPolicy.condition .* open-source backend only"):
        triggered("t", task, artifacts, {}, oss=False)
    with pytest.raises(NotEmulated, match="strategy ALL_UPSTREAM_TASKS_COMPLETED"):
        triggered("t", {"triggerPolicy": {"strategy": "ALL_UPSTREAM_TASKS_COMPLETED"}}, {}, {}, oss=True)


def test_tasks_after_a_skipped_task_are_omitted_transitively():
    deps = {"check": set(), "gated": {"check"}, "next": {"gated"}, "last": {"next", "check"},
            "free": {"check"}}
    states = {"check": "SUCCEEDED", "gated": SKIPPED}
    assert omitted({"next", "last", "free"}, deps, states) == ["next", "last"]
    # A task still waiting for a running dependency is not decided yet.
    assert omitted({"last"}, deps, {"check": "SUCCEEDED"}) == []
    assert omitted({"next"}, deps, {"gated": "CACHED"}) == []
    assert omitted({"next"}, deps, {"gated": OMITTED}) == ["next"]
