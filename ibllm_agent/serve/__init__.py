"""Serving: the continuous-batching engine (engine.py) behind `ibllm serve`."""
