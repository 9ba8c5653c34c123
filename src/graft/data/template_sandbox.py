"""The sandbox chat templates run in: Jinja's immutable sandbox, bounded in time and size.

A chat template comes with a checkpoint or a Hugging Face model, from whoever made it, and runs on
every chat request `graft serve` answers and on every conversation instruction tuning reads. Jinja's
sandbox stops it from reaching Python internals but not from filling memory (`{{ 'a' * 400000000 }}`
takes over a gigabyte) or from spinning (loops in loops over `range(100000)`). Here a rendering may:

- take at most MAX_RENDER_SECONDS of CPU time (the thread's, so a busy machine does not trip it);
- print at most MAX_RENDER_CHARS characters, and build no value larger than that;
- build at most MAX_RENDER_WORK characters of values in all, kept or not;
- compute no integer longer than MAX_INT_DIGITS digits.

A real template renders a conversation into its text plus markup, building a few copies of it on
the way, in about a millisecond: it never comes near these. Crossing one raises TemplateBoundError.

How, without threads or signals: the template's syntax tree is rewritten before it is compiled, so
that everything that makes a value goes through a check first: printing (`{{ }}` and plain text, in
macros and blocks too), `~`, slices, list, tuple and dict literals, and each step of a for loop; the
arithmetic operators and calls go through the sandbox's own hooks, and every filter is wrapped.
Whatever repeats runs through one of these (a loop step, a macro call), and each reads the clock.
Where an operation could make a large value from small ones (`*`, `+`, `%` and str.format widths,
`**`, str.replace / join / center..., the filters that repeat a string or an indent), its size is
worked out from its operands before it runs. The checks find the current rendering's allowance in a
context variable, so one compiled template can render in many threads at once.

What stays unbounded: the size of the template itself and of the conversation it is given (they are
read whole before rendering), and one builtin operation that is slow on bounded values (sorting a
long list is n log n); the deadline is read between operations, not during one.
"""

from __future__ import annotations

import contextvars
import functools
import json
import math
import re
import string
import time
from collections.abc import Callable, Collection, Generator, Iterable, Iterator, Mapping
from typing import Any, AnyStr, NoReturn, TypeVar, cast

import jinja2
import jinja2.ext
from jinja2 import filters as jinja_filters
from jinja2 import nodes
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.filters import make_attrgetter
from jinja2.nodes import EvalContext
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace
from jinja2.visitor import NodeTransformer

from graft.errors import DataError

__all__ = [
    "MAX_INT_DIGITS",
    "MAX_RENDER_CHARS",
    "MAX_RENDER_SECONDS",
    "MAX_RENDER_WORK",
    "TemplateBoundError",
    "compile_template",
    "render_template",
]

#: Characters one rendering may print, and the largest value it may build: a conversation of
#: about half a million tokens, four times the longest context of common models.
MAX_RENDER_CHARS = 2_000_000
#: Characters of values one rendering may build in all, kept or not. A real template copies the
#: conversation a few times (`'<|im_start|>' + role + '\n' + content` makes two); this bounds the
#: memory a template can hold, whatever it keeps.
MAX_RENDER_WORK = 16 * MAX_RENDER_CHARS
#: CPU seconds of one rendering; a real one takes about a millisecond.
MAX_RENDER_SECONDS = 1.0
#: Python's own limit on printing an integer (sys.int_info.default_max_str_digits).
MAX_INT_DIGITS = 4300

# What a container adds to a value's size per item: about a pointer's bytes, so that a list of a
# million references to one string costs what it holds, not nothing.
_ITEM_SIZE = 8
_T = TypeVar("_T")


class TemplateBoundError(DataError):
    """A rendering crossed one of the bounds above; the message says which."""


class _Budget:
    """One rendering's allowance: its deadline and the characters built so far."""

    def __init__(self) -> None:
        self.deadline = time.thread_time() + MAX_RENDER_SECONDS
        # A thread's CPU time never runs ahead of the wall clock, which is ten times cheaper to
        # read (no system call): the CPU clock is read only once the wall clock says it may be up.
        self.wall_deadline = time.perf_counter() + MAX_RENDER_SECONDS
        self.work = 0

    def tick(self) -> None:
        if time.perf_counter() > self.wall_deadline and time.thread_time() > self.deadline:
            raise TemplateBoundError(
                f"chat template took longer than {MAX_RENDER_SECONDS} s (CPU time) to render"
            )

    def allow(self, size: int) -> None:
        """Refuse, before it is made, a value that would hold `size` characters."""
        if size > MAX_RENDER_CHARS:
            raise TemplateBoundError(
                f"chat template builds a value of more than {MAX_RENDER_CHARS:,} characters"
            )

    def made(self, value: _T) -> _T:
        """Count a value the template has just built (and check the clock)."""
        self.tick()
        if isinstance(value, str):  # most values are; no need to walk them
            size = len(value)
        else:
            if isinstance(value, int) and _digits(value) > MAX_INT_DIGITS:
                _too_many_digits()
            size = _size(value)
        self.allow(size)
        self.work += size
        if self.work > MAX_RENDER_WORK:
            raise TemplateBoundError(
                f"chat template builds more than {MAX_RENDER_WORK:,} characters of values"
            )
        return value


