"""The spec language: functions in index notation, parsed by a real parser into SymPy objects.

    y[i] = exp(x[i]) / sum(exp(x[k]), k)     # a vector definition with its free index
    L = -sum(t[k] * log(y[k]), k)             # a scalar definition; later lines use earlier ones
    given sum(t[k], k) = 1                    # a constraint on an input

Indexed names that are not defined are inputs; bare names that are not defined are scalar
parameters (assumed positive, e.g. a temperature T). Arrays may have several indices (`W[c, d]`);
an integer input used in an index position picks an entry (`p[b, label[b]]`). Each index ranges over
an axis; axes that share an index are one range, found by unification. Nothing here evaluates user text.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

import sympy as sp
from sympy.codegen.cfunctions import log1p
from sympy.printing.str import StrPrinter

from softgrad.derive.symbols import Edge, class_sum, condition, index, sigmoid, softplus
from softgrad.derive.symbols import n as size_symbol
from softgrad.errors import SpecError

MAX_SPEC_CHARACTERS = 20_000
MAX_NESTING = 100
MAX_NAME_CHARACTERS = 64
MAX_NUMBER_CHARACTERS = 40
#: Every constant a spec writes or computes stays within double precision (the checks and the
#: generated code work in it); anything larger is refused before SymPy is asked to compute it.
LARGEST_CONSTANT = sp.Float("1.7976931348623157e308")
SMALLEST_CONSTANT = sp.Float("4.9406564584124654e-324")  # the smallest subnormal

#: name → builder, each of one argument. `sum` and `delta` take indices and are handled apart.
FUNCTIONS: dict[str, Any] = {
    "exp": sp.exp,
    "log": sp.log,
    "log1p": log1p,
    "sqrt": sp.sqrt,
    "tanh": sp.tanh,
    "sigmoid": sigmoid,
    "softplus": softplus,
    "erf": sp.erf,
    "abs": sp.Abs,
}
#: Functions of two or more arguments (kinks where they switch; see rules.py).
VARIADIC_FUNCTIONS: dict[str, Any] = {"min": sp.Min, "max": sp.Max}
SPECIAL_FORMS = ("sum", "delta", "size")
#: `size` is a form only when called (size(k)); as a name it stays the user's, as it always was.
RESERVED = set(FUNCTIONS) | set(VARIADIC_FUNCTIONS) | {"sum", "delta"} | {"given", "n"}

#: Lines end at a newline only: a comment that holds U+2028 or a form feed stays one comment.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")

_TOKEN = re.compile(
    r"(?P<space>[ \t]+)|(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<op>\*\*|<=|>=|==|!=|[-+*/^()\[\],=<>])"
)


#: Facts about an input's entries, so that checks draw them where the function is defined:
#: `given t[b, c] in {0, 1}`, `given v[b] > 0`, `given 0 <= p[b, c] <= 1` (the brackets may be left out).
_FACT = re.compile(r"\s*given\s+(?:(?P<low>0)\s*<=\s*)?(?P<name>[A-Za-z_]\w*)\s*(?:\[[\w\s,]*\])?\s*"
                   r"(?:(?P<binary>in\s*\{\s*0\s*,\s*1\s*\})|(?P<positive>>\s*0)|(?P<high><=\s*1))\s*$")
#: How each fact is printed back.
FACTS = {"binary": "given {name} in {{0, 1}}", "positive": "given {name} > 0", "unit": "given 0 <= {name} <= 1"}


def _fact(text: str, line: int) -> tuple[str, str] | None:
    """(input name, kind) of a fact statement, None for any other statement; a `given` with {, < or > that
    is no fact is an error naming the three forms."""
    if not re.match(r"\s*given\b", text) or not re.search(r"[{}<>]", text):
        return None
    match = _FACT.fullmatch(text)
    if match is None or bool(match.group("low")) != bool(match.group("high")):
        raise SpecError("a fact about an input is 'given t[b, c] in {0, 1}', 'given v[b] > 0' or "
                        "'given 0 <= p[b, c] <= 1'", line, 1)
    kind = "binary" if match.group("binary") else "positive" if match.group("positive") else "unit"
    return match.group("name"), kind


#: The indices free at a point of an expression (the definition's own, and those of enclosing sums).
Scope = tuple[sp.Symbol, ...]


@dataclass(frozen=True)
class Token:
    kind: str  # number, name, op, end
    text: str
    column: int  # 1-based


@dataclass
class Definition:
    """One line `name[indices] = expr` (index is None for a scalar; the first index of an array)."""

    name: str
    index: sp.Symbol | None
    expr: sp.Expr
    source: str
    line: int
    indices: tuple[sp.Symbol, ...] = ()  # all of them (`index` alone for a one-index spec)

    def __post_init__(self) -> None:
        if not self.indices and self.index is not None:
            self.indices = (self.index,)

    @property
    def symbol(self) -> sp.Expr:
        """The defined quantity as it appears in formulas: y[i], P[i, j] or L."""
        return sp.IndexedBase(self.name)[self.indices] if self.indices else sp.Symbol(self.name)

    @property
    def is_vector(self) -> bool:
        return self.index is not None


@dataclass
class Constraint:
    """`given sum(t[k], k) = c`: the entries of an input sum to a constant."""

    input_name: str
    lhs: sp.Expr
    rhs: sp.Expr
    source: str
    line: int = 0

    @property
    def summed_axis(self) -> int:
        """The axis of the input that the constraint sums over (1 for sum(T[b, k], k))."""
        summed = self.lhs.function
        return list(summed.indices).index(self.lhs.limits[0][0])


@dataclass
class Spec:
    """A parsed spec: definitions in order (the last is the output), inputs, parameters, constraints."""

    source: str
    definitions: list[Definition]
    inputs: list[str]
    parameters: list[str]
    constraints: list[Constraint] = field(default_factory=list)
    name: str | None = None
    #: For specs with several ranges: each array's axes by range name, label inputs with the range their
    #: values pick from, and each range's size symbol (n_b). One-index specs leave these empty.
    axes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, sp.Symbol] = field(default_factory=dict)
    #: The row index of a batched spec derived as one row (`b` of y[b, i]: see _one_row), else None.
    carried: str | None = None
    #: The row index softgrad wrote into a one-index spec (with_rows), else None.
    rows_added: str | None = None
    #: Names for the upstream gradient of a vector output, the first one free taken (v for a Hessian's product).
    upstream_names: tuple[str, ...] = ("g", "dy", "grad_out")
    #: The same for a spec of several indices, where d<output> comes first (dO); the Hessian's product sets v.
    array_upstream_names: tuple[str, ...] = ()
    #: Facts about inputs' entries (`given t in {0, 1}`): input → "binary", "positive" or "unit" ([0, 1]).
    facts: dict[str, str] = field(default_factory=dict)
    #: Inputs declared `pad x`: read as 0 outside their ranges (the parser wrote the edges as brackets).
    padded: tuple[str, ...] = ()
    #: Ranges whose size follows from others' (x read at t + k: n_s = n_t + n_k − 1), by range name.
    derived_sizes: dict[str, sp.Expr] = field(default_factory=dict)

    @property
    def tensor(self) -> bool:
        """Whether the spec has arrays of several indices or labels (the tensor pipeline derives it)."""
        return bool(self.axes)

    @property
    def output(self) -> Definition:
        return self.definitions[-1]

    @property
    def statements(self) -> list[str]:
        """The spec as softgrad prints it back: one normalised statement per line, no comments.

        Documents and generated files quote these, never the source text: they are printed from the
        parsed expressions, so they hold only names, numbers and operators, whatever the source held."""
        lines = [definition_text(d, self.sizes) for d in self.definitions]
        lines += [f"given {spec_text(c.lhs)} = {spec_text(c.rhs)}" for c in self.constraints]
        lines += [FACTS[kind].format(name=name) for name, kind in self.facts.items()]
        lines += [f"pad {name}" for name in self.padded]
        lines += [f"input {name}" for name in self.inputs if self.axes.get(name) == () and name not in self.labels]
        return lines

    def base_sizes(self) -> list[str]:
        """The ranges whose sizes are free (chosen, or read off inputs); the others follow from them."""
        return [name for name in self.sizes if name not in self.derived_sizes]

    def size_formulas(self, fixed: list[str]) -> tuple[list[tuple[str, sp.Expr]], list[tuple[str, sp.Expr]]]:
        """How generated code finds every range's size from those its inputs' shapes give (`fixed`):
        (range, formula) for each other range (x read at t + k fixes s, w fixes k: n_t = n_s − n_k + 1),
        and (range, formula) for each given size that must agree with the others. A range no formula
        reaches is missing from both."""
        unknown = [self.sizes[name] for name in self.sizes if name not in fixed]
        equations = [sp.Eq(self.sizes[name], value) for name, value in self.derived_sizes.items()]
        solved: dict[sp.Symbol, sp.Expr] = {}
        if unknown and equations:
            solutions = sp.solve(equations, unknown, dict=True)
            solved = {symbol: value for symbol, value in (solutions[0] if solutions else {}).items()
                      if not value.free_symbols & set(unknown)}
        by_symbol = {symbol: name for name, symbol in self.sizes.items()}
        formulas = [(by_symbol[symbol], sp.expand(solved[symbol])) for symbol in unknown if symbol in solved]
        agreements = []
        for name, value in self.derived_sizes.items():
            if name in fixed:
                formula = sp.expand(value.xreplace(solved))
                if formula != self.sizes[name]:
                    agreements.append((name, formula))
        return formulas, agreements

    def consistent_sizes(self, sizes: dict[str, int]) -> dict[str, int]:
        """Sizes by range name with every derived one computed from the free ones' (x read at t + k: s)."""
        chosen = {self.sizes[name]: size for name, size in sizes.items() if name not in self.derived_sizes}
        every = self.all_sizes(chosen)
        return {name: every[symbol] for name, symbol in self.sizes.items() if symbol in every}

    def all_sizes(self, chosen: dict[sp.Symbol, int]) -> dict[sp.Symbol, int]:
        """Every range's size from the free ones' (derived sizes computed: n_s = n_t + n_k − 1)."""
        sizes = dict(chosen)
        for range_name, expression in self.derived_sizes.items():
            sizes[self.sizes[range_name]] = int(expression.xreplace(sizes))
        return sizes

    @property
    def facts_drawn(self) -> str:
        """What a derivation's summary says of the facts: the checks drew those inputs where the facts hold."""
        if not self.facts:
            return ""
        return "; inputs drawn where the spec's facts hold (" + ", ".join(
            FACTS[kind].format(name=name).removeprefix("given ") for name, kind in self.facts.items()) + ")"

    @property
    def digest(self) -> str:
        """SHA-256 of the source text, naming exactly which spec a generated file came from."""
        import hashlib

        return hashlib.sha256(self.source.encode("utf-8", "surrogatepass")).hexdigest()

    def definition(self, name: str) -> Definition | None:
        return next((d for d in self.definitions if d.name == name), None)


def with_scalar_inputs(spec: Spec, names: list[str]) -> Spec:
    """The spec with the parameters `names` made inputs without indices (a learnable temperature T, a logit
    scale): differentiable, still positive. A one-index spec gets its row index written out first, since a
    scalar beside rows is several ranges."""
    chosen = [name for name in names if name in spec.parameters]
    if not chosen:
        return spec
    lifted = spec if spec.axes else with_rows(spec)
    copy = dataclasses.replace(lifted, inputs=[*lifted.inputs, *chosen],
                               parameters=[p for p in lifted.parameters if p not in chosen],
                               axes={**lifted.axes, **{name: () for name in chosen}})
    return copy


def from_intermediate(spec: Spec, name: str) -> Spec:
    """The spec with intermediate `name` made an input: its definition, and what only it needed, dropped.

    verify --wrt p checks code whose input is an intermediate (the probabilities of a cross-entropy):
    the rest of the spec, printed back from its parsed statements and parsed again, is the reference."""
    definition = spec.definition(name)
    if definition is None or definition is spec.output:
        known = ", ".join(d.name for d in spec.definitions[:-1]) or "none"
        raise SpecError(f"{name!r} is not an intermediate of this spec (its inputs: {', '.join(spec.inputs)}; "
                        f"intermediates: {known})")
    kept = [d for d in spec.definitions if d is not definition]
    needed = {spec.output.name}
    for later in reversed(kept):  # keep what the output needs, through the kept definitions
        if later.name in needed:
            needed |= {str(e.base) for e in later.expr.atoms(sp.Indexed)} | {str(s) for s in later.expr.free_symbols}
    lines = [definition_text(d, spec.sizes) for d in kept if d.name in needed]
    lines += [f"given {spec_text(c.lhs)} = {spec_text(c.rhs)}" for c in spec.constraints]
    lines += [f"pad {padded}" for padded in spec.padded if padded in needed or any(
        padded in names for names in [{str(e.base) for e in d.expr.atoms(sp.Indexed)} for d in kept])]
    return parse_spec("\n".join(lines), name=f"{spec.name or 'spec'}, from {name}")


def definition_text(definition: Definition, sizes: dict[str, sp.Symbol] | None = None) -> str:
    """A spec's own definition printed back: a padded read as written (x[t - k]), its edges implied by `pad x`,
    a range's size as size(r)."""
    expr = definition.expr.replace(lambda e: isinstance(e, Edge), lambda e: sp.S.One)
    expr = expr.xreplace({symbol: sp.Symbol(f"size({name})") for name, symbol in (sizes or {}).items()})
    return f"{definition.name}{_brackets(definition.indices)} = {spec_text(expr)}"


def _brackets(indices: tuple[sp.Symbol, ...]) -> str:
    return "[" + ", ".join(map(str, indices)) + "]" if indices else ""


def statement_text(spec: Spec, name: str, indices: tuple[sp.Expr, ...], expr: sp.Expr) -> str:
    """`name[indices] = expr` as the spec language reads it back, a range's size written size(r) (what a spec
    made from a derivation's formulas prints: a block of lifted indices, a Hessian's gradient spec)."""
    sized = {symbol: sp.Symbol(f"size({range_name})") for range_name, symbol in spec.sizes.items()}
    return f"{name}{_brackets(tuple(indices))} = {spec_text(expr.xreplace(sized))}"


def _shifted_axes(tokens: list[Token]) -> set[tuple[str, int]]:
    """(array, axis) of every entry on a line whose position there is shifted (x[t + k], x[i - 1]), found on
    the tokens before parsing: a plain x[i] on the same line then reads the axis without fixing its range."""
    shifted: set[tuple[str, int]] = set()
    for start, token in enumerate(tokens[:-1]):
        if token.kind != "name" or tokens[start + 1].text != "[":
            continue
        depth, axis, position = 0, 0, start + 2
        while position < len(tokens) and tokens[position].kind != "end":
            text = tokens[position].text
            if text in ("(", "["):
                depth += 1
            elif text in (")", "]"):
                if depth == 0:
                    break
                depth -= 1
            elif depth == 0 and text == ",":
                axis += 1
            elif depth == 0 and tokens[position].kind == "op" and text in ("+", "-", "*"):
                shifted.add((token.text, axis))
            elif depth == 0 and tokens[position].kind == "number":
                shifted.add((token.text, axis))
            position += 1
    return shifted


#: `input T` (or `input T, s`): a bare name that is learned (an input without indices), not a constant parameter.
_INPUT = re.compile(r"\s*input\s+(?P<names>[A-Za-z]\w*(?:\s*,\s*[A-Za-z]\w*)*)\s*")
#: `pad x` (or `pad x, h`): shifted reads of x take the range of the index they shift and read 0 outside it.
_PAD = re.compile(r"\s*pad\s+(?P<names>[A-Za-z]\w*(?:\s*,\s*[A-Za-z]\w*)*)\s*")


def _declared(statements: list[tuple[int, str]], declaration: re.Pattern[str]) -> dict[str, int]:
    """The names a declaration (`pad x, h`, `input T`) lists, each with the first line that declares it."""
    names: dict[str, int] = {}
    for line_number, text in statements:
        found = declaration.fullmatch(text)
        if found is not None:
            for name in re.split(r"\s*,\s*", found.group("names")):
                _check_name(name, line_number, 1)
                names.setdefault(name, line_number)
    return names


def tokenize(text: str, line: int) -> list[Token]:
    """Split one line into tokens; any character outside the language is an error at its column."""
    tokens, position = [], 0
    while position < len(text):
        if text[position] == "#":
            break
        match = _TOKEN.match(text, position)
        if match is None:
            raise SpecError(f"unexpected character {text[position]!r}", line, position + 1)
        if match.lastgroup == "name":
            _check_name(match.group(), line, position + 1)
        elif match.lastgroup == "number" and len(match.group()) > MAX_NUMBER_CHARACTERS:
            raise SpecError(f"number literal longer than {MAX_NUMBER_CHARACTERS} characters", line, position + 1)
        if match.lastgroup != "space":
            tokens.append(Token(str(match.lastgroup), match.group(), position + 1))
        position = match.end()
    tokens.append(Token("end", "", len(text.rstrip()) + 1))
    return tokens


def _check_name(name: str, line: int, column: int) -> None:
    """Names beginning with '_' are reserved: generated code keeps its own names there."""
    if name.startswith("_"):
        raise SpecError(f"names may not begin with '_' ({name!r}): softgrad reserves those for generated code",
                        line, column)
    if len(name) > MAX_NAME_CHARACTERS:
        raise SpecError(f"name longer than {MAX_NAME_CHARACTERS} characters", line, column)


def _in_range(value: sp.Expr) -> bool:
    """A number SymPy computed is finite and within double precision."""
    if not value.is_Number:
        return True
    if not value.is_finite:
        return False
    if value.is_Rational and not value.is_Integer:
        return bool(max(abs(value.p), value.q).bit_length() <= 1100)
    return bool(value.is_zero or SMALLEST_CONSTANT <= abs(value) <= LARGEST_CONSTANT)


def _power_in_range(base: sp.Expr, exponent: sp.Expr) -> bool:
    """Whether base**exponent of two numbers stays within double precision, decided before computing it."""
    if not (base.is_Number and exponent.is_Number) or base == 0 or abs(base) == 1:
        return True
    digits = abs(exponent) * abs(sp.log(abs(base), 10))
    return bool(sp.N(digits, 15) <= 308)


class _Layout:
    """What the lines say about shapes: each array's number of indices, and which axes share a range.

    A range is a class of nodes joined by union–find: an array's axis ("axis", name, position), an
    index name within one statement ("index", line, name) and a label's values ("values", name)."""

    def __init__(self) -> None:
        self.arity: dict[str, int] = {}
        self.parent: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self.first_name: dict[tuple[Any, ...], str] = {}  # node → the index name first seen on it
        self.labels: list[str] = []
        self.sized: list[tuple[sp.Symbol, tuple[Any, ...]]] = []  # size(k) placeholders and their node
        self.n_used: list[tuple[int, int]] = []  # where `n` was written (line, column)
        #: Axes read at shifted positions (x[b, c, t + k]): axis node → [(line, column, position)], and the
        #: inputs declared `pad x` (their shifted reads take the range of the index they shift, zeros outside).
        self.extents: dict[tuple[Any, ...], list[tuple[int, int, sp.Expr]]] = {}
        self.padded: set[str] = set()
        #: whether a line reads an index as a number or in a condition (then ranges are the several-index kind)
        self.conditions = False

    def find(self, node: tuple[Any, ...]) -> tuple[Any, ...]:
        self.parent.setdefault(node, node)
        while self.parent[node] != node:
            self.parent[node] = self.parent[self.parent[node]]
            node = self.parent[node]
        return node

    def join(self, first: tuple[Any, ...], second: tuple[Any, ...]) -> None:
        a, b = self.find(first), self.find(second)
        if a != b:
            self.parent[b] = a
            if a not in self.first_name and b in self.first_name:
                self.first_name[a] = self.first_name[b]

    def name_range(self, node: tuple[Any, ...], name: str) -> None:
        root = self.find(node)
        self.first_name.setdefault(root, name)

    @property
    def several_ranges(self) -> bool:
        return bool(self.labels or self.extents or self.sized_padding or self.conditions) or any(
            count != 1 for count in self.arity.values())

    @property
    def sized_padding(self) -> bool:
        return any(str(placeholder).startswith("_size_axis") for placeholder, _ in self.sized)


class _LineParser:
    """Recursive descent over one line's tokens, building SymPy objects and checking index scope."""

    def __init__(self, tokens: list[Token], line: int, known: dict[str, str], layout: _Layout | None = None):
        self.tokens, self.position, self.line = tokens, 0, line
        self.known = known  # name -> "vector" | "scalar" | "input" | "parameter" | "label"
        self.layout = layout if layout is not None else _Layout()
        self.used_inputs: list[str] = []
        self.used_parameters: list[str] = []
        self.depth = 0
        self.shifted = _shifted_axes(tokens)  # (array, axis) read at a shifted position somewhere on this line
        self.in_condition = False  # inside [a <= b]: a range's size, size(k), may be a term

    # --- token helpers
    @property
    def current(self) -> Token:
        return self.tokens[self.position]

    def error(self, message: str, token: Token | None = None) -> SpecError:
        return SpecError(message, self.line, (token or self.current).column)

    def accept(self, text: str) -> bool:
        if self.current.kind == "op" and self.current.text == text:
            self.position += 1
            return True
        return False

    def expect(self, text: str) -> None:
        if not self.accept(text):
            found = self.current.text or "end of line"
            raise self.error(f"expected {text!r}, found {found!r}")

    def expect_name(self, what: str) -> Token:
        token = self.current
        if token.kind != "name":
            raise self.error(f"expected {what}, found {token.text or 'end of line'!r}")
        self.position += 1
        return token

    # --- grammar: expr := term (('+'|'-') term)* ; term := unary (('*'|'/') unary)*
    def expression(self, scope: tuple[sp.Symbol, ...]) -> sp.Expr:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self.error(f"expression nested more than {MAX_NESTING} deep")
        result = self.term(scope)
        while True:
            operator = self.current
            if self.accept("+"):
                result = self.constant(result + self.term(scope), operator)
            elif self.accept("-"):
                result = self.constant(result - self.term(scope), operator)
            else:
                self.depth -= 1
                return result

    def term(self, scope: Scope) -> sp.Expr:
        result = self.unary(scope)
        while True:
            operator = self.current
            if self.accept("*"):
                result = self.constant(result * self.unary(scope), operator)
            elif self.accept("/"):
                divisor = self.unary(scope)
                if divisor.is_zero:
                    raise self.error("division by zero", operator)
                result = self.constant(result / divisor, operator)
            else:
                return result

    def unary(self, scope: Scope) -> sp.Expr:  # unary := ('-'|'+') unary | power
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self.error(f"expression nested more than {MAX_NESTING} deep")
        if self.accept("-"):
            result = self.constant(-self.unary(scope))
        elif self.accept("+"):
            result = self.unary(scope)
        else:
            result = self.power(scope)
        self.depth -= 1
        return result

    def power(self, scope: Scope) -> sp.Expr:  # power := atom (('**'|'^') unary)?   (right-associative)
        base = self.atom(scope)
        operator = self.current
        if self.accept("**") or self.accept("^"):
            exponent = self.unary(scope)
            if not _power_in_range(base, exponent):
                raise self.error("constant power out of range of double precision", operator)
            if base.is_zero and exponent.is_extended_negative:
                raise self.error("division by zero (0 to a negative power)", operator)
            return self.constant(base ** exponent, operator)
        return base

    def constant(self, value: sp.Expr, token: Token | None = None) -> sp.Expr:
        """Refuse a number SymPy computed that double precision cannot hold (1e300 * 1e300)."""
        if not _in_range(value):
            raise self.error("constant out of range of double precision", token)
        return value

    def atom(self, scope: Scope) -> sp.Expr:
        token = self.current
        if token.kind == "number":
            self.position += 1
            # decided in doubles first: SymPy takes minutes to build 1e999999 before any range check could run
            as_double = float(token.text)
            mantissa = token.text.lower().split("e")[0]
            if math.isinf(as_double) or (as_double == 0 and mantissa.strip("0.")):
                raise self.error(f"number {token.text} is out of range of double precision", token)
            value = sp.Integer(int(token.text)) if token.text.isdigit() else sp.Float(token.text)
            if not _in_range(value):
                raise self.error(f"number {token.text} is out of range of double precision", token)
            return value
        if self.accept("("):
            inner = self.expression(scope)
            self.expect(")")
            return inner
        if token.text == "[" and token.kind == "op":
            return self.condition(scope)
        if token.kind != "name":
            raise self.error(f"expected a number, a name, '(' or a condition [j <= i], found "
                             f"{token.text or 'end of line'!r}")
        self.position += 1
        if self.current.text == "(":
            return self.call(token, scope)
        if self.current.text == "[":
            return self.indexed(token, scope)
        return self.scalar(token, scope)

    def call(self, name: Token, scope: Scope) -> sp.Expr:
        self.expect("(")
        if name.text == "sum":
            bound_position = self._find_sum_index()
            bounds = self._indices_at(bound_position, scope)
            inner = self.expression((*scope, *bounds))
            self.expect(",")
            self.position += 2 * len(bounds) - 1  # the index names and their commas, already validated
            self.expect(")")
            for bound in reversed(bounds):  # sum(f, b, k) = Σ_b Σ_k f
                inner = class_sum(inner, bound)
            return inner
        if name.text == "delta":
            first = self.index_or_label(scope)
            self.expect(",")
            second = self.index_or_label(scope)
            self.expect(")")
            if isinstance(first, sp.Symbol) and isinstance(second, sp.Indexed):
                self.layout.join(("index", self.line, str(first)), ("values", str(second.base)))
            if isinstance(second, sp.Symbol) and isinstance(first, sp.Indexed):
                self.layout.join(("index", self.line, str(second)), ("values", str(first.base)))
            return sp.KroneckerDelta(first, second)
        if name.text == "size":
            return self.size_of(scope)
        if name.text in VARIADIC_FUNCTIONS:
            arguments = [self.expression(scope)]
            while self.accept(","):
                arguments.append(self.expression(scope))
            self.expect(")")
            if len(arguments) < 2:
                raise self.error(f"{name.text}() takes two or more arguments, e.g. {name.text}(x[i], 0)", name)
            return self.constant(VARIADIC_FUNCTIONS[name.text](*arguments), name)
        if name.text not in FUNCTIONS:
            known = ", ".join(sorted(set(FUNCTIONS) | set(VARIADIC_FUNCTIONS) | set(SPECIAL_FORMS)))
            raise self.error(f"unknown function {name.text!r} (known: {known})", name)
        argument = self.expression(scope)
        if self.current.text == ",":
            raise self.error(f"{name.text}() takes one argument")
        self.expect(")")
        if name.text in ("log", "sqrt") and argument.is_number and argument.is_extended_nonpositive:
            if argument.is_zero and name.text == "log":
                raise self.error("log(0) is not a number", name)
            if argument.is_extended_negative:
                raise self.error(f"{name.text} of a negative constant is not a real number", name)
        if name.text == "log1p" and argument.is_number and (argument + 1).is_extended_nonpositive:
            raise self.error("log1p of a constant at or below -1 is not a real number", name)
        return self.constant(FUNCTIONS[name.text](argument), name)

    def _find_sum_index(self) -> int:
        """Position of sum's second argument: the comma at bracket depth 0, then a name and ')'."""
        depth = 0
        for position in range(self.position, len(self.tokens)):
            token = self.tokens[position]
            if token.text in "([":
                depth += 1
            elif token.text in ")]":
                if depth == 0:
                    raise SpecError("sum() needs two arguments: sum(expression, index)", self.line, token.column)
                depth -= 1
            elif token.text == "," and depth == 0:
                return position + 1
        raise self.error("sum() is missing its closing ')'")

    def _indices_at(self, position: int, scope: Scope) -> list[sp.Symbol]:
        """The summation indices after sum's expression: one or more names, comma-separated, then ')'."""
        bounds: list[sp.Symbol] = []
        while True:
            token = self.tokens[position]
            if token.kind != "name":
                raise SpecError(f"expected an index name, found {token.text or 'end of line'!r}", self.line,
                                token.column)
            symbol = index(token.text)
            if symbol in scope:
                raise SpecError(
                    f"cannot sum over index {token.text!r}: it is already free here (rename the summation index)",
                    self.line, token.column,
                )
            if symbol in bounds:
                raise SpecError(f"index {token.text!r} is summed over twice", self.line, token.column)
            if token.text in RESERVED or token.text in self.known:
                raise SpecError(f"{token.text!r} cannot be used as an index", self.line, token.column)
            bounds.append(symbol)
            after = self.tokens[position + 1]
            if after.text == ")":
                return bounds
            if after.text != ",":
                raise SpecError("sum() takes an expression and then index names: sum(f, k) or sum(f, b, k)",
                                self.line, after.column)
            position += 2

    def size_of(self, scope: Scope) -> sp.Expr:
        """size(k) after its opening parenthesis: the size of k's range, a placeholder until ranges are known."""
        token = self.expect_name("an index")
        size_of = index(token.text)
        uses = [t for t in self.tokens if t.kind == "name" and t.text == token.text and t is not token]
        if size_of not in scope and (not uses or token.text in self.known or token.text in RESERVED):
            raise self.error(f"size({token.text}): {token.text!r} is not an index of this statement", token)
        self.expect(")")
        placeholder = sp.Symbol(f"_size_{self.line}_{size_of}_{token.column}", integer=True, positive=True)
        self.layout.sized.append((placeholder, ("index", self.line, str(size_of))))
        return placeholder

    def index_use(self, scope: Scope) -> sp.Symbol:
        token = self.expect_name("an index")
        symbol = index(token.text)
        if symbol not in scope:
            raise self.error(
                f"undefined index {token.text!r}: use the left-hand side's indices or sum over it", token
            )
        return symbol

    def index_or_label(self, scope: Scope) -> sp.Expr:
        """An index name, or a label input's entry used as an index (`label[b]`, an integer class index)."""
        token = self.current
        if token.kind == "name" and self.tokens[self.position + 1].text == "[":
            if self.known.get(token.text, "label") != "label" or token.text in RESERVED:
                raise self.error(f"{token.text!r} is not a label input: only an integer input can pick an "
                                 "entry by its value", token)
            if token.text not in self.known:
                self.known[token.text] = "label"
                self.used_inputs.append(token.text)
                self.layout.labels.append(token.text)
            self.position += 1
            return self.array_entry(token, scope)
        return self.index_use(scope)

    def position_expression(self, scope: Scope) -> sp.Expr:
        """A position in an array: an index, a label's entry, or indices and integers added and subtracted
        (t + k, t - k, i + 1, 2*t + k: a shifted read, as convolutions and differences write)."""
        token = self.current
        if token.kind == "name" and self.tokens[self.position + 1].text == "[":
            pick = self.index_or_label(scope)
            if self.current.text in ("+", "-", "*"):
                raise self.error("a label's entry picks a class as it is: it cannot be shifted")
            return pick
        negative = self.accept("-")
        total = self.position_term(scope) * (-1 if negative else 1)
        while True:
            if self.accept("+"):
                total += self.position_term(scope)
            elif self.accept("-"):
                total -= self.position_term(scope)
            else:
                return total

    def position_term(self, scope: Scope) -> sp.Expr:
        """An index, an integer, or an integer times an index (a stride)."""
        token = self.current
        if token.kind == "number":
            if not token.text.isdigit() or len(token.text) > 9:
                raise self.error(f"a position holds indices and whole numbers below 10^9, not {token.text}")
            self.position += 1
            value = sp.Integer(int(token.text))
            if self.accept("*"):
                return value * self.index_use(scope)
            return value
        if self.in_condition and token.text == "size" and self.tokens[self.position + 1].text == "(":
            self.position += 2  # a range's size in a condition: [k + 1 < size(k)], as the derivations write edges
            return self.size_of(scope)
        symbol = self.index_use(scope)
        if self.accept("*"):
            number = self.current
            if number.kind != "number" or not number.text.isdigit() or len(number.text) > 9:
                raise self.error("an index in a position is multiplied only by a whole number (2*t)")
            self.position += 1
            return symbol * int(number.text)
        return symbol

    def condition(self, scope: Scope) -> sp.Expr:
        """An Iverson bracket [a <= b] on indices: 1 where it holds, 0 elsewhere (<, <=, ==, !=, >=, >)."""
        opening = self.current
        self.expect("[")
        self.in_condition = True
        try:
            left = self.position_expression(scope)
            relation = self.relation()
            right = self.position_expression(scope)
        finally:
            self.in_condition = False
        if self.current.text in ("<", "<=", "==", "!=", ">=", ">", "="):
            raise self.error("a bracket holds one comparison: write [a <= b] * [b < c]")
        if not self.accept("]"):
            raise self.error("expected ']' closing the condition, e.g. [j <= i]")
        if not (left.free_symbols | right.free_symbols) or isinstance(left, sp.Indexed) or isinstance(
                right, sp.Indexed):
            raise self.error("a condition compares indices and whole numbers, e.g. [j <= i]", opening)
        self.layout.conditions = True
        return condition(left, relation, right)

    def relation(self) -> str:
        token = self.current
        if token.kind == "op" and token.text in ("<", "<=", "==", "!=", ">=", ">"):
            self.position += 1
            return token.text
        raise self.error("expected a comparison (<, <=, ==, !=, >=, >) between indices", token)

    def indexed(self, name: Token, scope: Scope) -> sp.Expr:
        kind = self.known.get(name.text)
        if name.text in RESERVED:
            raise self.error(f"{name.text!r} is reserved and cannot be indexed", name)
        if kind in ("scalar", "parameter"):
            raise self.error(f"{name.text!r} is a scalar and cannot be indexed", name)
        if kind == "label":
            raise self.error(f"{name.text!r} holds class indices: use it inside brackets to pick an entry, "
                             f"e.g. p[b, {name.text}[b]]", name)
        if kind is None:
            self.known[name.text] = "input"
            self.used_inputs.append(name.text)
        return self.array_entry(name, scope)

    def array_entry(self, name: Token, scope: Scope) -> sp.Expr:
        """name[a, b, …]: index names (or label picks), as many as the array has everywhere else."""
        self.expect("[")
        positions: list[sp.Expr] = [self.position_expression(scope)]
        while self.accept(","):
            positions.append(self.position_expression(scope))
        if not self.accept("]"):
            raise self.error("expected ']' (positions separated by commas: indices, t + k, i - 1)")
        expected = self.layout.arity.setdefault(name.text, len(positions))
        if expected != len(positions):
            raise self.error(f"{name.text!r} has {expected} ind{'ex' if expected == 1 else 'ices'} elsewhere, "
                             f"{len(positions)} here", name)
        for axis, position in enumerate(positions):
            node = ("axis", name.text, axis)
            if isinstance(position, sp.Indexed):  # a label pick: the label's values run over this axis
                if str(position.base) == name.text:
                    raise self.error(f"{name.text!r} cannot pick its own entries", name)
                self.layout.join(node, ("values", str(position.base)))
            elif isinstance(position, sp.Symbol) and (name.text, axis) not in self.shifted:
                self.layout.join(node, ("index", self.line, str(position)))
                self.layout.name_range(node, str(position))
            elif name.text in self.layout.padded:
                return self.padded_entry(name, positions, scope)
            else:  # a valid read: the axis is as long as its positions reach (T + K - 1 for t + k)
                self.layout.find(node)
                self.layout.extents.setdefault(node, []).append((self.line, name.column, position))
        return sp.IndexedBase(name.text)[tuple(positions)]

    def padded_entry(self, name: Token, positions: list[sp.Expr], scope: Scope) -> sp.Expr:
        """x[b, c, t - k] of an input declared `pad x`: each shifted axis has the range of the index it
        shifts (of those added, the outermost: the definition's own before a sum's), and the entry is 0 where
        the position falls outside it."""
        entry: sp.Expr = sp.IndexedBase(name.text)[tuple(positions)]
        for axis, position in enumerate(positions):
            if isinstance(position, sp.Symbol) or isinstance(position, sp.Indexed):
                continue
            node = ("axis", name.text, axis)
            # the index it shifts: the outermost in scope added with coefficient 1 (t of t - k, i of i + p - 1)
            leading = next((symbol for symbol in scope if position.coeff(symbol) == 1), None)
            if leading is None:
                raise self.error(f"the padded {name.text!r} is read at {spec_text(position)}: a padded axis is "
                                 "read at an index plus or minus others (t - k, i + p - 1)", name)
            self.layout.join(node, ("index", self.line, str(leading)))
            self.layout.name_range(node, str(leading))
            placeholder = sp.Symbol(f"_size_axis_{self.line}_{name.text}_{axis}_{name.column}", integer=True,
                                    positive=True)
            self.layout.sized.append((placeholder, node))
            entry *= Edge(position) * Edge(placeholder - 1 - position)
        return entry

    def scalar(self, name: Token, scope: Scope) -> sp.Expr:
        if index(name.text) in scope:  # an index as a number: ALiBi's slope[h] * (j - i)
            self.layout.conditions = True
            return index(name.text)
        if name.text == "n":
            self.layout.n_used.append((self.line, name.column))
            return size_symbol  # the number of entries of the class axis
        if name.text in RESERVED:
            raise self.error(f"{name.text!r} is a function and needs arguments", name)
        kind = self.known.get(name.text)
        if kind in ("vector", "input"):
            raise self.error(f"{name.text!r} is a vector and needs an index, e.g. {name.text}[i]", name)
        if kind is None:
            self.known[name.text] = "parameter"
            self.used_parameters.append(name.text)
        if self.known[name.text] == "parameter":
            return sp.Symbol(name.text, positive=True)
        return sp.Symbol(name.text)

    def finish(self) -> None:
        if self.current.kind != "end":
            raise self.error(f"unexpected {self.current.text!r}")


def parse_spec(source: str, name: str | None = None, fold_rows: bool = True) -> Spec:
    """Parse spec text into a Spec, or raise SpecError naming the line, column and problem.

    fold_rows: a batched spec whose row index couples nothing is derived as one row (see _one_row);
    False keeps its row index (the array targets lower every spec with its rows, see with_rows)."""
    if len(source) > MAX_SPEC_CHARACTERS:
        raise SpecError(f"spec is too long ({len(source)} characters; the limit is {MAX_SPEC_CHARACTERS})")
    known: dict[str, str] = {}
    layout = _Layout()
    definitions: list[Definition] = []
    constraints: list[Constraint] = []
    inputs: list[str] = []
    parameters: list[str] = []
    facts: dict[str, str] = {}
    fact_lines: dict[str, int] = {}
    statements = [(line_number, statement) for line_number, raw in enumerate(_LINE_BREAK.split(source), start=1)
                  for statement in raw.split("#", 1)[0].split(";") if statement.strip()]
    # declarations first, so that they hold for lines above them too
    pad_lines, learned = _declared(statements, _PAD), _declared(statements, _INPUT)
    layout.padded = set(pad_lines)
    try:
        for line_number, text in statements:
            if _PAD.fullmatch(text) or _INPUT.fullmatch(text):
                continue
            fact = _fact(text, line_number)
            if fact is not None:
                facts[fact[0]] = fact[1]
                fact_lines[fact[0]] = line_number
                continue
            tokens = tokenize(text, line_number)
            if tokens[0].kind == "name" and tokens[0].text == "given":
                constraints.append(_constraint(tokens, line_number, known, text.strip(), layout))
            else:
                definitions.append(_definition(tokens, line_number, known, text.strip(), layout))
            for input_name in (v for v, kind in known.items() if kind in ("input", "label")):
                if input_name not in inputs:
                    inputs.append(input_name)
            for parameter in (v for v, kind in known.items() if kind == "parameter"):
                if parameter not in parameters:
                    parameters.append(parameter)
    except RecursionError:
        raise SpecError("the spec is nested too deeply to process") from None
    except OverflowError:
        raise SpecError("a constant in the spec is out of range of double precision") from None
    if not definitions:
        raise SpecError("spec is empty: write at least one definition such as y[i] = exp(x[i])")
    if not inputs:
        raise SpecError("spec has no input: an indexed name that is not defined, such as x[i]")
    for fact_name, line_number in fact_lines.items():
        if fact_name not in inputs or known.get(fact_name) == "label":
            raise SpecError(f"'{fact_name}' is not an input of the spec: a fact is about an input's entries",
                            line_number, 1)
    for padded, line_number in pad_lines.items():
        if padded not in inputs or known.get(padded) == "label":
            raise SpecError(f"'pad {padded}': {padded!r} is not an input array of the spec (padding reads an "
                            "input as zero outside its range)", line_number, 1)
    for learned_name, line_number in learned.items():
        if learned_name not in parameters:
            raise SpecError(f"'input {learned_name}': {learned_name!r} is not a bare name the spec reads (an array "
                            "is an input already; a learnable scalar is written without brackets)", line_number, 1)
    spec = _with_ranges(Spec(source, definitions, inputs, parameters, constraints, safe_title(name), facts=facts,
                             padded=tuple(pad_lines)), layout)
    if learned:  # declared learnable: an input without indices, as --wrt T makes it
        return with_scalar_inputs(spec, list(learned))
    return (_one_row(spec) if fold_rows else None) or spec


def with_rows(spec: Spec) -> Spec:
    """The spec with its row index written out: a one-index spec `y[i] = f(x[i])` becomes
    `y[b, i] = f(x[b, i])` (a scalar L becomes L[b]), a batched spec folded to one row is read again
    as written. Array targets (torch, JAX) lower this form, so that every spec takes one path there;
    `rows_added` names the index softgrad added, whose arrays may have any leading shape."""
    if spec.tensor:
        return spec
    if spec.carried:
        return parse_spec(spec.source, spec.name, fold_rows=False)
    taken = {str(s) for d in spec.definitions for s in d.expr.free_symbols} | {
        str(e.base) for d in spec.definitions for e in d.expr.atoms(sp.Indexed)} | {
        str(i) for d in spec.definitions for i in d.indices} | {d.name for d in spec.definitions} | {
        str(limit[0]) for d in spec.definitions for total in d.expr.atoms(sp.Sum) for limit in total.limits}
    row = next(name for name in ("b", "row", "batch", *(f"b{k}" for k in range(1, 99))) if name not in taken)
    row_index = sp.Symbol(row)
    scalars = {sp.Symbol(d.name): sp.IndexedBase(d.name)[row_index] for d in spec.definitions if not d.is_vector}

    def rows(expr: sp.Expr, indices: tuple[sp.Symbol, ...]) -> sp.Expr:
        lifted = expr.xreplace({e: e.base[(row_index, *e.indices)] for e in expr.atoms(sp.Indexed)})
        # n, the number of entries, is size(k) of an index the statement runs over
        entries = [*indices, *(bound for total in expr.atoms(sp.Sum) for bound, _, _ in total.limits)]
        sized = {size_symbol: sp.Symbol(f"size({entries[0]})")} if entries else {}
        return lifted.xreplace({**scalars, **sized})

    lines = [f"{d.name}{_brackets((row_index, *d.indices))} = {spec_text(rows(d.expr, d.indices))}"
             for d in spec.definitions]
    lines += [f"given {spec_text(rows(c.lhs, ()))} = {spec_text(c.rhs)}" for c in spec.constraints]
    lines += [FACTS[kind].format(name=name) for name, kind in spec.facts.items()]
    lifted = parse_spec("\n".join(lines), spec.name, fold_rows=False)
    lifted.source, lifted.rows_added = spec.source, row
    return lifted


def _one_row(spec: Spec) -> Spec | None:
    """The one-row spec of a spec whose first range is carried by every array and crossed by no sum, as
    `y[b, i] = exp(x[b, i]) / sum(exp(x[b, k]), k)`: each row b is the same function of its own entries,
    so it is derived, proved and generated as a one-index spec whose row index is implicit (as vmap lifts
    a per-example function); its kernels take (rows, n) arrays, which is what the batched spec reads.
    None where the range is not carried (a weight without it, a sum or a size over it, labels, constraints,
    facts)."""
    output = spec.output
    if not spec.axes or spec.labels or spec.constraints or spec.facts or not output.is_vector:
        return None
    carried = spec.axes[output.name][0]
    arrays = [spec.axes.get(name, ()) for name in [*spec.inputs, *(d.name for d in spec.definitions)]]
    if any(not axes or axes[0] != carried or len(axes) > 2 or carried in axes[1:] for axes in arrays):
        return None
    classes = {axes[1] for axes in arrays if len(axes) == 2}
    if len(classes) != 1 or any(d.expr.has(spec.sizes[carried]) for d in spec.definitions):
        return None  # one class range left, and nothing reads the number of rows
    class_size = spec.sizes[classes.pop()]

    def per_row(expr: sp.Expr) -> sp.Expr:
        rows = {e: (e.base[e.indices[1:]] if len(e.indices) > 1 else sp.Symbol(str(e.base)))
                for e in expr.atoms(sp.Indexed)}
        return expr.xreplace(rows).xreplace({class_size: size_symbol})

    lines = [f"{d.name}{_brackets(d.indices[1:])} = {spec_text(per_row(d.expr))}" for d in spec.definitions]
    try:
        row = parse_spec("\n".join(lines), name=spec.name)
    except SpecError:  # a name the one-index language reserves (n): the spec stays as written
        return None
    row.source, row.carried = spec.source, str(spec.definitions[-1].indices[0])
    return row


def _with_ranges(spec: Spec, layout: _Layout) -> Spec:
    """Give each range its size: n for a one-index spec (as always); for several ranges, a symbol n_k per
    range (named by the first index that runs over it) in every sum's limits and for every size(k)."""
    if not layout.several_ranges:
        sizes = {placeholder: size_symbol for placeholder, _ in layout.sized}
        for definition in spec.definitions:
            definition.expr = definition.expr.xreplace(sizes)
        return spec
    if layout.n_used:
        line, column = layout.n_used[0]
        raise SpecError("this spec has several index ranges, so 'n' is ambiguous: write size(k) for the size "
                        "of the range of index k", line, column)
    statements = [(d.expr, d.line) for d in spec.definitions] + [(c.lhs, c.line) for c in spec.constraints]
    for expr, line in statements:  # a summation index that no array uses is a range too
        for total in expr.atoms(sp.Sum):
            for bound, _, _ in total.limits:
                layout.name_range(("index", line, str(bound)), str(bound))
    for _, node in layout.sized:
        if node[0] == "index":
            layout.name_range(node, str(node[2]))
    used_names = {str(node[2]) for node in layout.parent if node[0] == "index"}
    for node in layout.extents:  # a range only shifted reads reach is named as pages name a position: s, u, …
        if layout.find(node) not in layout.first_name:
            layout.name_range(node, next(name for name in ("s", "u", "v", "p", "q", "r", *(f"s{k}" for k in
                                                                                           range(1, 99)))
                                         if name not in used_names))
            used_names.add(layout.first_name[layout.find(node)])
    names: dict[tuple[Any, ...], str] = {}
    for node in layout.parent:  # in first-seen order: ranges are named by their first index
        root = layout.find(node)
        if root not in names:
            base = layout.first_name.get(root, "k")
            name, number = base, 2
            while name in names.values():
                name, number = f"{base}{number}", number + 1
            names[root] = name
    sizes = {name: sp.Symbol(f"n_{name}", integer=True, positive=True) for name in names.values()}
    clash = sorted(set(spec.parameters) & {str(symbol) for symbol in sizes.values()})
    if clash:
        raise SpecError(f"the parameter name {clash[0]!r} is reserved for the size of a range; rename it")

    def size_of(node: tuple[Any, ...]) -> sp.Symbol:
        return sizes[names[layout.find(node)]]

    def limits(expr: sp.Expr, line: int) -> sp.Expr:
        def limited(total: sp.Sum) -> sp.Sum:
            return sp.Sum(total.function, *[(bound, 0, size_of(("index", line, str(bound))) - 1)
                                            for bound, _, _ in total.limits])

        expr = expr.xreplace({placeholder: size_of(node) for placeholder, node in layout.sized})
        return expr.replace(lambda e: isinstance(e, sp.Sum), limited)

    for definition in spec.definitions:
        definition.expr = limits(definition.expr, definition.line)
    for constraint in spec.constraints:
        constraint.lhs = limits(constraint.lhs, constraint.line)
    spec.derived_sizes = _derived_sizes(layout, names, sizes)
    arrays = [*spec.inputs, *(d.name for d in spec.definitions if d.is_vector)]
    spec.axes = {array: tuple(names[layout.find(("axis", array, axis))]
                              for axis in range(layout.arity.get(array, 0))) for array in arrays}
    spec.labels = {label: names[layout.find(("values", label))] for label in layout.labels}
    spec.sizes = sizes
    return spec


def _derived_sizes(layout: _Layout, names: dict[tuple[Any, ...], str],
                   sizes: dict[str, sp.Symbol]) -> dict[str, sp.Expr]:
    """The size of every range that shifted reads reach, from the ranges of the indices in the positions:
    x[t + k] with t < n_t and k < n_k has n_t + n_k − 1 entries; reads at i and i + 1, n_i + 1."""
    def size_of(node: tuple[Any, ...]) -> sp.Symbol:
        return sizes[names[layout.find(node)]]

    reaches: dict[str, list[tuple[sp.Expr, int, int, sp.Expr]]] = {}
    for node, reads in layout.extents.items():
        for line, column, position in reads:
            constant, terms = position.as_independent(*position.free_symbols, as_Add=True)
            extent = constant + 1
            for term in sp.Add.make_args(terms) if terms != 0 else ():
                coefficient, symbol = term.as_coeff_Mul()
                if coefficient < 0 or constant < 0:
                    raise SpecError(f"{node[1]}[…] is read at {spec_text(position)}, below its first entry where "
                                    f"that is negative: declare 'pad {node[1]}' to read zeros there",
                                    line, column)
                extent += coefficient * (size_of(("index", line, str(symbol))) - 1)
            reaches.setdefault(names[layout.find(node)], []).append((extent, line, column, position))
    derived: dict[str, sp.Expr] = {}
    for range_name, extents in reaches.items():
        longest, line, column, _ = extents[0]
        for extent, other_line, other_column, _ in extents[1:]:
            difference = sp.expand(extent - longest)
            if not difference.is_number:
                raise SpecError(f"the reads of one axis reach sizes that differ by {spec_text(difference)}: a "
                                f"shifted axis is read at positions of one reach", other_line, other_column)
            if difference > 0:
                longest = extent
        derived[range_name] = sp.expand(longest)
    for _ in range(len(derived) + 1):  # a reach through another reach (a convolution of a convolution)
        resolved = {name: sp.expand(value.xreplace({sizes[other]: derived[other] for other in derived}))
                    for name, value in derived.items()}
        if resolved == derived:
            break
        derived = resolved
    for range_name, value in derived.items():
        if value.free_symbols & {sizes[name] for name in derived}:
            line, column = reaches[range_name][0][1:3]
            raise SpecError(f"an axis is read both at a shifted position and at the plain index it shifts, as one "
                            f"range: its size cannot be both (range {range_name})", line, column)
    return derived


def _definition(tokens: list[Token], line_number: int, known: dict[str, str], source: str,
                layout: _Layout | None = None) -> Definition:
    parser = _LineParser(tokens, line_number, known, layout)
    target = parser.expect_name("a name to define, e.g. y[i] = …")
    if target.text in RESERVED:
        raise parser.error(f"{target.text!r} is reserved and cannot be defined", target)
    if target.text in known:
        what = "defined" if known[target.text] in ("vector", "scalar") else "used as an input"
        raise parser.error(f"{target.text!r} is already {what}", target)
    free: list[sp.Symbol] = []
    if parser.accept("["):
        while True:
            index_token = parser.expect_name("an index name")
            if index_token.text in RESERVED or index_token.text in known:
                raise parser.error(f"{index_token.text!r} cannot be used as an index", index_token)
            if index(index_token.text) in free:
                raise parser.error(f"index {index_token.text!r} appears twice on the left-hand side", index_token)
            free.append(index(index_token.text))
            node = ("axis", target.text, len(free) - 1)
            parser.layout.join(node, ("index", line_number, index_token.text))
            parser.layout.name_range(node, index_token.text)
            if not parser.accept(","):
                break
        parser.expect("]")
        parser.layout.arity[target.text] = len(free)
    parser.expect("=")
    expr = parser.expression(tuple(free))
    parser.finish()
    _check_real(expr, line_number)
    if target.text in parser.used_inputs or target.text in parser.used_parameters:
        raise parser.error(f"{target.text!r} is used in its own definition", target)
    known[target.text] = "vector" if free else "scalar"
    return Definition(target.text, free[0] if free else None, expr, source, line_number, tuple(free))


def safe_title(name: str | None) -> str | None:
    """A spec's title (a catalog name or a file's stem) reduced to characters that mean nothing in any
    output format: letters, digits and . _ + - (anything else becomes '_'), at most 64 characters."""
    if name is None:
        return None
    cleaned = re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9._+-]", "_", name))[:MAX_NAME_CHARACTERS].strip("._-")
    return cleaned or "spec"


