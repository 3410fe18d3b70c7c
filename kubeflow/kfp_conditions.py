"""A task's ``triggerPolicy.condition`` as the open-source KFP v2 driver evaluates it.

The driver (driver/driver.go Container @2.5.0, driver/container.go @2.14.0)
resolves the task's inputs, then calls ``expression.Condition`` (expression/
expression.go): cel-go compiles the condition against the ExecutorInput proto
(variables ``inputs`` and ``outputs``, fields by their proto names) and runs it
on the resolved inputs; outputs are not provisioned yet. A compile error, an
evaluation error or a result that is not a bool fails the driver, hence the
task and the run. False: the execution is recorded as not triggered (MLMD
CANCELED), no outputs are provisioned, and Argo skips the executor
(compiler/argocompiler/container.go ``when: condition != false``). Every task
after it waits on ``<task>.Succeeded`` (argocompiler/dag.go depends) and is
omitted: no driver, no execution.

Emulated: the CEL that TFX 1.16's Kubeflow V2 compiler writes for
``tfx.dsl.Cond`` (compiler_utils.placeholder_to_cel): input artifact ``.uri`` and
``.metadata['k']``, list index, double and string literals, ``==`` ``!=`` ``<``
``<=`` ``>`` ``>=``, ``!`` ``&&`` ``||`` and ``+``, with cel-go's rules: the
checker refuses unknown variables and fields and ``==`` between two different
static types; at run time equality is heterogeneous (``1.0 == '1'`` is false,
int and double compare as numbers), ordering across types is an error, a
missing map key or index is an error, and ``&&``/``||`` absorb an error when the
other side decides. Metadata is a google.protobuf.Struct: every number is a
double (bools arrive as 1/0 from MLMD). Other CEL (ternary, macros, function
calls, ``in``, ``*``) raises NotEmulated."""

from __future__ import annotations

import re
from typing import Any, Dict, List, Tuple

from kubeflow.local_metadata import NotEmulated

SKIPPED = "SKIPPED"   # the condition was false: a CANCELED execution, the executor skipped
OMITTED = "OMITTED"   # after a skipped or omitted task: Argo never starts it

# The ExecutorInput proto as the checker sees it: field (proto name) -> (JSON name, type).
_MESSAGES: Dict[str, Dict[str, Tuple[str, Any]]] = {
    "ExecutorInput": {"inputs": ("inputs", ("msg", "Inputs")),
                      "outputs": ("outputs", ("msg", "Outputs"))},
    "Inputs": {"artifacts": ("artifacts", ("map", ("msg", "ArtifactList"))),
               "parameter_values": ("parameterValues", ("map", "dyn")),
               "parameters": ("parameters", ("map", ("msg", "Value")))},
    "Outputs": {"artifacts": ("artifacts", ("map", ("msg", "ArtifactList"))),
                "parameters": ("parameters", ("map", ("msg", "OutputParameter"))),
                "output_file": ("outputFile", "string")},
    "ArtifactList": {"artifacts": ("artifacts", ("list", ("msg", "RuntimeArtifact")))},
    "RuntimeArtifact": {"name": ("name", "string"), "uri": ("uri", "string"),
                        "type": ("type", ("msg", "ArtifactTypeSchema")),
                        "metadata": ("metadata", ("map", "dyn")),
                        "properties": ("properties", ("map", ("msg", "Value"))),
                        "custom_properties": ("customProperties", ("map", ("msg", "Value")))},
    "ArtifactTypeSchema": {"schema_title": ("schemaTitle", "string"),
                           "instance_schema": ("instanceSchema", "string"),
                           "schema_version": ("schemaVersion", "string")},
    "Value": {"int_value": ("intValue", "int"), "double_value": ("doubleValue", "double"),
              "string_value": ("stringValue", "string")},
    "OutputParameter": {"output_file": ("outputFile", "string")},
}
_DEFAULTS = {"string": "", "int": 0, "double": 0.0}
_TOKEN = re.compile(r"""\s*(?:
    (?P<num>\d*\.\d+(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|\d+)
  | (?P<str>'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>==|!=|<=|>=|&&|\|\||[<>!+\-.\[\]()]|[*/%?:{},])
)""", re.VERBOSE)
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t", "r": "\r"}
_COMPARE = ("==", "!=", "<", "<=", ">", ">=")


