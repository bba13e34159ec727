"""sarashina-grpo: teach Sarashina 2.2 3B instruct to think in <think> before it answers in <response>.

The package holds the logic; the notebooks in ``notebooks/`` and the ``sarashina-grpo`` CLI are thin recipes
over it. Heavy modules (Unsloth, TRL) are imported lazily so that rewards and data loading stay cheap.
"""

__version__ = "0.1.0"
