"""Find the math in a page and split it into equality links, with the source line of each.

Display math (`\\[…\\]`, `$$…$$`, `\\begin{equation|align|split|gather}…`) is where derivations are; inline
math (`\\(…\\)`, `$…$`) and prose around a display carry its conditions ("if \\(i = j\\)") and assumptions
("given that \\(\\sum_k y_k = 1\\)"). A page copied from a rendered site often has LaTeX with no delimiters,
sometimes between two copies of the rendered text: on a line with no delimiters, the run of words from the
first one that holds a LaTeX command or a subscript to the last one is taken as display math.
A display is split at its top-level `=` signs (outside braces and parentheses) and at `\\\\` line breaks;
a line that starts with `=` (or `&=`) continues the chain above it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: Environments whose body is display math (their alignment marks & are ignored).
_ENVIRONMENTS = ("equation", "equation*", "align", "align*", "split", "gather", "gather*", "eqnarray", "multline")


@dataclass
class Display:
    """One display: its chain of sides (text, source line) and the prose just before it."""

    sides: list[tuple[str, int]]
    before: str  # prose (and inline math) between the previous display and this one
    line: int


@dataclass
class Page:
    displays: list[Display] = field(default_factory=list)
    prose: str = ""  # every text outside display math, inline math kept (assumptions are looked for there)


#: Inline math: \(…\) or $…$ on one line.
_INLINE = re.compile(r"\\\((.+?)\\\)|(?<![$\\])\$([^$\n]+?)\$(?!\$)")
#: An inline index condition (i = j, i \neq j): context for the next display, not a link.
_CONDITION = re.compile(r"[a-z]\s*(=|\\neq|\\ne|!=)\s*[a-z]")


def _line_of(text: str, position: int) -> int:
    return text.count("\n", 0, position) + 1


def _delimited(text: str) -> list[tuple[int, int, int]]:
    """(start of the math, end of the math, end of the closing delimiter) of each display, in order."""
    found: list[tuple[int, int, int]] = []
    position = 0
    opening = re.compile(r"\$\$|\\\[|\\begin\{(" + "|".join(re.escape(e) for e in _ENVIRONMENTS) + r")\}")
    while True:
        match = opening.search(text, position)
        if match is None:
            return found
        if match.group(0) == "$$":
            closing = "$$"
        elif match.group(0) == "\\[":
            closing = "\\]"
        else:
            closing = f"\\end{{{match.group(1)}}}"
        end = text.find(closing, match.end())
        if end < 0:
            return found
        found.append((match.end(), end, end + len(closing)))
        position = end + len(closing)


def _bare_latex(line: str) -> str | None:
    """The LaTeX on a line with no delimiters (copied from a rendered page), or None if it has none."""
    if "=" not in line or not re.search(r"\\(frac|sum|partial|exp|log|ln|hat|mathcal|delta)|_\{|\^\{", line):
        return None
    words: list[str] = []
    depth, current = 0, ""
    for character in line:  # words split at spaces outside braces
        depth += (character == "{") - (character == "}")
        if character.isspace() and depth <= 0:
            if current:
                words.append(current)
            current = ""
        else:
            current += character
    if current:
        words.append(current)

    def latex_like(word: str) -> bool:
        return "\\" in word or "_{" in word or "^{" in word

    marked = [number for number, word in enumerate(words) if latex_like(word)]
    if not marked:
        return None
    last = marked[-1]
    while last + 1 < len(words) and set(words[last + 1]) <= set(")]}"):  # a closing bracket on its own
        last += 1
    chosen = " ".join(words[marked[0]:last + 1])
    # prose glued to the formula's start (当j!=i时,\frac…): keep from the last non-ASCII character on
    foreign = [number for number, character in enumerate(chosen) if ord(character) > 127 and character not in "−·×≠"]
    start = foreign[-1] + 1 if foreign and foreign[-1] < chosen.find("\\") else 0
    chosen = chosen[start:].lstrip(",:; ")
    return chosen if "=" in chosen else None


def _split_sides(math: str, first_line: int) -> list[list[tuple[str, int]]]:
    """The chains of a display: lists of (side, line). A `\\\\` line that begins with = continues a chain."""
    chains: list[list[tuple[str, int]]] = []
    line = first_line
    math = re.sub(r"\\(begin|end)\{(split|aligned|align\*?|gathered|array)\}(\{[^}]*\})?", " ", math)
    blocks: list[str] = []  # cases blocks are kept whole: their rows and = signs are not the chain's

    def protect(match: re.Match[str]) -> str:
        blocks.append(match.group(0))
        return f"\\begin{{cases}}{len(blocks) - 1}\\end{{cases}}"

    math = re.sub(r"\\begin\{cases\}.*?\\end\{cases\}", protect, math, flags=re.S)
    for row in re.split(r"\\\\", math):
        row_line = line
        line += row.count("\n")
        text = row.replace("&", " ")
        sides: list[str] = []
        depth, current = 0, ""
        index = 0
        while index < len(text):
            character = text[index]
            if character in "{([":
                depth += 1
            elif character in "})]":
                depth -= 1
            if character == "=" and depth == 0 and text[max(0, index - 1):index] not in ("!", "<", ">", "\\") \
                    and not text[index + 1:index + 2] == "/":
                sides.append(current)
                current = ""
            else:
                current += character
            index += 1
        sides.append(current)
        sides = [s.strip() for s in sides]
        leading = row.lstrip().lstrip("&").lstrip().startswith("=")
        pieces = [(s, row_line + row[: row.find(s)].count("\n") if s else row_line) for s in sides]
        if leading and chains:
            chains[-1].extend(piece for piece in pieces[1:] if piece[0])
        elif leading:
            chains.append([("", row_line), *[piece for piece in pieces[1:] if piece[0]]])
        elif any(s for s, _ in pieces):
            chains.append([piece for piece in pieces if piece[0]])
    def restore(side: str) -> str:
        return re.sub(r"\\begin\{cases\}(\d+)\\end\{cases\}", lambda m: blocks[int(m.group(1))], side)

    return [[(restore(side), number) for side, number in chain] for chain in chains if chain and chain != [("", line)]]


def read_page(text: str) -> Page:
    """The displays of a page, in order, each with the prose before it."""
    page = Page()
    spans = _delimited(text)
    outside: list[tuple[int, int]] = []
    position = 0
    for start, _end, after in spans:
        outside.append((position, start))
        position = after
    outside.append((position, len(text)))
    prose_parts = []
    pending = ""
    events: list[tuple[int, str, str]] = []  # (position, kind, text)
    for (start, end, _after) in spans:
        events.append((start, "display", text[start:end]))
    for begin, finish in outside:
        chunk = text[begin:finish]
        offset = begin
        for raw in chunk.splitlines(keepends=True):
            bare = _bare_latex(raw.strip()) if not re.search(r"\\\(|\$", raw) else None
            if bare is not None:  # the prose glued before it (当j!=i时,) stays prose: it may hold a condition
                start = raw.find(bare[:8]) if bare[:8] in raw else 0
                events.append((offset, "prose", raw[:start]))
                events.append((offset + start, "bare", bare))
            else:
                events.append((offset, "prose", raw))
                for match in _INLINE.finditer(raw):  # an equality in a sentence is a link too
                    math = match.group(1) or match.group(2)
                    if "=" in math and re.search(r"[\\_]", math) and not _CONDITION.fullmatch(math.strip()):
                        events.append((offset + match.start(), "inline", math))
            offset += len(raw)
    events.sort(key=lambda event: event[0])
    for position, kind, body in events:
        if kind == "prose":
            pending += body
            prose_parts.append(body)
            continue
        line = _line_of(text, position)
        for chain in _split_sides(body, line):
            if chain[0][0] == "":  # `= …` on its own: the chain above goes on
                if not page.displays:
                    chain = chain[1:]
                else:
                    chain = [page.displays[-1].sides[-1], *chain[1:]]
            if len(chain) > 1 or (chain and not page.displays):
                page.displays.append(Display(chain, pending, chain[0][1]))
            pending = ""
    page.prose = "".join(prose_parts)
    return page
