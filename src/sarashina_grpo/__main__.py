"""``python -m sarashina_grpo …`` is ``sarashina-grpo …``; ``accelerate launch -m sarashina_grpo train …`` runs it
once per process."""

import sys

from .cli import main

sys.exit(main())
