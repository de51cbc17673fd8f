"""Key/value cache for incremental decoding.

One preallocated buffer per layer that grows by doubling, so appending a token costs O(1)
amortised copies and each decoding step attends over the cached prefix: O(T) work per token.
"""

from __future__ import annotations

import torch


class KVCache:
    """Cached keys and values of every layer, shape (B, H, T, head_dim) each.

    Create an empty one with ``KVCache()`` and pass it to ``LanguageModel.forward(...,
    kv_cache=cache)`` repeatedly: each call appends the new tokens' keys/values and the model
    numbers the new positions from ``cache.length``. ``length`` advances once per forward call
    (after the last layer wrote), see :meth:`advance`.
    """

    def __init__(self) -> None:
        self._k: dict[int, torch.Tensor] = {}
        self._v: dict[int, torch.Tensor] = {}
        self.length = 0

    def append(
        self, layer: int, k_BHTd: torch.Tensor, v_BHTd: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new keys/values of ``layer`` after the cached ones and return all of them
        (views of the buffer, length ``self.length + T_new``)."""
        t_new = k_BHTd.shape[2]
        end = self.length + t_new
        buf_k = self._k.get(layer)
        if buf_k is None or buf_k.shape[2] < end or buf_k.shape[:2] != k_BHTd.shape[:2]:
            if buf_k is not None and buf_k.shape[:2] != k_BHTd.shape[:2]:
                raise ValueError(
                    f"KV cache holds batch/heads {tuple(buf_k.shape[:2])}, got "
                    f"{tuple(k_BHTd.shape[:2])}"
                )
            capacity = max(end, 2 * (buf_k.shape[2] if buf_k is not None else 0), 16)
            shape = (*k_BHTd.shape[:2], capacity, k_BHTd.shape[3])
            new_k = k_BHTd.new_empty(shape)
            new_v = v_BHTd.new_empty(shape)
            if buf_k is not None:
                new_k[:, :, : self.length] = buf_k[:, :, : self.length]
                new_v[:, :, : self.length] = self._v[layer][:, :, : self.length]
            self._k[layer], self._v[layer] = new_k, new_v
        self._k[layer][:, :, self.length : end] = k_BHTd
        self._v[layer][:, :, self.length : end] = v_BHTd
        return self._k[layer][:, :, :end], self._v[layer][:, :, :end]

    def advance(self, t_new: int) -> None:
        """Mark ``t_new`` more positions as cached (called by the model after all layers)."""
        self.length += t_new
