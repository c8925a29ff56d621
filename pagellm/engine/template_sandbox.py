"""A Jinja sandbox with bounds on time, memory and the size of what a template builds.

Chat templates are code: the model's, the server's ``--chat-template`` and, on a server started
with ``--trust-request-chat-template``, a request's own. Each renders through
``render_bounded``:

- in jinja2's ``ImmutableSandboxedEnvironment`` (no private attributes, no mutation of lists,
  dicts or sets);
- with guards on the operations that build a large value inside one C call, where nothing can
  interrupt them: ``*`` on strings, lists and ints, ``**``, ``%`` formatting, ``str.format``,
  ``join``, ``replace``, ``expandtabs``, the ``indent``, ``join``, ``replace``, ``format``,
  ``sum`` and ``tojson`` filters, integer arguments of any call, and block/macro output. Each is
  refused *before* it runs when its result would be longer than ``max_chars`` characters
  (``max_items`` items for lists, ``MAX_INT_BITS`` bits for integers);
- the result of every call, filter, ``+``, ``*``, ``%`` and ``~`` longer than that is refused
  too, so no value grows past the bound step by step;
- the rendered text is produced in chunks (``Template.generate``) and refused past
  ``max_chars``;
- the render runs in a thread of its own, and the calling thread stops it (an exception raised
  in the rendering thread, again and again until it has stopped: Python drops one that lands in
  a ``__del__``) after ``timeout_s`` seconds, or once the process's resident memory grew by
  ``max_memory_bytes`` during the render: the backstop for loops that build nothing (``range``
  × ``range``) and for values accumulated one bounded step at a time;
- a render that still runs ``stop_grace_s`` after that (stuck in C code) is abandoned: the
  caller gets its error anyway, so a tokenizer-pool thread is never held longer than
  ``timeout_s + stop_grace_s``, and the daemon thread cannot delay the process's exit.

Every refusal raises ``TemplateLimitError``. ``render_bounded`` must run off the event loop (it
blocks for up to ``timeout_s``).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from jinja2 import Template
from jinja2.compiler import CodeGenerator
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

MAX_INT_BITS = 1 << 16
"""Largest integer (in bits) that ``*`` or ``**`` may produce: big-integer arithmetic is one
uninterruptible C call, and Python refuses to print integers past 4300 digits anyway."""
MAX_JSON_INDENT = 64
_WATCHDOG_POLL_S = 0.01
_REINTERRUPT_S = 0.025
"""How often the supervisor raises ``_Interrupted`` again until the render has stopped."""
_REAP_INTERVAL_S = 0.05
MAX_ABANDONED_RENDERS = 4
"""Renders that would not stop (stuck in C code) whose threads may still run; past it, every
render is refused until one stops. Each may burn a core."""
_DIGITS = re.compile(r"\d+")
logger = logging.getLogger(__name__)


class TemplateLimitError(SecurityError):
    """A template went past a bound of ``TemplateLimits``; the message says which."""


@dataclass(frozen=True)
class TemplateLimits:
    """Bounds on one template render (compilation included)."""

    max_chars: int = 8_000_000
    """Longest rendered text, and longest string any single operation may build (characters).
    A request body is at most a few MB, so a real prompt never comes near it."""
    max_items: int = 1_000_000
    """Longest list, tuple or dict any single operation may build."""
    timeout_s: float = 2.0
    """Wall-clock seconds a render may take; real chat templates take milliseconds."""
    max_memory_bytes: int = 512 * 2**20
    """Growth of the process's resident memory during the render that stops it."""
    max_template_chars: int = 256 * 1024
    """Longest template source accepted (real chat templates are a few KB)."""
    stop_grace_s: float = 1.0
    """Seconds a render may go on after it passed a bound (while being interrupted every
    ``_REINTERRUPT_S``) before the caller gets its error anyway and the render's thread is
    abandoned."""


