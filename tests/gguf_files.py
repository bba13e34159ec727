"""Small GGUF files for the tests of ``convert-gguf``'s checks: a header and one dummy tensor, no real weights."""

from __future__ import annotations


def write_gguf(path, architecture: str = "llama", *, tokens: bool = False, scores: bool = False):
    """A GGUF of ``architecture`` with one dummy tensor; ``tokens``: a two-token llama vocabulary, ``scores``: its
    token scores."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), architecture)
    if tokens:
        writer.add_tokenizer_model("llama")
        writer.add_token_list(["<unk>", "a"])
    if scores:
        writer.add_token_scores([0.0, 0.0])
    writer.add_tensor("dummy", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
