"""The spec language: functions in index notation, parsed by a real parser into SymPy objects.

    y[i] = exp(x[i]) / sum(exp(x[k]), k)     # a vector definition with its free index
    L = -sum(t[k] * log(y[k]), k)             # a scalar definition; later lines use earlier ones
    given sum(t[k], k) = 1                    # a constraint on an input

Indexed names that are not defined are inputs; bare names that are not defined are scalar
parameters (assumed positive, e.g. a temperature T). Nothing here evaluates user text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import sympy as sp
from sympy.codegen.cfunctions import log1p
from sympy.printing.str import StrPrinter

from softgrad.derive.symbols import class_sum, index, sigmoid, softplus
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
SPECIAL_FORMS = ("sum", "delta")
RESERVED = set(FUNCTIONS) | set(VARIADIC_FUNCTIONS) | set(SPECIAL_FORMS) | {"given", "n"}

#: Lines end at a newline only: a comment that holds U+2028 or a form feed stays one comment.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")

_TOKEN = re.compile(
    r"(?P<space>[ \t]+)|(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<op>\*\*|[-+*/^()\[\],=])"
)


#: The indices free at a point of an expression (the definition's own, and those of enclosing sums).
Scope = tuple[sp.Symbol, ...]


@dataclass(frozen=True)
class Token:
    kind: str  # number, name, op, end
    text: str
    column: int  # 1-based


@dataclass
class Definition:
    """One line `name[index] = expr` (index is None for a scalar)."""

    name: str
    index: sp.Symbol | None
    expr: sp.Expr
    source: str
    line: int

    @property
    def symbol(self) -> sp.Expr:
        """The defined quantity as it appears in formulas: y[i] or L."""
        return sp.IndexedBase(self.name)[self.index] if self.index is not None else sp.Symbol(self.name)

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


@dataclass
class Spec:
    """A parsed spec: definitions in order (the last is the output), inputs, parameters, constraints."""

    source: str
    definitions: list[Definition]
    inputs: list[str]
    parameters: list[str]
    constraints: list[Constraint] = field(default_factory=list)
    name: str | None = None

    @property
    def output(self) -> Definition:
        return self.definitions[-1]

    @property
    def statements(self) -> list[str]:
        """The spec as softgrad prints it back: one normalised statement per line, no comments.

        Documents and generated files quote these, never the source text: they are printed from the
        parsed expressions, so they hold only names, numbers and operators, whatever the source held."""
        lines = [f"{d.name}{f'[{d.index}]' if d.is_vector else ''} = {spec_text(d.expr)}" for d in self.definitions]
        lines += [f"given {spec_text(c.lhs)} = {spec_text(c.rhs)}" for c in self.constraints]
        return lines

    @property
    def digest(self) -> str:
        """SHA-256 of the source text, naming exactly which spec a generated file came from."""
        import hashlib

        return hashlib.sha256(self.source.encode("utf-8", "surrogatepass")).hexdigest()

    def definition(self, name: str) -> Definition | None:
        return next((d for d in self.definitions if d.name == name), None)


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
    return bool(value == 0 or SMALLEST_CONSTANT <= abs(value) <= LARGEST_CONSTANT)


def _power_in_range(base: sp.Expr, exponent: sp.Expr) -> bool:
    """Whether base**exponent of two numbers stays within double precision, decided before computing it."""
    if not (base.is_Number and exponent.is_Number) or base == 0 or abs(base) == 1:
        return True
    digits = abs(exponent) * abs(sp.log(abs(base), 10))
    return bool(sp.N(digits, 15) <= 308)


class _LineParser:
    """Recursive descent over one line's tokens, building SymPy objects and checking index scope."""

    def __init__(self, tokens: list[Token], line: int, known: dict[str, str]):
        self.tokens, self.position, self.line = tokens, 0, line
        self.known = known  # name -> "vector" | "scalar" | "input" | "parameter"
        self.used_inputs: list[str] = []
        self.used_parameters: list[str] = []
        self.depth = 0

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
            value = sp.Integer(int(token.text)) if token.text.isdigit() else sp.Float(token.text)
            if not _in_range(value):
                raise self.error(f"number {token.text} is out of range of double precision", token)
            return value
        if self.accept("("):
            inner = self.expression(scope)
            self.expect(")")
            return inner
        if token.kind != "name":
            raise self.error(f"expected a number, a name or '(', found {token.text or 'end of line'!r}")
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
            bound = self._index_at(bound_position, scope, binding=True)
            inner = self.expression((*scope, bound))
            self.expect(",")
            self.position += 1  # the index name, already validated
            self.expect(")")
            return class_sum(inner, bound)
        if name.text == "delta":
            first = self.index_use(scope)
            self.expect(",")
            second = self.index_use(scope)
            self.expect(")")
            return sp.KroneckerDelta(first, second)
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

    def _index_at(self, position: int, scope: Scope, binding: bool) -> sp.Symbol:
        token = self.tokens[position]
        if token.kind != "name":
            raise SpecError(f"expected an index name, found {token.text or 'end of line'!r}", self.line, token.column)
        if self.tokens[position + 1].text != ")":
            raise SpecError("sum() takes one index as its second argument", self.line, self.tokens[position + 1].column)
        symbol = index(token.text)
        if binding and symbol in scope:
            raise SpecError(
                f"cannot sum over index {token.text!r}: it is already free here (rename the summation index)",
                self.line, token.column,
            )
        if token.text in RESERVED or token.text in self.known:
            raise SpecError(f"{token.text!r} cannot be used as an index", self.line, token.column)
        return symbol

    def index_use(self, scope: Scope) -> sp.Symbol:
        token = self.expect_name("an index")
        symbol = index(token.text)
        if symbol not in scope:
            raise self.error(
                f"undefined index {token.text!r}: use the left-hand side's index or sum over it", token
            )
        return symbol

    def indexed(self, name: Token, scope: Scope) -> sp.Expr:
        kind = self.known.get(name.text)
        if name.text in RESERVED:
            raise self.error(f"{name.text!r} is reserved and cannot be indexed", name)
        if kind in ("scalar", "parameter"):
            raise self.error(f"{name.text!r} is a scalar and cannot be indexed", name)
        if kind is None:
            self.known[name.text] = "input"
            self.used_inputs.append(name.text)
        self.expect("[")
        idx = self.index_use(scope)
        if not self.accept("]"):
            raise self.error("expected ']' (one index name per vector, no arithmetic on indices)")
        return sp.IndexedBase(name.text)[idx]

    def scalar(self, name: Token, scope: Scope) -> sp.Expr:
        if index(name.text) in scope:
            raise self.error(f"index {name.text!r} cannot be used as a value", name)
        if name.text == "n":
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


