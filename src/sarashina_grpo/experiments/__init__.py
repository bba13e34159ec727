"""Research harnesses, apart from the product: the GRPO step benchmark (``bench``) and the CPU learning proof
(``learning``). They use only the package's public pipeline (``sarashina_grpo.pipeline``)."""
