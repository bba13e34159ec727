"""sarashina-grpo: teach Sarashina 2.2 3B instruct to think in <think> before it answers in <response>.

The package holds the logic; the notebooks in ``notebooks/`` and the ``sarashina-grpo`` CLI are thin recipes
over it. Heavy modules (Unsloth, TRL) are imported lazily so that rewards and data loading stay cheap.
"""

import logging

__version__ = "0.1.0"

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: int = logging.INFO) -> logging.Logger:
    """Show the package's log lines (INFO by default) on stderr, as the CLI does; return the package logger.

    ``logging.basicConfig`` is not enough in a notebook: importing Unsloth gives the root logger a handler at
    level WARNING, after which ``basicConfig`` does nothing and every INFO line of the package is dropped. So the
    package logger gets its own handler and stops propagating (no line printed twice). Calling it again is safe.
    """
    logger = logging.getLogger(__name__)
    logger.setLevel(level)
    if not any(getattr(h, "_sarashina_grpo", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
        handler._sarashina_grpo = True  # recognise our own handler on a second call
        logger.addHandler(handler)
    logger.propagate = False
    return logger