class ConditionError(ValueError):
    """The driver's error for this condition (compile or evaluation), quoted."""


class _EvalError(Exception):
    """A CEL runtime error (absorbed by && and || when the other side decides)."""


# ------------------------------------------------------------------ parsing

def _tokens(text: str) -> List[Tuple[str, str]]:
    out, at = [], 0
    while text[at:].strip():
        m = _TOKEN.match(text, at)
        if not m:
            raise ConditionError(f"Syntax error: unexpected {text[at:].strip()[:20]!r} at {at}")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        at = m.end()
    out.append(("end", ""))
    return out


class _Parser:
    def __init__(self, text: str):
        self.toks, self.i = _tokens(text), 0

    def peek(self, *values: str) -> bool:
        kind, value = self.toks[self.i]
        return kind == "op" and value in values

    def take(self) -> Tuple[str, str]:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def expect(self, value: str) -> None:
        kind, got = self.take()
        if kind != "op" or got != value:
            raise ConditionError(f"Syntax error: expected {value!r}, got {got or 'the end'!r}")

    def parse(self):
        node = self.binary(0)
        if self.peek("?"):
            raise NotEmulated("condition: the ternary operator is not emulated")
        if self.toks[self.i][0] != "end":
            raise ConditionError(f"Syntax error: unexpected {self.toks[self.i][1]!r}")
        return node

    _LEVELS = (("||",), ("&&",), _COMPARE, ("+", "-"))

    def binary(self, level: int):
        if level == len(self._LEVELS):
            return self.unary()
        node = self.binary(level + 1)
        while self.peek(*self._LEVELS[level]):
            op = self.take()[1]
            node = ("bin", op, node, self.binary(level + 1))
        if self.peek("*", "/", "%") or (self.toks[self.i] == ("ident", "in")):
            raise NotEmulated(f"condition: operator {self.toks[self.i][1]!r} is not emulated")
        return node

    def unary(self):
        if self.peek("!", "-"):
            return ("neg" if self.take()[1] == "-" else "not", self.unary())
        node = self.primary()
        while self.peek(".", "["):
            if self.take()[1] == ".":
                kind, name = self.take()
                if kind != "ident":
                    raise ConditionError(f"Syntax error: a field name must follow '.', got {name!r}")
                if self.peek("("):
                    raise NotEmulated(f"condition: method call .{name}() is not emulated")
                node = ("select", node, name)
            else:
                index = self.binary(0)
                self.expect("]")
                node = ("index", node, index)
        return node

    def primary(self):
        kind, value = self.take()
        if kind == "num":
            return ("lit", float(value) if any(c in value for c in ".eE") else int(value))
        if kind == "str":
            return ("lit", _unquote(value))
        if kind == "ident":
            if value in ("true", "false"):
                return ("lit", value == "true")
            if value == "null":
                return ("lit", None)
            if self.peek("("):
                raise NotEmulated(f"condition: function {value}() is not emulated")
            return ("var", value)
        if kind == "op" and value == "(":
            node = self.binary(0)
            self.expect(")")
            return node
        if kind == "op" and value in ("[", "{"):
            raise NotEmulated("condition: list and map literals are not emulated")
        raise ConditionError(f"Syntax error: unexpected {value or 'end of input'!r}")


def _unquote(token: str) -> str:
    body, out, i = token[1:-1], [], 0
    while i < len(body):
        if body[i] == "\\":
            if body[i + 1] not in _ESCAPES:
                raise ConditionError(f"Syntax error: escape \\{body[i + 1]} is not emulated")
            out.append(_ESCAPES[body[i + 1]])
            i += 2
        else:
            out.append(body[i])
            i += 1
    return "".join(out)


# ----------------------------------------------------------------- checking

def _name(t) -> str:
    return t if isinstance(t, str) else (t[1] if t[0] == "msg" else f"{t[0]}({_name(t[1])})")


