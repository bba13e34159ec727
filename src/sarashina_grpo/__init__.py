"""sarashina-grpo: teach Sarashina 2.2 3B instruct to think in <think> before it answers in <response>.

The package holds the logic; the notebooks in ``notebooks/`` and the ``sarashina-grpo`` CLI are thin recipes
over it. Heavy modules (Unsloth, TRL) are imported lazily so that rewards and data loading stay cheap.
"""

__version__ = "0.1.0"


def setup_logging(verbose: bool = False) -> None:
    """Show the package's INFO lines (DEBUG with ``verbose``), as the CLI does; notebooks call it in their first cell.
    Under ``accelerate launch`` the other ranks log warnings only: N copies of every line would bury rank 0's."""
    import logging

    from .project import multi_process, process_rank

    rank = process_rank()
    level = (logging.DEBUG if verbose else logging.INFO) if rank == 0 else logging.WARNING
    prefix = f"[rank {rank}] " if multi_process() else ""
    logging.basicConfig(level=level, format=f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s",
                        datefmt="%H:%M:%S", force=True)
    if not verbose:
        from .noise import hide_known_messages

        hide_known_messages()  # docs/troubleshooting.md, "Messages we hide"
