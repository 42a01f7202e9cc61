"""The llama.cpp backend: the engine and scorers the decoder's interfaces ask for.

    context.py          thin wrappers over llama.cpp's C API: Model, Context, Samplers
    engine.py           LlamaEngine: every candidate of a prompt in one context
    pool.py             KvPool: one context lent to several prompts' engines, one decode per step
    scorers.py          an LLM judge or reward model on its own context; the generator judging itself
    reward_model.py     sequence-classification reward models (a score head on an embedding model)
    chat.py             chat templates from GGUF metadata ...
    template_sandbox.py ... rendered in a child process with memory and time limits

Nothing is imported here: importing llama.cpp loads libllama, which only decoding needs.
"""