def _check_real(expr: sp.Expr, line_number: int) -> None:
    """A definition's value must be a real number wherever its inputs are: no 1/0, log(0) or sqrt(-1)."""
    if expr.has(sp.zoo, sp.oo, -sp.oo, sp.nan):
        raise SpecError("the expression is undefined (a division by zero, log(0) or an infinite constant)",
                        line_number)
    for node in sp.preorder_traversal(expr):
        if node.is_number and node.is_extended_real is False:
            raise SpecError(f"the constant {spec_text(node)} is not a real number", line_number)


def _constraint(tokens: list[Token], line_number: int, known: dict[str, str], source: str,
                layout: _Layout | None = None) -> Constraint:
    scope: Scope = ()
    while True:  # an index left free in a constraint holds for each of its values: sum(T[b, k], k) = 1
        parser = _LineParser(tokens[1:], line_number, dict(known), layout)
        try:
            lhs = parser.expression(scope)
            parser.expect("=")
            rhs = parser.expression(scope)
            parser.finish()
            break
        except SpecError as problem:
            free = re.match(r"undefined index '(\w+)'", problem.problem)
            if free is None or len(scope) >= 8:
                raise
            scope = (*scope, index(free.group(1)))
    summed = lhs.function if isinstance(lhs, sp.Sum) else None
    if not (isinstance(summed, sp.Indexed) and rhs.is_number and known.get(str(summed.base)) == "input"):
        raise SpecError(
            "only constraints of the form 'given sum(t[k], k) = c' on an input are supported",
            line_number, tokens[0].column,
        )
    return Constraint(str(summed.base), lhs, rhs, source, line_number)


