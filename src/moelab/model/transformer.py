"""Decoder-only transformer LM: the paper's XGLM-style architecture (== transformers'
``XGLMForCausalLM``) and a modern one (== ``LlamaForCausalLM`` with tied embeddings); each is
described in docs/model.md (*Architectures*).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from moelab.config import ModelConfig
from moelab.model.attention import Attention
from moelab.model.ffn import FeedForward, make_norm
from moelab.model.fused_loss import linear_cross_entropy
from moelab.model.kv_cache import KVCache
from moelab.model.moe import MoeFFN, MoeOutput, MoeStats
from moelab.model.positions import rotary_cos_sin, sinusoidal_offset, sinusoidal_table


@dataclass
class ModelOutput:
    """``logits_BTV`` (B, 1, V when ``last_only``), ``hidden_BTD`` (after the final norm, only
    when asked), ``aux_loss`` / ``z_loss`` (unweighted sums over MoE layers; zero for dense),
    ``moe_stats`` (one :class:`MoeStats` per MoE layer, in layer order, when asked for),
    ``ce_loss`` (float32 mean cross-entropy against ``targets_BT``, only when they were given;
    then no logits)."""

    logits_BTV: torch.Tensor | None
    aux_loss: torch.Tensor
    z_loss: torch.Tensor
    hidden_BTD: torch.Tensor | None = None
    moe_stats: list[MoeStats] = field(default_factory=list)
    ce_loss: torch.Tensor | None = None  # mean next-token loss, when targets were given


class Block(nn.Module):
    """Pre-norm block: x + drop(attn(attn_norm(x))), then x + drop(ffn(ffn_norm(x)))."""

    def __init__(self, cfg: ModelConfig, layer: int, moe: bool):
        super().__init__()
        self.dropout = cfg.dropout
        self.attn_norm = make_norm(cfg)
        self.attn = Attention(
            cfg.d_model,
            cfg.n_heads,
            bias=cfg.arch == "paper",
            attn_dropout=cfg.attn_dropout,
            layer=layer,
        )
        self.ffn_norm = make_norm(cfg)
        self.ffn: nn.Module = MoeFFN(cfg, layer) if moe else FeedForward(cfg)

    def forward(
        self,
        x_BTD: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor] | None,
        kv_cache: KVCache | None,
        stats: bool = False,
    ) -> tuple[torch.Tensor, MoeOutput | None]:
        h = self.attn(self.attn_norm(x_BTD), rotary=rotary, kv_cache=kv_cache)
        x_BTD = x_BTD + F.dropout(h, self.dropout, self.training)
        ffn_in = self.ffn_norm(x_BTD)
        moe_out = None
        if isinstance(self.ffn, MoeFFN):
            moe_out = self.ffn(ffn_in, stats=stats)
            h = moe_out.y_BTD
        else:
            h = self.ffn(ffn_in)
        return x_BTD + F.dropout(h, self.dropout, self.training), moe_out


class LanguageModel(nn.Module):
    """Parameters: ``embed.weight`` (V, D, tied with the output), ``layers.{i}.*`` (see
    :class:`Block`), ``final_norm.*``. No position parameters."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        moe_ids = set(cfg.moe_layer_ids())
        self.layers = nn.ModuleList(Block(cfg, i, i in moe_ids) for i in range(cfg.n_layers))
        self.final_norm = make_norm(cfg)
        self.embed_scale = math.sqrt(cfg.d_model) if cfg.arch == "paper" else 1.0
        if cfg.arch == "paper":
            self._pos_offset = sinusoidal_offset(cfg.padding_idx)
            table = sinusoidal_table(
                cfg.max_seq_len + self._pos_offset, cfg.d_model, cfg.padding_idx
            )
            self.register_buffer("pos_table", table, persistent=False)

    # -- positions --------------------------------------------------------------------------

    def _sinusoidal(self, positions_T: torch.Tensor) -> torch.Tensor:
        rows_T = positions_T + self._pos_offset
        need = int(rows_T.max()) + 1 if rows_T.numel() else 0
        if need > self.pos_table.shape[0]:
            # Past max_seq_len (e.g. long generation): extend the table like XGLM does.
            self.pos_table = sinusoidal_table(need, self.cfg.d_model, self.cfg.padding_idx).to(
                self.pos_table.device
            )
        return self.pos_table[rows_T]

    # -- forward ----------------------------------------------------------------------------

    def forward(
        self,
        tokens_BT: torch.Tensor,
        *,
        kv_cache: KVCache | None = None,
        return_hidden: bool = False,
        last_only: bool = False,
        return_logits: bool = True,
        targets_BT: torch.Tensor | None = None,
        moe_stats: bool | None = None,
    ) -> ModelOutput:
        """Logits for every position (or only the last with ``last_only``; none with
        ``return_logits=False``). With ``kv_cache`` the tokens continue the cached sequence:
        positions start at ``kv_cache.length`` and the cache is extended. With ``targets_BT``
        the output carries the mean cross-entropy instead of logits, computed chunk by chunk
        through the LM head (:mod:`moelab.model.fused_loss`): what training needs.
        ``moe_stats``: compute the MoE layers' telemetry (:class:`MoeStats`); None (default) =
        in training mode only, so evaluation and KV-cache decoding skip it unless asked."""
        T = tokens_BT.shape[1]
        start = kv_cache.length if kv_cache is not None else 0
        positions_T = torch.arange(start, start + T, device=tokens_BT.device)
        x_BTD = self.embed(tokens_BT) * self.embed_scale
        rotary = None
        if self.cfg.arch == "paper":
            x_BTD = x_BTD + self._sinusoidal(positions_T).to(x_BTD.dtype)
        else:
            rotary = rotary_cos_sin(
                positions_T, self.cfg.d_model // self.cfg.n_heads, self.cfg.rope_theta
            )
        x_BTD = F.dropout(x_BTD, self.cfg.dropout, self.training)

        aux_loss = x_BTD.new_zeros((), dtype=torch.float32)
        z_loss = x_BTD.new_zeros((), dtype=torch.float32)
        stats: list[MoeStats] = []
        want_stats = self.training if moe_stats is None else moe_stats
        for block in self.layers:
            x_BTD, moe_out = block(x_BTD, rotary, kv_cache, want_stats)
            if moe_out is not None:
                aux_loss = aux_loss + moe_out.aux_loss
                z_loss = z_loss + moe_out.z_loss
                if moe_out.stats is not None:
                    stats.append(moe_out.stats)
        if kv_cache is not None:
            kv_cache.advance(T)

        h_BTD = self.final_norm(x_BTD)
        if last_only:
            h_BTD = h_BTD[:, -1:]
        ce_loss = None
        if targets_BT is not None:
            ce_loss = linear_cross_entropy(
                h_BTD.reshape(-1, h_BTD.shape[-1]), self.embed.weight, targets_BT.reshape(-1)
            )
            return_logits = False
        logits = F.linear(h_BTD, self.embed.weight) if return_logits else None
        return ModelOutput(
            logits_BTV=logits,
            ce_loss=ce_loss,
            aux_loss=aux_loss,
            z_loss=z_loss,
            hidden_BTD=h_BTD if return_hidden else None,
            moe_stats=stats,
        )
