"""C as real projects write it, checked through a signature that declares each pointer's role.

    softgrad verify ln.c:layernorm_forward,layernorm_backward --against ln.spec --size B=2,T=3,C=8 \\
        --signature 'out,mean[b,t],rstd[b,t] <- inp,weight,bias; dinp+=,dweight+=,dbias+= <- dout,inp,weight,mean,rstd'

A part `WRITTEN <- READ` lists the pointer arguments in their order, the arrays the function writes first;
`READ -> WRITTEN` lists those it reads first. `name+=` is accumulated into (the caller zeroes it, or keeps a
running sum); `name[b,t]` gives the shape of an array the spec does not name (a cache, a scratch buffer).
Integer arguments are the ranges' sizes, matched by name (`B` or `n_b` for the range of b), and a
floating argument by value is a spec parameter. The prototype in the source says each argument's type
(float or double, int or size_t); a library without source is called with the --dtype and size_t.

Every array lies between guard regions, so that a write outside it is seen (with its offset), and the
function is called three times per check: outputs zeroed; outputs holding other values (a `+=` output must
grow by the same amount, any other must not depend on them); guards holding other values (a function that
reads outside an array gives another result, and the array and offset are then found by bisection).
What is found is a failure of the check (the report's first lines), never a crash of softgrad.
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from softgrad.errors import SoftgradError

__all__ = ["CPart", "CPlan", "is_c_target", "load_c_functions", "parse_c_signature", "plan_c_call", "prototype"]

#: C types of array entries and scalars, and the NumPy dtype each is passed as.
FLOATING_TYPES = {"float": "float32", "double": "float64"}
INTEGER_TYPES = {
    "int": "int32", "signed": "int32", "signed int": "int32", "unsigned": "uint32", "unsigned int": "uint32",
    "long": "int64", "long int": "int64", "signed long": "int64", "unsigned long": "uint64",
    "unsigned long int": "uint64", "long long": "int64", "long long int": "int64", "unsigned long long": "uint64",
    "size_t": "uint64", "ssize_t": "int64", "ptrdiff_t": "int64", "int64_t": "int64", "int32_t": "int32",
    "uint64_t": "uint64", "uint32_t": "uint32", "short": "int16", "unsigned short": "uint16",
}
_QUALIFIERS = {"const", "volatile", "restrict", "__restrict", "__restrict__", "register", "struct"}
_OUTPUT_NAMES = ("out", "output", "loss")


def is_c_target(reference: str) -> bool:
    """Whether FILE:FUNCTION names C (a source or a shared library)."""
    return reference.rpartition(":")[0].endswith((".c", ".so", ".dylib"))


@dataclass(frozen=True)
class CArray:
    """One name of a C signature: how the function uses it, and the shape it was declared with (if any)."""
    name: str
    written: bool
    accumulated: bool = False
    declared: tuple[str, ...] | None = None  # index letters or whole numbers, from name[b,t]


@dataclass(frozen=True)
class CPart:
    """One C function's arguments as the signature lists them (in the function's order)."""
    arrays: tuple[CArray, ...]

    @property
    def reads(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.arrays if not a.written)

    @property
    def writes(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.arrays if a.written)


_ITEM = re.compile(r"([A-Za-z_]\w*)(\+=)?(?:\[([^\]]*)\])?$")


def _items(text: str, written: bool, whole: str) -> list[CArray]:
    items = []
    for part in filter(None, re.split(r",(?![^\[]*\])", text)):
        match = _ITEM.match(part)
        if match is None:
            raise SoftgradError(f"{part!r} in the signature {whole!r} is not NAME, NAME+= or NAME[i,j]")
        name, plus, shape = match.groups()
        if plus and not written:
            raise SoftgradError(f"{name}+= in {whole!r}: only an array the function writes can be accumulated into")
        declared = None
        if shape is not None:
            declared = tuple(filter(None, shape.split(",")))
            if not declared or not all(d.isidentifier() or d.isdigit() for d in declared):
                raise SoftgradError(f"{name}[{shape}] in {whole!r}: a shape is index letters or sizes, e.g. "
                                    f"{name}[b,t]")
        items.append(CArray(name, written, bool(plus), declared))
    if not items:
        raise SoftgradError(f"a part of the signature {whole!r} names no argument")
    return items


def parse_c_signature(text: str) -> list[CPart]:
    """'out,mean[b,t] <- inp,weight; dinp+= <- dout,inp,mean' (or 'READ -> WRITTEN') as one part per function."""
    parts = []
    compact = text.replace(" ", "")
    for piece in compact.split(";"):
        if "<-" in piece:
            written, read = piece.split("<-", 1)
            arrays = _items(written, True, piece) + _items(read, False, piece)
        elif "->" in piece:
            read, written = piece.split("->", 1)
            arrays = _items(read, False, piece) + _items(written, True, piece)
        else:
            raise SoftgradError(f"each part of a C signature is 'WRITTEN <- READ' (or 'READ -> WRITTEN'), e.g. "
                                f"'dx+=,dw+= <- dy,x,w'; got {piece!r}")
        names = [a.name for a in arrays]
        if len(set(names)) != len(names):
            raise SoftgradError(f"a name appears twice in {piece!r}")
        parts.append(CPart(tuple(arrays)))
    if len(parts) > 2:
        raise SoftgradError(f"a C signature has one part, or two (forward; backward), not {len(parts)}: {text!r}")
    return parts


@dataclass(frozen=True)
class CParameter:
    """One parameter of a C prototype: its name, its type without qualifiers, and whether it is a pointer."""
    name: str
    type: str
    pointer: bool


def prototype(source: str, function: str) -> list[CParameter] | None:
    """The parameters of `function` as its definition in `source` declares them; None if it is not found
    there (a macro, say), or if a parameter is not a plain scalar or pointer (a function pointer, a struct)."""
    code = re.sub(r"/\*.*?\*/", " ", source, flags=re.S)
    code = re.sub(r"//[^\n]*", " ", code)
    code = re.sub(r"^\s*#[^\n]*", " ", code, flags=re.M)
    match = re.search(rf"(?<![\w.]){re.escape(function)}\s*\(([^()]*)\)\s*\{{", code)
    if match is None:
        return None
    parameters = []
    listed = match.group(1).strip()
    if listed in ("", "void"):
        return []
    for declaration in listed.split(","):
        pointer = "*" in declaration or "[" in declaration
        words = [w for w in re.findall(r"[A-Za-z_]\w*", re.sub(r"\[[^\]]*\]", " ", declaration))
                 if w not in _QUALIFIERS]
        if len(words) < 2:
            return None
        kind = " ".join(words[:-1])
        if kind not in FLOATING_TYPES and kind not in INTEGER_TYPES:
            return None
        parameters.append(CParameter(words[-1], kind, pointer))
    return parameters


@dataclass
class CPlan:
    """How to call the C function(s), as data the child process reads (see load_c_functions), and what the
    checks see: the tensor signature the functions compose into, and the dtype they compute in."""
    functions: list[dict[str, Any]]
    takes: list[str]
    returns: list[str]
    trailing: list[str]  # spec parameters passed after the signature's arrays (those it does not name)
    tensor_signature: str
    dtype: str
    how: str

    def as_data(self) -> dict[str, Any]:
        return {"functions": self.functions, "takes": self.takes, "returns": self.returns,
                "trailing": self.trailing, "how": self.how}


def plan_c_call(reference: str, text: str, spec: Any, sizes: dict[str, int], dtype: str,
                reads_upstream: bool = True) -> CPlan:
    """The calls to make for FILE:FUNCTION[,BACKWARD] with the C signature `text`, the spec (its rows written
    out) and the ranges' sizes; every mismatch between the signature, the spec and the prototype is one
    SoftgradError line, reported before any of the user's code runs. reads_upstream=False: code for a spec
    with an array output that does not read its upstream gradient (a Hessian, which the product is made of)."""
    from softgrad.verify.arrays import size_names

    location, _, names = reference.rpartition(":")
    functions = names.split(",")
    parts = parse_c_signature(text)
    if len(parts) != len(functions):
        raise SoftgradError(f"{reference} names {len(functions)} function(s); the signature has {len(parts)} "
                            "part(s) (one per function, separated by ;)")
    output_name, gradients = _output_and_gradients(parts, spec)
    shapes: dict[str, tuple[str, ...]] = {name: spec.axes[name] for name in spec.inputs}
    aliases = size_names(spec)
    upstream: str | None = None
    calls: list[tuple[str, list[dict[str, Any]]]] = []
    for position, (function, part) in enumerate(zip(functions, parts)):
        is_last = position == len(parts) - 1
        arguments = []
        for array in part.arrays:
            name = array.name
            if array.written:
                shapes[name] = _written_shape(array, spec, shapes, aliases)
                role = ("gradient" if name in gradients else "output" if name == output_name else
                        "cache" if not is_last else "scratch")
                arguments.append({"name": name, "kind": "add" if array.accumulated else "write", "role": role})
            elif name in spec.parameters:
                arguments.append({"name": name, "kind": "scalar"})
            elif name in shapes:
                arguments.append({"name": name, "kind": "read"})
            elif is_last and upstream is None and spec.output.is_vector:
                upstream = name
                shapes[name] = tuple(spec.axes.get(spec.output.name, ()))
                arguments.append({"name": name, "kind": "read"})
            else:
                known = ", ".join([*spec.inputs, *spec.parameters])
                raise SoftgradError(f"{function} reads {name}, which is no input or parameter of the spec ({known})"
                                    + (", nor written by the forward, nor the upstream gradient" if is_last and
                                       len(parts) == 2 else ""))
        calls.append((function, arguments))
    if spec.output.is_vector and upstream is None and reads_upstream:
        raise SoftgradError(f"the backward must read the upstream gradient of {spec.output.name} "
                            f"(e.g. d{spec.output.name})")
    source = Path(location).read_text(errors="replace") if location.endswith(".c") else None
    planned: list[dict[str, Any]] = []
    floating: set[str] = set()
    for function, arguments in calls:
        declared = None if source is None else prototype(source, function)
        if source is not None and declared is None:
            raise SoftgradError(f"{location} has no definition of {function} that softgrad can read (a function "
                                "taking pointers to float or double, integer sizes and floating parameters)")
        plan_arguments = _with_prototype(function, arguments, declared, spec, sizes, aliases, dtype, shapes)
        floating |= {a["dtype"] for a in plan_arguments if a["kind"] in ("read", "write", "add")
                     and a["dtype"].startswith("float")}
        planned.append({"name": function, "arguments": plan_arguments})
    tensor_signature, takes, returns = _tensor_signature(parts, output_name, gradients, upstream)
    how = ", then ".join(f"{f['name']}({', '.join(_shown(a) for a in f['arguments'])})" for f in planned)
    return CPlan(planned, takes, returns, [p for p in spec.parameters if p not in takes],
                 tensor_signature, "float32" if "float32" in floating else "float64",
                 f"{how}; every array between guard regions")


def _output_and_gradients(parts: list[CPart], spec: Any) -> tuple[str | None, list[str]]:
    """The written name that is the spec's output (a forward's first write, or one named as the output, out or
    loss), and the gradients (d<input>, written by the last function)."""
    gradients = [n for n in parts[-1].writes if n.startswith("d") and n[1:] in spec.inputs and n[1:] not in spec.labels]
    if not gradients:
        raise SoftgradError(f"the signature writes no gradient (d<input>, e.g. d{spec.inputs[0]})")
    if len(parts) == 1:
        output = next((n for n in parts[0].writes if n in (spec.output.name, *_OUTPUT_NAMES)), None)
        return output, gradients
    writes = parts[0].writes
    if not writes:
        raise SoftgradError(f"the forward writes no array: it must write the spec's output {spec.output.name}")
    return next((n for n in writes if n in (spec.output.name, *_OUTPUT_NAMES)), writes[0]), gradients


def _shown(argument: dict[str, Any]) -> str:
    if argument["kind"] == "size":
        return f"{argument['name']}={argument['value']}"
    return str(argument["name"]) + ("+=" if argument["kind"] == "add" else "")


def _written_shape(array: CArray, spec: Any, shapes: dict[str, tuple[str, ...]],
                   aliases: dict[str, str]) -> tuple[str, ...]:
    name = array.name
    if array.declared is not None:
        return tuple(part if part.isdigit() else _range_of(part, aliases, name) for part in array.declared)
    if name == spec.output.name or name in _OUTPUT_NAMES:
        return tuple(spec.axes.get(spec.output.name, ()))
    if name.startswith("d") and name[1:] in spec.inputs:
        return tuple(spec.axes[name[1:]])
    if name in spec.axes:  # an intermediate of the spec (m, v): its own axes
        return tuple(spec.axes[name])
    if name in shapes:
        return shapes[name]
    raise SoftgradError(f"give the shape of {name}, which the spec does not name, in the signature: e.g. "
                        f"{name}[{','.join(spec.axes.get(spec.output.name, ('b',))[:2])}]")


def _range_of(letter: str, aliases: dict[str, str], name: str) -> str:
    if letter not in aliases:
        raise SoftgradError(f"{name}[…]: the spec has no index {letter!r} (indices: "
                            f"{', '.join(sorted(a for a in aliases if a.islower() and not a.startswith('n_')))})")
    return str(aliases[letter])


def _with_prototype(function: str, arguments: list[dict[str, Any]], declared: list[CParameter] | None, spec: Any,
                    sizes: dict[str, int], aliases: dict[str, str], dtype: str,
                    shapes: dict[str, tuple[str, ...]]) -> list[dict[str, Any]]:
    """The arguments in the function's order with their dtypes, shapes and the sizes' values."""
    def shape_of(name: str) -> list[int]:
        return [int(part) if part.isdigit() else sizes[part] for part in shapes[name]]

    arrays = [a for a in arguments if a["kind"] != "scalar"]
    scalars = [a for a in arguments if a["kind"] == "scalar"]
    if declared is None:  # a library without source: the signature's order, then every range's size (size_t)
        label_type = "int64"
        result = []
        for argument in arguments:
            is_label = argument["name"] in spec.labels
            entry = dict(argument, dtype=label_type if is_label else dtype)
            if argument["kind"] != "scalar":
                entry["shape"] = shape_of(argument["name"])
            result.append(entry)
        return result + [{"name": f"n_{r}", "kind": "size", "dtype": "uint64", "value": sizes[r]} for r in spec.sizes]
    pointers = [p for p in declared if p.pointer]
    if len(pointers) != len(arrays):
        raise SoftgradError(f"{function} takes {len(pointers)} pointer(s) ({', '.join(p.name for p in pointers)}); "
                            f"the signature names {len(arrays)} array(s) ({', '.join(a['name'] for a in arrays)})")
    by_name = {a["name"]: a for a in arrays}
    if {p.name for p in pointers} == set(by_name):  # the prototype's own names: its order, whatever the listing
        ordered = [by_name[p.name] for p in pointers]
    else:
        ordered = arrays
    floating_scalars = [p for p in declared if not p.pointer and p.type in FLOATING_TYPES]
    integer_scalars = [p for p in declared if not p.pointer and p.type in INTEGER_TYPES]
    scalar_for: dict[str, dict[str, Any]] = {}
    unnamed = list(scalars)
    for parameter in floating_scalars:
        match = next((s for s in unnamed if s["name"] == parameter.name), None)
        if match is None and parameter.name in spec.parameters:
            match = {"name": parameter.name, "kind": "scalar"}
        if match is None and unnamed:
            match = unnamed[0]
        if match is None:
            raise SoftgradError(f"{function} takes {parameter.type} {parameter.name}, which is no parameter of the "
                                f"spec (parameters: {', '.join(spec.parameters) or 'none'})")
        if match in unnamed:
            unnamed.remove(match)
        scalar_for[parameter.name] = dict(match, dtype=FLOATING_TYPES[parameter.type])
    if unnamed:
        raise SoftgradError(f"{function} takes no floating argument for {unnamed[0]['name']}")
    range_for: dict[str, str] = {}
    for parameter in integer_scalars:
        if parameter.name in aliases and aliases[parameter.name] not in range_for.values():
            range_for[parameter.name] = aliases[parameter.name]
    left = [r for r in spec.sizes if r not in range_for.values()]
    for parameter in integer_scalars:
        if parameter.name not in range_for:
            if not left:
                raise SoftgradError(f"{function} takes {parameter.type} {parameter.name}, and every range's size is "
                                    "already passed: softgrad cannot tell what it is")
            range_for[parameter.name] = left.pop(0)
    result = []
    position = iter(ordered)
    for parameter in declared:
        if parameter.pointer:
            argument = next(position)
            if parameter.type not in FLOATING_TYPES and argument["name"] not in spec.labels:
                raise SoftgradError(f"{function}'s {parameter.name} is a {parameter.type} pointer, but "
                                    f"{argument['name']} holds real numbers")
            kind_type = FLOATING_TYPES.get(parameter.type) or INTEGER_TYPES[parameter.type]
            result.append(dict(argument, dtype=kind_type, shape=shape_of(argument["name"])))
        elif parameter.type in FLOATING_TYPES:
            result.append(scalar_for[parameter.name])
        else:
            range_name = range_for[parameter.name]
            result.append({"name": parameter.name, "kind": "size", "dtype": INTEGER_TYPES[parameter.type],
                           "value": sizes[range_name]})
    return result


def _tensor_signature(parts: list[CPart], output_name: str | None, gradients: list[str],
                      upstream: str | None) -> tuple[str, list[str], list[str]]:
    """The signature the C functions compose into, as the several-index checks read it (see verify.pairs)."""
    def listed(names: Any) -> str:
        return ",".join(names)

    if len(parts) == 1:
        part = parts[0]
        returns = [n for n in part.writes if n in gradients or n == output_name]
        takes = [n for n in part.reads]
        return f"{listed(takes)}->{listed(returns)}", takes, returns
    forward, backward = parts
    assert output_name is not None
    forward_writes = [output_name, *[n for n in forward.writes if n != output_name]]
    backward_returns = [n for n in backward.writes if n in gradients]
    takes = [*forward.reads, *([upstream] if upstream else [])]
    text = (f"{listed(forward.reads)}->{listed(forward_writes)}; "
            f"{listed(backward.reads)}->{listed(backward_returns)}")
    return text, takes, [output_name, *backward_returns]


# ---------------------------------------------------------------------------------------------- the child's side

def _guard_value(dtype: np.dtype[Any], probing: bool) -> Any:
    """What guard regions hold: NaN (any read of it spreads) and, on the probing calls, a large finite value;
    for integers (labels, of any width) values no class index has."""
    if dtype.kind == "f":
        return dtype.type(1e30 if probing else np.nan)
    limits = np.iinfo(dtype)
    return dtype.type(limits.max // 2 + 1 if probing else limits.max - 3)


class _Buffer:
    """One argument's memory: the array between two guard regions of `guard` entries each."""

    def __init__(self, argument: dict[str, Any]) -> None:
        self.name, self.kind, self.role = argument["name"], argument["kind"], argument.get("role", "")
        self.dtype = np.dtype(argument["dtype"])
        self.shape = tuple(argument["shape"])
        self.size = int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1
        self.guard = min(max(16, self.size), 1 << 16)
        self.memory = np.empty(2 * self.guard + self.size, dtype=self.dtype)

    @property
    def interior(self) -> np.ndarray:
        return self.memory[self.guard:self.guard + self.size]

    def fill_guards(self, probing: bool = False, front: int | None = None, back: int | None = None) -> None:
        """Both guards hold the guard value (see _guard_value); with front/back, only that many entries nearest
        the array do."""
        value = _guard_value(self.dtype, probing)
        if front is None and back is None:
            self.memory[:self.guard] = value
            self.memory[self.guard + self.size:] = value
            return
        if front:
            self.memory[self.guard - front:self.guard] = value
        if back:
            self.memory[self.guard + self.size:self.guard + self.size + back] = value

    def guards_written(self) -> tuple[list[int], list[int]]:
        """Offsets (from the array's first entry) of guard entries that no longer hold the first guard value."""
        expected = np.full(self.guard, _guard_value(self.dtype, False), dtype=self.dtype).view(np.uint8)
        width = self.dtype.itemsize
        front = self.memory[:self.guard].view(np.uint8).reshape(-1, width)
        back = self.memory[self.guard + self.size:].view(np.uint8).reshape(-1, width)
        reference = expected.reshape(-1, width)
        changed_front = np.nonzero(np.any(front != reference, axis=1))[0]
        changed_back = np.nonzero(np.any(back != reference, axis=1))[0]
        return [int(i) - self.guard for i in changed_front], [self.size + int(i) for i in changed_back]