def parse_spec(source: str, name: str | None = None) -> Spec:
    """Parse spec text into a Spec, or raise SpecError naming the line, column and problem."""
    if len(source) > MAX_SPEC_CHARACTERS:
        raise SpecError(f"spec is too long ({len(source)} characters; the limit is {MAX_SPEC_CHARACTERS})")
    known: dict[str, str] = {}
    definitions: list[Definition] = []
    constraints: list[Constraint] = []
    inputs: list[str] = []
    parameters: list[str] = []
    try:
        for line_number, raw in enumerate(_LINE_BREAK.split(source), start=1):
            for statement in raw.split("#", 1)[0].split(";"):
                text = statement
                if not text.strip():
                    continue
                tokens = tokenize(text, line_number)
                if tokens[0].kind == "name" and tokens[0].text == "given":
                    constraints.append(_constraint(tokens, line_number, known, text.strip()))
                else:
                    definitions.append(_definition(tokens, line_number, known, text.strip()))
                for input_name in (v for v, kind in known.items() if kind == "input"):
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
    return Spec(source, definitions, inputs, parameters, constraints, safe_title(name))


def _definition(tokens: list[Token], line_number: int, known: dict[str, str], source: str) -> Definition:
    parser = _LineParser(tokens, line_number, known)
    target = parser.expect_name("a name to define, e.g. y[i] = …")
    if target.text in RESERVED:
        raise parser.error(f"{target.text!r} is reserved and cannot be defined", target)
    if target.text in known:
        what = "defined" if known[target.text] in ("vector", "scalar") else "used as an input"
        raise parser.error(f"{target.text!r} is already {what}", target)
    free_index = None
    if parser.accept("["):
        index_token = parser.expect_name("an index name")
        if index_token.text in RESERVED or index_token.text in known:
            raise parser.error(f"{index_token.text!r} cannot be used as an index", index_token)
        free_index = index(index_token.text)
        parser.expect("]")
    parser.expect("=")
    scope = (free_index,) if free_index is not None else ()
    expr = parser.expression(scope)
    parser.finish()
    _check_real(expr, line_number)
    if target.text in parser.used_inputs or target.text in parser.used_parameters:
        raise parser.error(f"{target.text!r} is used in its own definition", target)
    known[target.text] = "vector" if free_index is not None else "scalar"
    return Definition(target.text, free_index, expr, source, line_number)


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


def _constraint(tokens: list[Token], line_number: int, known: dict[str, str], source: str) -> Constraint:
    parser = _LineParser(tokens[1:], line_number, known)
    lhs = parser.expression(())
    parser.expect("=")
    rhs = parser.expression(())
    parser.finish()
    summed = lhs.function if isinstance(lhs, sp.Sum) else None
    if not (isinstance(summed, sp.Indexed) and rhs.is_number and known.get(str(summed.base)) == "input"):
        raise SpecError(
            "only constraints of the form 'given sum(t[k], k) = c' on an input are supported",
            line_number, tokens[0].column,
        )
    return Constraint(str(summed.base), lhs, rhs, source)


class _SpecPrinter(StrPrinter):
    """SymPy expressions back in the spec language: sum(f, k), delta(i, k), exp(1) for e."""

    def _print_Sum(self, expr: Any) -> Any:
        (bound, _, _), = expr.limits
        return f"sum({self._print(expr.function)}, {self._print(bound)})"

    def _print_KroneckerDelta(self, expr: Any) -> Any:
        return f"delta({self._print(expr.args[0])}, {self._print(expr.args[1])})"

    def _print_Exp1(self, expr: Any) -> Any:
        return "exp(1)"

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
