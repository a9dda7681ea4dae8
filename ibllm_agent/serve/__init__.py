"""`ibllm serve`: an OpenAI-compatible HTTP API over one ImageBind-LLM.

    ibllm serve --model toy --port 8000              # then: POST /v1/chat/completions, /v1/embeddings, ...

    from ibllm_agent.serve.app import create_app     # the ASGI app on its own (uvicorn, gunicorn, tests)
    app = create_app("toy", settings=ServeSettings(api_key="..."))

Modules: `app` (the FastAPI app factory and its routes), `protocol` (the OpenAI request/response shapes and
their translation to LangChain content blocks), `metrics` (Prometheus), `engine` (continuous batching),
`cli` (the `ibllm serve` command), `ray_serve` (`ibllm serve --ray`: the app as a Ray Serve deployment, the
`ray` extra). Nothing here is imported by `import ibllm_agent`: FastAPI, uvicorn and
prometheus-client are the optional `serve` extra (`pip install 'ibllm-agent[serve]'`).
"""