def _too_many_digits() -> NoReturn:
    raise TemplateBoundError(
        f"chat template computes a number of more than {MAX_INT_DIGITS} digits"
    )


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar(
    "graft_template_budget", default=None
)


def _budget() -> _Budget:
    budget = _BUDGET.get()
    if budget is None:  # also what keeps Jinja from running a check at compile time
        raise RuntimeError("a chat template runs only inside render_template")
    return budget


def _digits(number: int) -> int:
    return number.bit_length() * 302 // 1000 + 1  # log10(2) < 0.302: never fewer than it has


_SEQUENCES = (list, tuple, set, frozenset)


def _size(value: object, limit: int = MAX_RENDER_CHARS) -> int:
    """About how many characters `value` stands for: a string's length, an integer's digits, and
    for a container _ITEM_SIZE per item plus the items' sizes, counted again wherever one object
    is held twice (printing it would print it twice). Counting stops once past `limit`."""
    total, stack = 0, [value]
    while stack and total <= limit:
        item: Any = stack.pop()
        kind = type(item)  # exact types first: this runs for every value a template builds
        if kind is str or kind is bytes:
            total += len(item)
        elif kind is int:
            total += _digits(item)
        elif kind in _SEQUENCES or isinstance(item, _SEQUENCES):
            total += _ITEM_SIZE * (1 + len(item))
            stack.extend(item)
        elif kind is dict or (kind is not Namespace and isinstance(item, Mapping)):
            total += _ITEM_SIZE * (1 + 2 * len(item))
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, str | bytes):
            total += len(item)
        elif isinstance(item, Namespace):
            # A namespace prints as its attributes; Jinja keeps them in this (private) dict.
            total += _ITEM_SIZE
            stack.append(object.__getattribute__(item, "_Namespace__attrs"))
        elif isinstance(item, int) and not isinstance(item, bool):
            total += _digits(item)
        else:  # a bool, None, a float, an undefined value, a macro, a lazy iterator: printed small
            total += _ITEM_SIZE
    return total