class _SpecPrinter(StrPrinter):
    """SymPy expressions back in the spec language: sum(f, k), delta(i, k), exp(1) for e."""

    def _print_Sum(self, expr: Any) -> Any:
        bounds = ", ".join(self._print(bound) for bound, _, _ in reversed(expr.limits))  # outermost first
        return f"sum({self._print(expr.function)}, {bounds})"

    def _print_KroneckerDelta(self, expr: Any) -> Any:
        return f"delta({self._print(expr.args[0])}, {self._print(expr.args[1])})"

    def _print_Exp1(self, expr: Any) -> Any:
        return "exp(1)"

    def _print_Bracket(self, expr: Any) -> Any:
        left, right, relation = expr.sides
        return f"[{self._print(left)} {relation} {self._print(right)}]"

    _print_Edge = _print_Bracket

    def _print_Abs(self, expr: Any) -> Any:
        return f"abs({self._print(expr.args[0])})"

    def _print_Min(self, expr: Any) -> Any:
        return f"min({', '.join(self._print(a) for a in expr.args)})"

    def _print_Max(self, expr: Any) -> Any:
        return f"max({', '.join(self._print(a) for a in expr.args)})"

    def _print_Float(self, expr: Any) -> Any:
        return repr(float(expr))

    def _print_Indexed(self, expr: Any) -> Any:
        return f"{expr.base}[{', '.join(self._print(i) for i in expr.indices)}]"


def spec_text(expr: sp.Expr) -> str:
    """An expression printed in the spec language (parsing the text gives the expression back)."""
    return str(_SpecPrinter({"full_prec": False}).doprint(expr))
