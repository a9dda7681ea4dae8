"""The visual cache: ImageBind image features that pull other modalities toward the image space."""

from ibllm_agent.cache.base import CacheError, Neighbor, SearchResult, VisualCache, blend, retrieve_and_blend

__all__ = ["CacheError", "Neighbor", "SearchResult", "VisualCache", "blend", "retrieve_and_blend"]