class _Interrupted(BaseException):
    """Raised in the rendering thread by its supervisor; BaseException so that no ``except
    Exception`` inside Jinja or a filter swallows it. Python itself drops one that lands in a
    ``__del__`` or a GC callback ("Exception ignored in ..."), so the supervisor raises it again
    every ``_REINTERRUPT_S`` until the render has left."""


def _drop_swallowed_interrupts(hook_args) -> None:
    """``sys.unraisablehook`` in front of the previous one: an ``_Interrupted`` that Python
    dropped in a ``__del__`` or GC callback is expected (the supervisor sends another), so it
    becomes a debug line instead of an "Exception ignored in ..." traceback on stderr, which
    would break the one log format; every other unraisable exception goes on as before."""
    if hook_args.exc_type is not None and issubclass(hook_args.exc_type, _Interrupted):
        logger.debug("a template interrupt landed in %r and was dropped; another follows",
                     hook_args.object)
        return
    _PREVIOUS_UNRAISABLEHOOK(hook_args)


_PREVIOUS_UNRAISABLEHOOK = sys.unraisablehook


def _install_interrupt_filter() -> None:
    """Put ``_drop_swallowed_interrupts`` in place once (at the first render, not at import)."""
    global _PREVIOUS_UNRAISABLEHOOK
    if sys.unraisablehook is not _drop_swallowed_interrupts:
        _PREVIOUS_UNRAISABLEHOOK = sys.unraisablehook
        sys.unraisablehook = _drop_swallowed_interrupts


def render_bounded(compile_source: Callable[[], Template], context: dict,
                   limits: TemplateLimits) -> str:
    """``compile_source()`` then the template rendered with ``context``, within ``limits``.

    The render runs in a fresh daemon thread supervised by the calling thread (see
    ``_SupervisedRender``), so the caller returns within ``timeout_s + stop_grace_s`` even
    when the render cannot be stopped. Raises ``TemplateLimitError`` past a bound (or when
    ``MAX_ABANDONED_RENDERS`` renders that would not stop still run); any other error of the
    template (including ``jinja2.TemplateError``) propagates unchanged. Blocks the calling
    thread."""

    def render() -> str:
        template = compile_source()
        parts, size = [], 0
        for chunk in template.generate(context):
            size += len(chunk)
            if size > limits.max_chars:
                raise TemplateLimitError(
                    f"the chat template's output passed {limits.max_chars} characters")
            parts.append(chunk)
        return "".join(parts)

    return _SupervisedRender(render, limits).run()


def num_abandoned_renders() -> int:
    """Renders given up on (past ``timeout_s + stop_grace_s``) whose thread still runs."""
    with _ABANDONED_LOCK:
        return sum(1 for render in _ABANDONED if render.thread.is_alive())