def _int(value: object) -> int:
    """An integer argument's value for a size estimate (0 for anything else)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _spec_numbers(spec: str) -> int:
    """The sum of the numbers in a format spec (its width and precision)."""
    return sum(
        min(int(n), MAX_RENDER_CHARS + 1) if len(n) < 10 else MAX_RENDER_CHARS + 1
        for n in re.findall(r"\d+", spec)
    )


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _percent_size(fmt: str, values: object) -> int:
    """A bound on the length of `fmt % values`: widths and precisions can make any length."""
    size = len(fmt) + 6 * _size(values)  # a value's repr can be a few times its size
    for match in _PERCENT_SPEC.finditer(fmt):
        for group in match.groups():
            if group == "*":  # the width is one of the values
                items = values if isinstance(values, tuple | list) else (values,)
                size += sum(max(_int(v), 0) for v in items)
            elif group:
                size += _spec_numbers(group)
    return size


def _format_size(fmt: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
    """A bound on the length of `fmt.format(*args, **kwargs)`."""
    size = len(fmt) + 6 * (_size(args) + _size(kwargs))
    for _, _, spec, _ in string.Formatter().parse(fmt):
        if spec:
            size += _spec_numbers(spec)
            if "{" in spec:  # a width taken from the arguments
                size += sum(max(_int(v), 0) for v in (*args, *kwargs.values()))
    return size


def _replace_size(s: AnyStr, old: AnyStr, new: AnyStr, count: int | None) -> int:
    times = s.count(old) if old else len(s) + 1
    if count is not None and count >= 0:
        times = min(times, count)
    return len(s) + times * max(len(new) - len(old), 0)


def _join_size(separator: str | bytes, items: list[Any]) -> int:
    return _size(items) + len(separator) * len(items)


# -- what a str method would make, worked out before it runs ----------------------------------


def _str_method_size(text: str | bytes, name: str, args: tuple[Any, ...]) -> int | None:
    """A bound on the length of `text.name(*args)` (a str's or, from encode(), a bytes' method)
    for the methods that can make it much longer than their operands; None for the others (they
    make at most a few times `text`)."""
    first = args[0] if args else None
    if name in ("center", "ljust", "rjust", "zfill"):
        return max(len(text), _int(first))
    if name == "expandtabs":
        tabs = text.count("\t") if isinstance(text, str) else text.count(b"\t")
        return len(text) + tabs * max(_int(first) if args else 8, 0)
    if name == "replace" and len(args) >= 2:
        count = _int(args[2]) if len(args) > 2 else None
        if isinstance(text, str) and isinstance(first, str) and isinstance(args[1], str):
            return _replace_size(text, first, args[1], count)
        if isinstance(text, bytes) and isinstance(first, bytes) and isinstance(args[1], bytes):
            return _replace_size(text, first, args[1], count)
    if name == "translate":
        return len(text) * (1 + _size(first))
    return None


# -- the filters: every one counted; those that can repeat text or make long lists sized first --
# Each is Jinja's own (the synchronous variant), given only what its bound allows.


@jinja2.pass_eval_context
def _replace(eval_ctx: EvalContext, s: str, old: str, new: str, count: int | None = None) -> str:
    _budget().allow(_replace_size(str(s), str(old), str(new), count))
    return jinja_filters.do_replace(eval_ctx, s, old, new, count)


@jinja2.pass_eval_context
def _join(
    eval_ctx: EvalContext, value: Iterable[Any], d: str = "", attribute: str | int | None = None
) -> str:
    items = list(value)
    _budget().allow(_join_size(str(d), items))
    return jinja_filters.sync_do_join(eval_ctx, items, d, attribute)


def _indent(s: str, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    text = str(s)
    indent = len(width) if isinstance(width, str) else max(_int(width), 0)
    _budget().allow(len(text) + (text.count("\n") + 1) * indent)
    return jinja_filters.do_indent(s, width, first, blank)


@jinja2.pass_environment
def _wordwrap(
    environment: jinja2.Environment,
    s: str,
    width: int = 79,
    break_long_words: bool = True,
    wrapstring: str | None = None,
    break_on_hyphens: bool = True,
) -> str:
    text, wrap = str(s), str(wrapstring or environment.newline_sequence)
    lines = len(text) // max(_int(width), 1) + text.count("\n") + 1
    _budget().allow(len(text) + lines * len(wrap))
    return jinja_filters.do_wordwrap(
        environment, s, width, break_long_words, wrapstring, break_on_hyphens
    )


def _center(value: str, width: int = 80) -> str:
    _budget().allow(max(len(str(value)), _int(width)))
    return jinja_filters.do_center(value, width)


def _format(value: str, *args: Any, **kwargs: Any) -> str:
    _budget().allow(_percent_size(str(value), kwargs or args))
    return jinja_filters.do_format(value, *args, **kwargs)


def _batch(value: Iterable[_T], linecount: int, fill_with: _T | None = None) -> Any:
    _budget().allow(_ITEM_SIZE * max(_int(linecount), 0))  # each batch a list of linecount
    return jinja_filters.do_batch(value, linecount, fill_with)


def _slice_filter(value: Collection[_T], slices: int, fill_with: _T | None = None) -> Any:
    _budget().allow(_ITEM_SIZE * max(_int(slices), 0))  # a list per slice
    return jinja_filters.sync_do_slice(value, slices, fill_with)


def _bounded_filter(function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)  # keeps Jinja's pass_context / pass_environment mark
    def bounded(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.tick()
        return budget.made(function(*args, **kwargs))

    return bounded


def _tojson(
    value: object,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """transformers' tojson (plain JSON, not Jinja's HTML-escaped default, so templates agree),
    written piece by piece so that an indent or a separator repeated past the bound stops it."""
    budget = _budget()
    indent_size = len(indent) if isinstance(indent, str) else max(_int(indent), 0)
    budget.allow(indent_size)  # json makes the indent string before anything else
    encoder = json.JSONEncoder(
        ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )
    pieces, size = [], 0
    for piece in encoder.iterencode(value):
        size += len(piece)
        budget.allow(size)
        budget.tick()
        pieces.append(piece)
    return "".join(pieces)


@jinja2.pass_environment
def _sum(
    environment: _Sandbox,
    iterable: Iterable[Any],
    attribute: str | int | None = None,
    start: Any = 0,
) -> Any:
    """Jinja's sum, adding through the bounded `+`: builtin sum() copies a growing list at each
    step, out of the deadline's reach."""
    if attribute is not None:
        iterable = map(make_attrgetter(environment, attribute), iterable)
    total = start
    for item in iterable:
        total = environment.call_binop(None, "+", total, item)
    return total