def _ranges(offsets: list[int]) -> str:
    return f"{offsets[0]}" if len(offsets) == 1 else f"{offsets[0]}…{offsets[-1]}"


class _GuardedFunction:
    """One C function called on guarded buffers; `run(named)` returns what it wrote, and appends what it did
    wrong (a write or read outside an array, an input changed, a += output overwritten, an output that
    depends on what its buffer held) to `findings`."""

    def __init__(self, function: Any, plan: dict[str, Any]) -> None:
        self.function, self.name, self.arguments = function, plan["name"], plan["arguments"]
        function.restype = None
        function.argtypes = [ctypes.c_void_p if a["kind"] not in ("size", "scalar") else
                             np.ctypeslib.as_ctypes_type(np.dtype(a["dtype"])) for a in self.arguments]

    def run(self, named: dict[str, Any], findings: list[str]) -> dict[str, np.ndarray]:
        buffers = {a["name"]: _Buffer(a) for a in self.arguments if a["kind"] in ("read", "write", "add")}
        inputs = {name: np.ascontiguousarray(named[name], dtype=b.dtype).reshape(-1)
                  for name, b in buffers.items() if b.kind == "read"}
        checked = [b for b in buffers.values() if b.kind != "read"]

        def call(prefill: dict[str, np.ndarray] | None = None, guards: Callable[[_Buffer], None] | None = None
                 ) -> dict[str, np.ndarray]:
            for buffer in buffers.values():
                buffer.fill_guards()
                if guards is not None:
                    guards(buffer)
                if buffer.kind == "read":
                    buffer.interior[:] = inputs[buffer.name]
                else:
                    buffer.interior[:] = 0 if prefill is None else prefill.get(buffer.name, 0)
            values: list[Any] = []
            for argument in self.arguments:
                if argument["kind"] == "size":
                    values.append(int(argument["value"]))
                elif argument["kind"] == "scalar":
                    values.append(float(np.asarray(named[argument["name"]])))
                else:
                    values.append(buffers[argument["name"]].memory[buffers[argument["name"]].guard:].ctypes.data)
            self.function(*values)
            return {b.name: b.interior.copy() for b in checked}

        first = call()
        for buffer in buffers.values():
            before, after = buffer.guards_written()
            if before:
                findings.append(f"{self.name} wrote outside {buffer.name} ({buffer.size} entries, shape "
                                f"{buffer.shape}): at offset(s) {_ranges(before)}, before its first entry")
            if after:
                findings.append(f"{self.name} wrote outside {buffer.name} ({buffer.size} entries, shape "
                                f"{buffer.shape}): at offset(s) {_ranges(after)}, past its end")
            if buffer.kind == "read" and not np.array_equal(buffer.interior, inputs[buffer.name], equal_nan=True):
                changed = int(np.nonzero(~((buffer.interior == inputs[buffer.name]) | (
                    np.isnan(buffer.interior) & np.isnan(inputs[buffer.name]))))[0][0]) if \
                    buffer.dtype.kind == "f" else int(np.nonzero(buffer.interior != inputs[buffer.name])[0][0])
                findings.append(f"{self.name} changed its input {buffer.name} (first at offset {changed}): an "
                                "input must be left as the caller gave it")
        self._accumulation(first, checked, call, findings)
        self._reads_outside(first, buffers, call, findings)
        return {name: value.reshape(buffers[name].shape) for name, value in first.items()}

    def _accumulation(self, first: dict[str, np.ndarray], checked: list[_Buffer],
                      call: Callable[..., dict[str, np.ndarray]], findings: list[str]) -> None:
        """Call again with the outputs holding other values: a += output must grow by what it got from 0, any
        other output must come out the same."""
        outputs = [b for b in checked if b.role != "scratch"]
        pattern = np.random.default_rng(7)
        prefill = {}
        for buffer in outputs:
            if buffer.dtype.kind != "f":
                continue
            scale = max(1.0, float(np.nanmax(np.abs(first[buffer.name]), initial=0.0)))
            signs = pattern.choice([-1.0, 1.0], buffer.size)
            prefill[buffer.name] = (scale * signs * pattern.uniform(0.5, 1.5, buffer.size)).astype(buffer.dtype)
        second = call(prefill)
        epsilon = {np.dtype("float32"): 1e-6, np.dtype("float64"): 1e-14}
        for buffer in outputs:
            if buffer.name not in prefill:
                continue
            held, zeroed, now = prefill[buffer.name], first[buffer.name], second[buffer.name]
            tolerance = 64 * epsilon.get(buffer.dtype, 1e-6) * (np.abs(held) + np.abs(zeroed))
            if not np.all(np.isfinite(zeroed)):
                continue
            adds = bool(np.all(np.abs(now - held - zeroed) <= tolerance))
            same = bool(np.all(np.abs(now - zeroed) <= tolerance))
            if buffer.kind == "add" and not adds:
                findings.append(
                    f"{self.name} overwrites {buffer.name} where the signature says {buffer.name}+=: what the buffer "
                    "held is lost (a caller's running sum of gradients)" if same else
                    f"{self.name}: what it adds to {buffer.name}+= depends on what the buffer held before the call")
            elif buffer.kind == "write" and not same:
                unwritten = np.nonzero((now == held) & (zeroed == 0))[0]
                if unwritten.size:  # entries that kept what the buffer held: never written
                    index = np.unravel_index(int(unwritten[0]), buffer.shape) if buffer.shape else ()
                    where = f"{buffer.name}[{', '.join(map(str, index))}]" if buffer.shape else buffer.name
                    findings.append(f"{self.name} leaves {unwritten.size} of the {buffer.size} entries of "
                                    f"{buffer.name} unwritten (first {where}): they keep what the buffer held")
                    continue
                findings.append(
                    f"{self.name} adds to {buffer.name} instead of writing it: its result depends on what the buffer "
                    f"held (accumulation into an unzeroed buffer; zero it, or declare {buffer.name}+= if callers do)"
                    if adds else f"{self.name} reads {buffer.name} before writing it: its result depends on what the "
                                 "buffer held before the call")

    def _reads_outside(self, first: dict[str, np.ndarray], buffers: dict[str, _Buffer],
                       call: Callable[..., dict[str, np.ndarray]], findings: list[str]) -> None:
        """Call again with other values in the guards; if the result changes, find which array is read outside
        and the nearest offset read, by bisection over its guard entries."""
        def changes(guards: Callable[[_Buffer], None]) -> bool:
            probed = call(None, guards)
            return any(not np.array_equal(probed[name], first[name], equal_nan=True) for name in first)

        if not changes(lambda buffer: buffer.fill_guards(probing=True)):
            return
        for target in buffers.values():
            for side in ("front", "back"):
                def toggled(count: int, target: _Buffer = target, side: str = "front") -> bool:
                    def guards(buffer: _Buffer) -> None:
                        if buffer is target:
                            buffer.fill_guards(True, **{side: count})
                    return changes(guards)

                if not toggled(target.guard, side=side):
                    continue
                low, high = 1, target.guard  # the fewest entries next to the array whose change shows
                while low < high:
                    middle = (low + high) // 2
                    if toggled(middle, side=side):
                        high = middle
                    else:
                        low = middle + 1
                offset = -low if side == "front" else target.size + low - 1
                where = "before its first entry" if side == "front" else "past its end"
                findings.append(f"{self.name} reads outside {target.name} ({target.size} entries, shape "
                                f"{target.shape}): offset {offset}, {where}")


def load_c_functions(library: str, names: list[str], plan: dict[str, Any]) -> Callable[..., Any]:
    """The C function(s) of a compiled library as one callable (plan['takes'] and the trailing parameters →
    plan['returns']), each called on guarded buffers; its `findings` lists what the last call did wrong."""
    try:
        loaded = ctypes.CDLL(library)
    except OSError as problem:
        raise SoftgradError(f"cannot load {library}: {problem}") from None
    functions = []
    for name, function_plan in zip(names, plan["functions"]):
        try:
            functions.append(_GuardedFunction(getattr(loaded, name), function_plan))
        except AttributeError:
            raise SoftgradError(f"{library} has no function {name!r}") from None

    def composed(*values: Any) -> Any:
        named = dict(zip([*plan["takes"], *plan["trailing"]], values))
        findings: list[str] = []
        for function in functions:
            named.update(function.run(named, findings))
        composed.findings = findings  # type: ignore[attr-defined]
        results = tuple(named[name] for name in plan["returns"])
        return results if len(results) > 1 else results[0]

    composed.findings = []  # type: ignore[attr-defined]
    composed.__name__ = ",".join(names)
    return composed