class _SupervisedRender:
    """One render in its own daemon thread; the calling thread supervises it.

    The supervisor raises ``_Interrupted`` in the render thread once the time or memory bound
    passes, and again every ``_REINTERRUPT_S`` until the render thread has left ``function``
    (``left``). ``left`` is set under ``lock``, and the supervisor raises only under ``lock``
    while ``left`` is false, so at most one interrupt can still be pending once the render has
    left: the render thread cancels it, or catches it if it lands first (``_run``). Nothing is
    ever raised in the caller's thread. A render still running ``stop_grace_s`` after its bound
    passed (stuck in C code, say) is abandoned: the caller gets its ``TemplateLimitError``, and
    a reaper thread keeps interrupting the render until it stops."""

    def __init__(self, function: Callable[[], str], limits: TemplateLimits):
        self.function, self.limits = function, limits
        self.lock = threading.Lock()
        self.left = False
        self.finished = threading.Event()       # value or error is set
        self.value: str | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="pagellm-template-render",
                                       daemon=True)

    def run(self) -> str:
        if num_abandoned_renders() >= MAX_ABANDONED_RENDERS:
            raise TemplateLimitError(f"{MAX_ABANDONED_RENDERS} chat templates that would not "
                                     "stop are still running; try again later")
        _install_interrupt_filter()
        rss_start = _rss_bytes()
        self.thread.start()
        reason = self._supervise(rss_start)
        if isinstance(self.error, _Interrupted):
            raise TemplateLimitError(reason or "the chat template was interrupted")
        if self.error is not None:
            raise self.error
        return self.value

    def _supervise(self, rss_start: int) -> str | None:
        """Wait for the render, interrupting it past a bound; the bound passed, if any."""
        deadline = time.monotonic() + self.limits.timeout_s
        reason, give_up_at, interrupted_at = None, float("inf"), float("-inf")
        while not self.finished.wait(_WATCHDOG_POLL_S):
            now = time.monotonic()
            if reason is None:
                reason = _passed_bound(self.limits, deadline, rss_start)
                give_up_at = now + self.limits.stop_grace_s
            if reason is None:
                continue
            if now >= give_up_at:
                _abandon(self)
                raise TemplateLimitError(f"{reason}; it did not stop and was abandoned")
            if now - interrupted_at >= _REINTERRUPT_S:
                self.interrupt()
                interrupted_at = now
        return reason

    def interrupt(self) -> None:
        """Raise ``_Interrupted`` in the render thread unless it has left the render."""
        with self.lock:
            if not self.left and self.thread.is_alive():
                _raise_in_thread(self.thread.ident, _Interrupted)

    def _run(self) -> None:
        try:
            try:
                self.value = self.function()
            except BaseException as error:      # noqa: BLE001 (handed to the caller)
                self.error = error
            finally:
                self._leave()
        except _Interrupted:    # the one sent before ``left`` was set, landed after the render
            self._leave()
        self.finished.set()

    def _leave(self) -> None:
        with self.lock:
            self.left = True
        _raise_in_thread(threading.get_ident(), None)   # cancel one not yet delivered


def _passed_bound(limits: TemplateLimits, deadline: float, rss_start: int) -> str | None:
    if time.monotonic() > deadline:
        return f"the chat template took longer than {limits.timeout_s:g} s to render"
    grown = _rss_bytes() - rss_start
    if rss_start and grown > limits.max_memory_bytes:
        return (f"the chat template used more than {limits.max_memory_bytes >> 20} MiB "
                "of memory while rendering")
    return None


_ABANDONED: list[_SupervisedRender] = []
_ABANDONED_LOCK = threading.Lock()


def _abandon(render: _SupervisedRender) -> None:
    """Give up waiting on ``render``; a daemon reaper keeps interrupting it until it stops."""
    logger.warning("a chat template render did not stop %g s after its bound; abandoning its "
                   "thread (still interrupting it)", render.limits.stop_grace_s)
    with _ABANDONED_LOCK:
        _ABANDONED[:] = [other for other in _ABANDONED if other.thread.is_alive()]
        _ABANDONED.append(render)
    threading.Thread(target=_reap, args=(render,), name="pagellm-template-reaper",
                     daemon=True).start()


def _reap(render: _SupervisedRender) -> None:
    while not render.finished.wait(_REAP_INTERVAL_S) and render.thread.is_alive():
        render.interrupt()
    with _ABANDONED_LOCK:
        if render in _ABANDONED:
            _ABANDONED.remove(render)


def _raise_in_thread(thread_id: int, exc_type: type[BaseException] | None) -> None:
    """Raise ``exc_type`` in thread ``thread_id`` at its next bytecode (None cancels a pending
    one): CPython's PyThreadState_SetAsyncExc."""
    exc = ctypes.py_object(exc_type) if exc_type is not None else ctypes.py_object()
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), exc)