def _raise_exception(message: str) -> NoReturn:
    raise TemplateError(message)


# -- the syntax tree, rewritten so that what makes values goes through a check ------------------

_PRINT, _CONCAT, _SLICE, _ITERATE, _BUILT = (
    "graft_print",
    "graft_concat",
    "graft_slice",
    "graft_iterate",
    "graft_built",
)


@jinja2.pass_context  # never run at compile time: Jinja folds only filters without context
def _print(context: Context, value: object) -> str:
    text = value if isinstance(value, str) else str(value)
    return _budget().made(text)


@jinja2.pass_context
def _concat(context: Context, *parts: object) -> str:
    budget = _budget()
    # a value prints as up to a few times its size ('None' for None, quotes and commas for lists)
    budget.allow(sum(len(p) if isinstance(p, str) else 6 * _size(p) for p in parts))
    return budget.made("".join(part if isinstance(part, str) else str(part) for part in parts))


@jinja2.pass_context
def _slice(context: Context, value: Any, start: Any, stop: Any, step: Any) -> Any:
    return _budget().made(value[start:stop:step])


@jinja2.pass_context
def _built(context: Context, value: _T) -> _T:
    return _budget().made(value)


class _Ticking:
    """A for loop's iterable, reading the clock at each step: a loop with an empty body calls
    nothing else that would."""

    def __init__(self, items: Any) -> None:
        self.items = items

    def __iter__(self) -> Iterator[Any]:
        budget = _budget()
        for item in self.items:
            budget.tick()
            yield item

    def __len__(self) -> int:  # TypeError when the items have no length, as Jinja's loop expects
        return len(self.items)


@jinja2.pass_context
def _iterate(context: Context, items: Any) -> _Ticking:
    return _Ticking(items)


#: The filters graft defines itself or sizes first, by name.
_OWN_FILTERS: dict[str, Callable[..., Any]] = {
    "tojson": _tojson,
    "sum": _sum,
    "replace": _replace,
    "join": _join,
    "indent": _indent,
    "wordwrap": _wordwrap,
    "center": _center,
    "format": _format,
    "batch": _batch,
    "slice": _slice_filter,
}
_HELPERS: dict[str, Callable[..., Any]] = {
    _PRINT: _print,
    _CONCAT: _concat,
    _SLICE: _slice,
    _ITERATE: _iterate,
    _BUILT: _built,
}


class _Checked(NodeTransformer):
    """Wraps each node that makes a value in one of the _HELPERS filters."""

    @staticmethod
    def _filter(name: str, node: nodes.Node, *args: nodes.Node) -> nodes.Filter:
        return nodes.Filter(node, name, list(args), [], None, None, lineno=node.lineno)

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        self.generic_visit(node)
        node.nodes = [
            self._filter(
                _PRINT,
                nodes.Const(child.data, lineno=child.lineno)
                if isinstance(child, nodes.TemplateData)
                else child,
            )
            for child in node.nodes
        ]
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return self._filter(_CONCAT, *node.nodes)

    def visit_Getitem(self, node: nodes.Getitem) -> nodes.Node:
        self.generic_visit(node)
        if not isinstance(node.arg, nodes.Slice):
            return node  # through the sandbox's getitem
        bounds = (node.arg.start, node.arg.stop, node.arg.step)
        none = nodes.Const(None, lineno=node.lineno)
        return self._filter(_SLICE, node.node, *(b if b is not None else none for b in bounds))

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = self._filter(_ITERATE, node.iter)
        return node

    def _literal(self, node: nodes.List | nodes.Tuple | nodes.Dict) -> nodes.Node:
        self.generic_visit(node)
        if isinstance(node, nodes.Tuple) and node.ctx != "load":
            return node  # an assignment target: `{% for key, value in ... %}`
        return self._filter(_BUILT, node)

    visit_List = visit_Tuple = visit_Dict = _literal


# -- the environment --------------------------------------------------------------------------

