"""The LLaMA language model of ImageBind-LLM: transformer (with bias, LoRA and gates) and tokenizer."""

from ibllm_agent.llama.model import KVCache, ModelArgs, RMSNorm, Transformer
from ibllm_agent.llama.tokenizer import Tokenizer

__all__ = ["KVCache", "ModelArgs", "RMSNorm", "Tokenizer", "Transformer"]
