"""The ways people run specrej-local, all over the Python API (`specrej_local.api`).

    cli.py            the `specrej-local` click group: run (the default), models, convert-reward
    options.py        options and one-line errors every command shares
    batch.py          `batch`: a file of prompts ...
    batch_io.py       ... its IN and OUT files, resume and lock, shared with
    ray_batch.py      ... `batch --ray`, the same on Ray actors
    serve.py          `serve`: the command ...
    server.py         ... the OpenAI-compatible HTTP server
    openai_schema.py  ... OpenAI's request and response shapes
"""