def _literal_type(v) -> str:
    return {bool: "bool", int: "int", float: "double", str: "string", type(None): "null"}[type(v)]


def _check(node):
    """The static type of `node` (cel-go's checker, for this subset)."""
    kind = node[0]
    if kind == "lit":
        return _literal_type(node[1])
    if kind == "var":
        if node[1] not in _MESSAGES["ExecutorInput"]:
            raise ConditionError(f"undeclared reference to '{node[1]}'")
        return _MESSAGES["ExecutorInput"][node[1]][1]
    if kind == "select":
        t = _check(node[1])
        if t == "dyn":
            return "dyn"
        if t[0] == "msg" and node[2] in _MESSAGES[t[1]]:
            return _MESSAGES[t[1]][node[2]][1]
        if t[0] == "map":
            return t[1]
        raise ConditionError(f"undefined field '{node[2]}' on {_name(t)}")
    if kind == "index":
        t, i = _check(node[1]), _check(node[2])
        if t == "dyn" or (t[0] == "map" and i in ("string", "dyn")) or (t[0] == "list" and i in ("int", "dyn")):
            return "dyn" if t == "dyn" else t[1]
        raise ConditionError(f"found no matching overload for '_[_]' applied to '({_name(t)}, {_name(i)})'")
    if kind in ("not", "neg"):
        t = _check(node[1])
        if t == "dyn" or t in (("bool",) if kind == "not" else ("int", "double")):
            return t
        raise ConditionError(f"found no matching overload for '{'!_' if kind == 'not' else '-_'}' "
                             f"applied to '({_name(t)})'")
    op, lt, rt = node[1], _check(node[2]), _check(node[3])
    if op in ("&&", "||"):
        ok = all(t in ("bool", "dyn") for t in (lt, rt))
        result = "bool"
    elif op in ("==", "!="):
        ok, result = "dyn" in (lt, rt) or lt == rt, "bool"
    elif op in _COMPARE:
        numeric = {lt, rt} <= {"int", "double"}
        ok = "dyn" in (lt, rt) or numeric or (lt == rt and lt in ("string", "bool"))
        result = "bool"
    else:  # + and -
        ok = "dyn" in (lt, rt) or (lt == rt and lt in (("int", "double", "string") if op == "+"
                                                       else ("int", "double")))
        result = rt if lt == "dyn" else lt
    if not ok:
        raise ConditionError(f"found no matching overload for '_{op}_' applied to "
                             f"'({_name(lt)}, {_name(rt)})'")
    return result


# --------------------------------------------------------------- evaluating

def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _kind(v) -> str:
    return "number" if _is_num(v) else type(v).__name__