# Gone from the sandbox: they make text from nothing, or repeat an argument per match, and no chat
# template needs them.
_DROPPED_GLOBALS = ("lipsum",)
_DROPPED_FILTERS = ("urlize",)


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox with the bounds above, and stricter in one way: an unsafe
    attribute raises at once.

    Jinja's sandbox answers `''.__class__` with an undefined value that only fails when used
    further, so `{{ ''.__class__ }}` would quietly print nothing; a template that reaches for
    internals is refused instead, whatever it does with them.
    """

    # Every arithmetic operator: each reads the clock, and *, +, % and ** are sized first.
    intercepted_binops = frozenset(ImmutableSandboxedEnvironment.default_binop_table)

    def __init__(self) -> None:
        # trim_blocks and lstrip_blocks as transformers sets them: Hub templates are written for
        # them. Not optimized: Jinja's optimizer would run constant expressions at compile time,
        # outside the bounds.
        super().__init__(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[jinja2.ext.loopcontrols],
            optimized=False,
        )
        for name in _DROPPED_GLOBALS:
            del self.globals[name]
        self.globals["raise_exception"] = _raise_exception
        filters = {k: v for k, v in self.filters.items() if k not in _DROPPED_FILTERS}
        filters |= _OWN_FILTERS
        self.filters = {k: _bounded_filter(v) for k, v in filters.items()} | _HELPERS

    def unsafe_undefined(self, obj: Any, attribute: str) -> NoReturn:
        raise SecurityError(
            f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is unsafe"
        )

    def call_binop(self, context: Context | None, operator: str, left: Any, right: Any) -> Any:
        budget = _budget()
        if type(left) is str and type(right) is str:  # most operations join text
            if operator == "+":
                budget.allow(len(left) + len(right))
            elif operator == "%":
                budget.allow(_percent_size(left, right))
        elif operator == "*":
            if isinstance(left, int) and isinstance(right, int):
                if _digits(left) + _digits(right) > MAX_INT_DIGITS:
                    _too_many_digits()
            elif isinstance(right, int):
                budget.allow(_size(left) * max(right, 0))
            elif isinstance(left, int):
                budget.allow(_size(right) * max(left, 0))
        elif operator == "+" and not isinstance(left, int | float):
            budget.allow(_size(left) + _size(right))
        elif operator == "%" and isinstance(left, str):
            budget.allow(_percent_size(left, right))
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0:
            if abs(left) > 1 and math.log10(abs(left)) * right > MAX_INT_DIGITS:
                _too_many_digits()
        return budget.made(self.binop_table[operator](left, right))

    def call(
        __self,  # Jinja's own spelling: no keyword argument of the call can clash with these
        __context: Context,
        __obj: Any,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        budget = _budget()
        budget.tick()
        text = getattr(__obj, "__self__", None)
        if isinstance(text, str | bytes) and callable(__obj):
            name = getattr(__obj, "__name__", "")
            if name == "join" and args:
                args = (list(args[0]), *args[1:])
                budget.allow(_join_size(text, args[0]))
            elif (size := _str_method_size(text, name, args)) is not None:
                budget.allow(size)
        return budget.made(super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        formatter = super().wrap_str_format(value)
        if formatter is None:
            return None
        fmt: str = value.__self__
        is_map = value.__name__ == "format_map"

        @functools.wraps(formatter)
        def sized(*args: Any, **kwargs: Any) -> str:
            mapping = args[0] if is_map and args and isinstance(args[0], Mapping) else kwargs
            _budget().allow(_format_size(fmt, () if is_map else args, mapping))
            return formatter(*args, **kwargs)

        return sized


@functools.lru_cache(maxsize=16)
def compile_template(template: str) -> jinja2.Template:
    """`template` compiled in the bounded sandbox. TemplateSyntaxError if it does not parse."""
    environment = _Sandbox()
    tree = environment.parse(template)
    tree = _Checked().visit(tree)
    tree.set_environment(environment)
    return environment.from_string(tree)


def render_template(compiled: jinja2.Template, **variables: Any) -> str:
    """What `compiled` (from compile_template) makes of `variables`, within the bounds;
    TemplateBoundError when it crosses one. Errors of the template's own pass through."""
    budget = _Budget()
    token = _BUDGET.set(budget)
    # Template.generate is a generator function: closing it ends the template's run
    generated = cast(Generator[str, None, None], compiled.generate(**variables))
    try:
        pieces, size = [], 0
        for piece in generated:
            size += len(piece)
            if size > MAX_RENDER_CHARS:
                raise TemplateBoundError(
                    f"chat template output exceeds {MAX_RENDER_CHARS:,} characters"
                )
            budget.tick()
            pieces.append(piece)
        return "".join(pieces)
    finally:
        generated.close()  # while the budget is set: closing runs what is left of finally blocks
        _BUDGET.reset(token)
