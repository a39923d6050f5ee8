"""Progress lines for long stages: "done/total, elapsed, ETA" at intervals, through logging; the one
progress logger of the package (sampling, edits, evaluation, training steps, the world's build).

Log files are read after the fact and on shared file systems, so progress is a plain line per update
(no carriage-return redraws as tqdm writes). A line is written when ``every_s`` seconds have passed since
the last one, when ``every_items`` items have finished since the last one, for the first item (unless
``first=False``) and always for the last: short stages log twice, long ones every so often.
"""

from __future__ import annotations

import logging
import time


def format_seconds(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``3725`` -> ``1h02m``; under a minute with one decimal."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """Counts finished items of a stage of ``total`` items and logs at intervals.

    ``update(n)`` adds ``n`` finished items; the ETA assumes the remaining items take as long as the
    finished ones did on average (the first item often includes warm-up, so early ETAs run high).
    """

    def __init__(
        self,
        what: str,
        total: int,
        logger: logging.Logger | None = None,
        every_s: float | None = 30.0,
        unit: str = "",
        clock=time.monotonic,
        *,
        every_items: int | None = None,
        first: bool = True,
        start: int = 0,
        label: str = "",
    ):
        """``start``: items finished before (a resumed run); ``label`` comes before the count ("step ")."""
        self.what = what
        self.total = int(total)
        self.log = logger or logging.getLogger("s2s.progress")
        self.every_s = None if every_s is None else float(every_s)
        self.every_items = every_items
        self.first = first
        self.unit = f" {unit}" if unit else ""
        self.label = label
        self.clock = clock
        self.start = clock()
        self.done = self.started_at = self._last_done = int(start)
        self._last_line = self.start
        self.lines = 0
        self.values: dict[str, str] = {}
        self.seconds_per_item: float | None = None

    def eta_s(self) -> float | None:
        """Seconds left at the rate given to ``update`` (else the average rate so far of this run's items);
        None before the first item."""
        remaining = max(self.total - self.done, 0)
        if self.seconds_per_item is not None:
            return self.seconds_per_item * remaining
        if self.done <= self.started_at:
            return None
        return (self.clock() - self.start) / (self.done - self.started_at) * remaining

    def line(self) -> str:
        elapsed = self.clock() - self.start
        eta = self.eta_s()
        percent = 100.0 * self.done / self.total if self.total else 100.0
        values = "".join(f", {name} {value}" for name, value in self.values.items())
        return (
            f"{self.what}: {self.label}{self.done}/{self.total}{self.unit} ({percent:.0f}%){values}, "
            f"elapsed {format_seconds(elapsed)}, ETA {'?' if eta is None else format_seconds(eta)}"
        )

    def update(self, n: int = 1, seconds_per_item: float | None = None, **values: str) -> None:
        """``n`` more items finished; ``values`` (already formatted: ``loss="0.1234"``) go into the line,
        and ``seconds_per_item`` (a recent rate) replaces the average rate in the ETA."""
        self.done += n
        self.values = values
        if seconds_per_item is not None:
            self.seconds_per_item = seconds_per_item
        now = self.clock()
        due = (
            (self.first and self.lines == 0)
            or self.done >= self.total
            or (self.every_s is not None and now - self._last_line >= self.every_s)
            or (self.every_items is not None and self.done - self._last_done >= self.every_items)
        )
        if due:
            self._last_line, self._last_done = now, self.done
            self.lines += 1
            self.log.info("%s", self.line())


class _DropMessages(logging.Filter):
    def __init__(self, fragment: str):
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


class without_log_records:  # noqa: N801 - used as a context manager, like contextlib's
    """Drop log records containing ``fragment`` from ``logger_name`` and its children for the block.

    For third-party warnings known to be harmless in our use (each call site says why). The filter goes
    on every handler-free logger under ``logger_name`` too, as records are filtered by the logger that
    created them, not by its parents.
    """

    def __init__(self, logger_name: str, fragment: str):
        self.logger_name = logger_name
        self.filter = _DropMessages(fragment)
        self.loggers: list[logging.Logger] = []

    def __enter__(self):
        names = [self.logger_name] + [
            n for n in logging.root.manager.loggerDict if n.startswith(self.logger_name + ".")
        ]
        self.loggers = [logging.getLogger(n) for n in names]
        for logger in self.loggers:
            logger.addFilter(self.filter)
        return self

    def __exit__(self, *exc):
        for logger in self.loggers:
            logger.removeFilter(self.filter)
        return False


_TORCHVISION_FALLBACK = _DropMessages("requires torchvision (not installed); falling back to")
# SD v1.x's scheduler config is PNDM's; the DDIM (inverse) schedulers made from it for sampling, editing
# and inversion are told that PNDM's own keys (skip_prk_steps) are ignored, which is exactly what we want.
_PNDM_KEYS_IGNORED = _DropMessages("were passed to DDIM")
# The training loop casts frozen modules to the mixed-precision dtype with .to(); diffusers warns on any
# such cast, naming the modules that must stay fp32. With none named ("[]") nothing is affected.
_NO_FP32_MODULES = _DropMessages("should be kept in float32: []")


def quiet_libraries() -> None:
    """No progress bars from diffusers, transformers and huggingface_hub (model loading and saving):
    their carriage-return redraws fill log files with one long line; our stages log progress lines.

    Also drops transformers' warning that an ``XImageProcessor`` falls back to ``XImageProcessorPil``
    without torchvision: diffusers' pipeline modules name those classes at import time, and the PIL
    processors are the ones this project uses on purpose (torchvision is not installed). Call it before
    diffusers or transformers is imported to catch that warning too.
    """
    # transformers' loggers are standard loggers: a filter set before its import applies once it logs.
    logging.getLogger("transformers.utils.import_utils").addFilter(_TORCHVISION_FALLBACK)
    logging.getLogger("diffusers.configuration_utils").addFilter(_PNDM_KEYS_IGNORED)
    logging.getLogger("diffusers.models.modeling_utils").addFilter(_NO_FP32_MODULES)
    import diffusers
    import huggingface_hub
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
