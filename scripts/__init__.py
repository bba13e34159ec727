"""Research harness, apart from the installed package: each module is run from the repository root as

    uv run python -m scripts.bench …              # GRPO step benchmark (docs/benchmarks/, docs/LOG.md)
    uv run python -m scripts.learning_proof …     # CPU learning proof (docs/learning.md, tests/test_learning.py)

and calls the package (``sarashina_grpo``) through its public functions; what a measurement must patch in the
libraries is in ``scripts/bench_patches.py``, each patch with its reason. Results go into docs/LOG.md.
"""