def _rss_bytes() -> int:
    """Resident memory of this process (0 where /proc is missing: the memory bound is off)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


# ---- the environment --------------------------------------------------------------------------

class _BoundedCodeGenerator(CodeGenerator):
    """Compiles ``a ~ b`` into a size-checked concatenation."""

    def visit_Concat(self, node, frame) -> None:
        self.write("environment.checked_concat((")
        for operand in node.nodes:
            self.visit(operand, frame)
            self.write(", ")
        self.write("))")


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """``ImmutableSandboxedEnvironment`` with the size guards of the module docstring. Filters
    added after construction must be passed through ``guard_filters``."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})
    code_generator_class = _BoundedCodeGenerator

    def __init__(self, limits: TemplateLimits, **options: Any):
        super().__init__(finalize=self._finalize, **options)
        self.limits = limits
        self.concat = self._checked_join     # block, macro and {% set %}...{% endset %} output
        self.guard_filters()

    def guard_filters(self) -> None:
        for name, function in list(self.filters.items()):
            if not getattr(function, "_pagellm_guarded", False):
                self.filters[name] = _guarded_filter(self, name, function)

    def checked(self, value: Any) -> Any:
        """``value`` when within the size bounds, else TemplateLimitError."""
        if isinstance(value, str):
            self.check_chars(len(value))
        elif isinstance(value, (list, tuple, dict, set, frozenset)) and \
                len(value) > self.limits.max_items:
            raise TemplateLimitError(f"the chat template built a collection of {len(value)} "
                                     f"items (limit {self.limits.max_items})")
        elif _is_int(value) and value.bit_length() > MAX_INT_BITS:
            raise TemplateLimitError(f"the chat template built an integer of more than "
                                     f"{MAX_INT_BITS} bits")
        return value

    def check_chars(self, num_chars: int) -> None:
        if num_chars > self.limits.max_chars:
            raise TemplateLimitError(f"the chat template would build a string of {num_chars} "
                                     f"characters (limit {self.limits.max_chars})")

    def check_printable(self, value: Any) -> None:
        """Refuse ``value`` when its text (``str``, ``repr``, JSON) would pass ``max_chars``.
        Lists can hold one object many times, so a few KB of lists can print as terabytes in
        one C call; their expanded size is counted once per distinct object."""
        if isinstance(value, _CONTAINERS):
            self.check_chars(_expanded_chars(value, self.limits))

    def _finalize(self, value: Any) -> Any:
        self.check_printable(value)           # every {{ ... }} passes here before str()
        return value

    def checked_concat(self, operands: tuple) -> str:
        for operand in operands:
            self.check_printable(operand)
        return self._checked_join([str(operand) for operand in operands])

    def _checked_join(self, parts: Iterable[str]) -> str:
        parts = list(parts)
        self.check_chars(sum(len(part) for part in parts))
        return "".join(parts)

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        _check_binop(self, operator, left, right)
        return self.checked(super().call_binop(context, operator, left, right))

    def call(self, context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _check_int_args(self, args, kwargs)
        target = getattr(obj, "__wrapped__", obj)     # str.format arrives wrapped
        owner = getattr(target, "__self__", None)
        if isinstance(owner, str):
            args = _check_str_method(self, owner, getattr(target, "__name__", ""), args, kwargs)
        return self.checked(super().call(context, obj, *args, **kwargs))


_CONTAINERS = (list, tuple, dict, set, frozenset, Namespace)


def _expanded_chars(value: Any, limits: TemplateLimits) -> int:
    """About ``len(str(value))`` for nested containers, counting each distinct container once
    per appearance but walking it once; TemplateLimitError past ``limits``."""
    sizes: dict[int, int] = {}

    def size(item: Any) -> int:
        if isinstance(item, str):
            return len(item) + 4
        if not isinstance(item, _CONTAINERS):
            return 32
        key = id(item)
        if key in sizes:
            return sizes[key]
        if len(sizes) >= limits.max_items:
            raise TemplateLimitError("the chat template prints a structure with too many parts")
        sizes[key] = 8                                  # a cycle prints as [...]
        if isinstance(item, Namespace):
            item = dict(item._Namespace__attrs)         # noqa: SLF001 (its repr shows these)
        children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
        total = 2
        for child in children:
            total += size(child) + 2
            if total > limits.max_chars:
                raise TemplateLimitError(f"the chat template would print more than "
                                         f"{limits.max_chars} characters")
        sizes[key] = total
        return total

    try:
        return size(value)
    except RecursionError:
        raise TemplateLimitError("the chat template prints a structure nested too deeply") \
            from None


def _check_int_args(env: BoundedSandbox, args: tuple, kwargs: dict) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and \
                abs(value) > env.limits.max_chars:
            raise TemplateLimitError(f"the chat template passed {value} to a call (limit "
                                     f"{env.limits.max_chars})")


def _check_binop(env: BoundedSandbox, operator: str, left: Any, right: Any) -> None:
    """Refuse ``left operator right`` before it runs when its result would pass the bounds."""
    if operator == "*":
        for seq, count in ((left, right), (right, left)):
            if isinstance(seq, (str, list, tuple)) and isinstance(count, int):
                if isinstance(seq, str):
                    env.check_chars(len(seq) * max(count, 0))
                elif len(seq) * max(count, 0) > env.limits.max_items:
                    raise TemplateLimitError(
                        f"the chat template would build a list of {len(seq) * count} items "
                        f"(limit {env.limits.max_items})")
        if _is_int(left) and _is_int(right) and \
                left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise TemplateLimitError(f"the chat template would build an integer of more than "
                                     f"{MAX_INT_BITS} bits")
    elif operator == "**" and _is_int(left) and _is_int(right) and abs(left) > 1 and \
            right > 0 and left.bit_length() * right > MAX_INT_BITS:
        raise TemplateLimitError(f"the chat template would build an integer of more than "
                                 f"{MAX_INT_BITS} bits")
    elif operator == "%" and isinstance(left, str):
        env.check_printable(right)
        _check_format_widths(env, left, right if isinstance(right, tuple) else (right,), {})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_format_widths(env: BoundedSandbox, template: str, args: tuple, kwargs: Any) -> None:
    """Refuse a ``%`` or ``str.format`` whose field widths (every number in the format string,
    counted generously) or integer arguments could pass ``max_chars``."""
    widths = sum(int(digits) for digits in _DIGITS.findall(template) if len(digits) < 12)
    if any(len(digits) >= 12 for digits in _DIGITS.findall(template)):
        widths = env.limits.max_chars + 1
    env.check_chars(len(template) + widths)
    values = kwargs.values() if isinstance(kwargs, dict) else ()
    _check_int_args(env, tuple(args) + tuple(values), {})


def _check_str_method(env: BoundedSandbox, owner: str, name: str, args: tuple,
                      kwargs: dict) -> tuple:
    """Refuse the str methods whose result can be far longer than their inputs; returns the
    arguments to call with (a generator given to ``join`` is read into a list once)."""
    if name == "join" and args:
        items = list(args[0])
        env.check_chars(_joined_length(owner, items))
        return (items, *args[1:])
    if name == "replace" and len(args) >= 2:
        old, new = args[0], args[1]
        if isinstance(old, str) and isinstance(new, str):
            env.check_chars(_replaced_length(owner, old, new))
    elif name == "expandtabs":
        tabsize = args[0] if args else kwargs.get("tabsize", 8)
        if _is_int(tabsize):
            env.check_chars(len(owner) + owner.count("\t") * max(tabsize, 0))
    elif name in ("format", "format_map"):
        for value in (*args, *kwargs.values()):
            env.check_printable(value)
        _check_format_widths(env, owner, args, args[0] if name == "format_map" and args
                             else kwargs)
    return args


def _joined_length(separator: str, items: list) -> int:
    return sum(len(item) if isinstance(item, str) else len(str(item)) for item in items) + \
        len(separator) * max(len(items) - 1, 0)


def _replaced_length(text: str, old: str, new: str) -> int:
    occurrences = text.count(old) if old else len(text) + 1
    return len(text) + occurrences * max(len(new) - len(old), 0)


def _guarded_filter(env: BoundedSandbox, name: str, function: Callable) -> Callable:
    """``function`` (a Jinja filter) with integer arguments bounded, the value of a filter that
    prints it checked, the amplifying filters pre-checked and every result size-checked.
    Keeps the filter's ``pass_*`` marker (``functools.wraps`` copies it)."""
    precheck = _FILTER_PRECHECKS.get(name)
    prints_value = name in _PRINTING_FILTERS
    num_passed = 1 if getattr(function, "jinja_pass_arg", None) is not None else 0

    @functools.wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _check_int_args(env, args, kwargs)
        passed, own = args[:num_passed], args[num_passed:]
        if prints_value and own:
            env.check_printable(own[0])
        if precheck is not None:
            own = precheck(env, own, kwargs) or own
        return env.checked(function(*passed, *own, **kwargs))

    guarded._pagellm_guarded = True
    return guarded


_PRINTING_FILTERS = frozenset({
    "capitalize", "center", "e", "escape", "forceescape", "format", "indent", "lower", "pprint",
    "replace", "safe", "string", "striptags", "title", "tojson", "trim", "truncate", "upper",
    "urlencode", "urlize", "wordcount", "wordwrap", "xmlattr"})


def _precheck_join(env: BoundedSandbox, args: tuple, kwargs: dict) -> tuple | None:
    """Read the items once (a generator may be given), check each prints within bounds and
    the joined text does too; returns the arguments with the items as a list."""
    if not args:
        return None
    items = list(args[0])
    attribute = args[2] if len(args) > 2 else kwargs.get("attribute")
    shown = items
    if attribute is not None:
        from jinja2.filters import make_attrgetter
        getter = make_attrgetter(env, attribute)
        shown = [getter(item) for item in items]
    for item in shown:
        env.check_printable(item)
    separator = args[1] if len(args) > 1 else kwargs.get("d", "")
    env.check_chars(_joined_length(str(separator), shown))
    return (items, *args[1:])


def _precheck_replace(env: BoundedSandbox, args: tuple, kwargs: dict) -> None:
    if len(args) >= 3 and isinstance(args[1], str) and isinstance(args[2], str):
        env.check_chars(_replaced_length(str(args[0]), args[1], args[2]))


def _precheck_indent(env: BoundedSandbox, args: tuple, kwargs: dict) -> None:
    if args:
        width = args[1] if len(args) > 1 else kwargs.get("width", 4)
        prefix = len(width) if isinstance(width, str) else width if _is_int(width) else 0
        text = str(args[0])
        env.check_chars(len(text) + (text.count("\n") + 1) * max(prefix, 0))


def _precheck_format(env: BoundedSandbox, args: tuple, kwargs: dict) -> None:
    if args:
        _check_format_widths(env, str(args[0]), tuple(args[1:]), kwargs)


def _precheck_sum(env: BoundedSandbox, args: tuple, kwargs: dict) -> None:
    start = args[2] if len(args) > 2 else kwargs.get("start", 0)
    if not isinstance(start, (int, float)):
        raise TemplateLimitError("the sum filter only adds numbers in a chat template")


def _precheck_tojson(env: BoundedSandbox, args: tuple, kwargs: dict) -> None:
    indent = args[2] if len(args) > 2 else kwargs.get("indent")
    size = len(indent) if isinstance(indent, str) else indent if _is_int(indent) else 0
    if size > MAX_JSON_INDENT:
        raise TemplateLimitError(f"tojson indent is limited to {MAX_JSON_INDENT} in a chat "
                                 "template")


_FILTER_PRECHECKS: dict[str, Callable[[BoundedSandbox, tuple, dict], Any]] = {
    "join": _precheck_join, "replace": _precheck_replace, "indent": _precheck_indent,
    "format": _precheck_format, "sum": _precheck_sum, "tojson": _precheck_tojson,
}