def _equal(a, b) -> bool:
    if _is_num(a) and _is_num(b):
        return float(a) == float(b)
    if _kind(a) != _kind(b):
        return False  # heterogeneous equality (cel-go >= 0.10)
    if isinstance(a, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return a == b


def _struct(v):
    """A google.protobuf.Value as CEL sees it: every number a double."""
    if isinstance(v, dict):
        return {k: _struct(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_struct(x) for x in v]
    return float(v) if _is_num(v) else v


def _eval(node, value):
    kind = node[0]
    if kind == "lit":
        return node[1]
    if kind == "var":
        return value.get(node[1]) or {}
    if kind in ("select", "index"):
        base_t = _check(node[1])
        base = _eval(node[1], value)
        key = node[2] if kind == "select" else _eval(node[2], value)
        if base_t != "dyn" and base_t[0] == "msg" and kind == "select":
            json_name, field_t = _MESSAGES[base_t[1]][key]
            got = base.get(json_name)
            if got is None:  # an unset proto field reads as its default
                got = _DEFAULTS.get(field_t) if isinstance(field_t, str) else \
                    ([] if field_t[0] == "list" else {})
            return _struct(got) if field_t == ("map", "dyn") else got
        if isinstance(base, list):
            if not (isinstance(key, int) and not isinstance(key, bool)) and \
                    not (isinstance(key, float) and key.is_integer()):
                raise _EvalError(f"unsupported index type '{_kind(key)}' in list")
            if not 0 <= int(key) < len(base):
                raise _EvalError(f"index '{int(key)}' out of range in list size '{len(base)}'")
            return base[int(key)]
        if isinstance(base, dict):
            if key not in base:
                raise _EvalError(f"no such key: {key}")
            return base[key]
        raise _EvalError(f"no such overload: {_kind(base)}[{_kind(key)}]")
    if kind == "not":
        v = _eval(node[1], value)
        if not isinstance(v, bool):
            raise _EvalError("no such overload: !" + _kind(v))
        return not v
    if kind == "neg":
        v = _eval(node[1], value)
        if not _is_num(v):
            raise _EvalError("no such overload: -" + _kind(v))
        return -v
    op = node[1]
    if op in ("&&", "||"):
        return _logical(op, node, value)
    a, b = _eval(node[2], value), _eval(node[3], value)
    if op in ("==", "!="):
        return _equal(a, b) == (op == "==")
    if op in _COMPARE:
        if not ((_is_num(a) and _is_num(b)) or (_kind(a) == _kind(b) and isinstance(a, (str, bool)))):
            raise _EvalError(f"no such overload: {_kind(a)} {op} {_kind(b)}")
        return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]
    if _is_num(a) and _is_num(b) and type(a) is type(b):
        return a + b if op == "+" else a - b
    if op == "+" and isinstance(a, str) and isinstance(b, str):
        return a + b
    raise _EvalError(f"no such overload: {_kind(a)} {op} {_kind(b)}")


def _logical(op, node, value):
    decides = op == "||"  # the value of one side that decides the result
    sides = []
    for child in node[2:]:
        try:
            sides.append(_eval(child, value))
        except _EvalError as e:
            sides.append(e)
    if any(v is decides for v in sides):
        return decides
    for v in sides:
        if isinstance(v, _EvalError):
            raise v
        if not isinstance(v, bool):
            raise _EvalError(f"no such overload: {_kind(v)} {op}")
    return not decides


def evaluate(condition: str, inputs: Dict[str, Any]) -> bool:
    """The driver's answer for `condition` on the ExecutorInput ``inputs`` it
    resolved (JSON form: ``artifacts``, ``parameterValues``). ConditionError
    quotes what the driver would fail with."""
    tree = _Parser(condition).parse()
    _check(tree)
    try:
        result = _eval(tree, {"inputs": inputs})
    except _EvalError as e:
        raise ConditionError(f"evaluation error: {e}") from None
    if not isinstance(result, bool):
        raise ConditionError(f"evaluation error: return type is not bool, got {result!r}")
    return result


# ------------------------------------------------------------ the launcher's use

def triggered(name: str, task: Dict[str, Any], inputs: Dict[str, List[Dict[str, Any]]],
              parameters: Dict[str, Any], oss: bool) -> bool:
    """Whether the driver starts task `name`'s executor (inputs as it resolved them)."""
    policy = task.get("triggerPolicy") or {}
    if policy.get("strategy") not in (None, "", "ALL_UPSTREAM_TASKS_SUCCEEDED"):
        raise NotEmulated(f"task {name}: triggerPolicy.strategy {policy['strategy']} "
                          "(exit handlers) is not emulated")
    if not policy.get("condition"):
        return True
    if not oss:
        raise NotEmulated(f"task {name}: triggerPolicy.condition is emulated for the "
                          "open-source backend only")
    return evaluate(policy["condition"], {"artifacts": {k: {"artifacts": v} for k, v in inputs.items()},
                                          "parameterValues": parameters})


def omitted(pending, deps: Dict[str, set], states: Dict[str, str]) -> List[str]:
    """Pending tasks Argo omits: every dependency done and one skipped or omitted
    (argocompiler/dag.go depends: ``<dep>.Succeeded && ...``), in the order found."""
    states, found, more = dict(states), [], True
    while more:
        more = False
        for name in sorted(set(pending) - set(found)):
            done = deps[name] <= set(states)
            if done and any(states[d] in (SKIPPED, OMITTED) for d in deps[name]):
                states[name] = OMITTED
                found.append(name)
                more = True
    return found
