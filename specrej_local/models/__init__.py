"""Model files: where they come from and what is in them. No llama.cpp here.

    registry.py     models.txt aliases, downloads, checksums, the cache
    stores.py       GGUF files Ollama, LM Studio and the Hugging Face cache already hold
    convert.py      Hugging Face reward-model checkpoints -> one GGUF file
    hf_config.py    a checkpoint's config.json, checked, and the tensor shapes it implies
    safetensors_file.py  safetensors tensors read with numpy, headers checked against the file
    score_head.py   the score head a converted reward model carries as metadata
    gguf_file.py    a GGUF header reader that skips the big arrays
    random_model.py random-weight GGUF files of a real model's shape (tests, benchmarks)
"""
