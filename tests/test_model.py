"""The transformer LM: parameter inventory, causality, KV cache, overfitting, HF parity."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from moelab.config import ModelConfig
from moelab.model import KVCache, LanguageModel, build_model


def tiny_cfg(arch: str = "paper", n_experts: int = 0, **kw) -> ModelConfig:
    base = dict(
        arch=arch,
        vocab_size=61,
        n_layers=2,
        d_model=32,
        n_heads=4,
        d_ffn=48,
        max_seq_len=24,
        n_experts=n_experts,
        moe_every=2 if n_experts else 2,
        top_k=2,
        dropout=0.1,
        attn_dropout=0.1,
        activation_dropout=0.1,
    )
    base.update(kw)
    return ModelConfig(**base)


def expected_param_count(cfg: ModelConfig) -> int:
    """The documented inventory, written out independently of the model code."""
    D, Fd, V, E, L = cfg.d_model, cfg.d_ffn, cfg.vocab_size, cfg.n_experts, cfg.n_layers
    paper = cfg.arch == "paper"
    attn = 4 * (D * D + (D if paper else 0))
    norms = 2 * (2 * D if paper else D)
    dense_ffn = (2 * D * Fd + Fd + D) if paper else 3 * D * Fd
    expert = dense_ffn
    moe_ffn = D * E + E * expert
    n_moe = len(cfg.moe_layer_ids())
    total = L * (attn + norms) + (L - n_moe) * dense_ffn + n_moe * moe_ffn
    return total + (2 * D if paper else D) + V * D


@pytest.mark.parametrize("arch", ["paper", "modern"])
@pytest.mark.parametrize("n_experts,moe_every", [(0, 2), (4, 2), (3, 1)])
def test_param_inventory(arch, n_experts, moe_every):
    cfg = tiny_cfg(arch, n_experts, moe_every=moe_every, n_layers=3)
    model = build_model(cfg, seed=0)
    assert sum(p.numel() for p in model.parameters()) == expected_param_count(cfg)
    names = {n for n, _ in model.named_parameters()}
    assert "embed.weight" in names and not any("pos" in n for n in names)
    if n_experts:
        i = cfg.moe_layer_ids()[0]
        assert model.layers[i].ffn.experts.w1.shape == (n_experts, cfg.d_model, cfg.d_ffn)
        assert model.layers[i].ffn.gate.weight.shape == (n_experts, cfg.d_model)


def test_scaled_normal_init_is_deterministic_and_scaled():
    # The GPT-2 style scheme (fairseq's is checked tensor by tensor in test_init.py).
    cfg = dataclasses.replace(tiny_cfg("paper", 4), init="scaled_normal")
    a, b = build_model(cfg, seed=7), build_model(cfg, seed=7)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n
    out_w = a.layers[0].attn.out_proj.weight
    q_w = a.layers[0].attn.q_proj.weight
    assert out_w.std() < q_w.std()
    assert a.layers[0].attn.q_proj.bias.abs().sum() == 0


# ---------------------------------------------------------------------------------------------
# Causality


CAUSAL_CASES = [
    ("paper", dict()),
    ("modern", dict()),
    ("paper", dict(n_experts=4, capacity_factor=None)),
    ("modern", dict(n_experts=4, moe_every=1, capacity_factor=None)),
    # k=1 with capacity is causal within the last sequence: slots go in token order.
    ("paper", dict(n_experts=4, top_k=1, capacity_factor=1.0)),
]


@pytest.mark.parametrize("arch,kw", CAUSAL_CASES)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_causality(arch, kw, mode):
    # Dropout stays on (same seed in both passes), except inside the experts: there the mask's
    # shape follows how many tokens each expert got, which the changed tokens alter.
    cfg = tiny_cfg(arch, **kw, activation_dropout=0.0 if kw.get("n_experts") else 0.1)
    model = build_model(cfg, seed=1)
    model.train(mode == "train")
    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, cfg.vocab_size, (2, 12), generator=g)
    changed = tokens.clone()
    t = 7
    changed[-1, t:] = (changed[-1, t:] + 5) % cfg.vocab_size  # change the last row's future
    torch.manual_seed(0)  # same dropout masks in both passes
    a = model(tokens).logits_BTV
    torch.manual_seed(0)
    b = model(changed).logits_BTV
    torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=1e-6)
    assert not torch.allclose(a[-1, t:], b[-1, t:])


# ---------------------------------------------------------------------------------------------
# KV cache


@pytest.mark.parametrize(
    "arch,kw",
    [("paper", {}), ("modern", {}), ("paper", dict(n_experts=4)), ("modern", dict(n_experts=3))],
)
def test_kv_cache_decoding_equals_full_forward(arch, kw):
    cfg = tiny_cfg(arch, max_seq_len=12, **kw)  # decode past max_seq_len: positions extend
    model = build_model(cfg, seed=3).eval()
    tokens = torch.randint(0, cfg.vocab_size, (2, 20), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = model(tokens).logits_BTV
        cache = KVCache()
        pieces = [model(tokens[:, :5], kv_cache=cache).logits_BTV]  # prefill a chunk
        pieces.append(model(tokens[:, 5:9], kv_cache=cache).logits_BTV)  # chunk after a prefix
        for t in range(9, 20):  # then one token at a time
            pieces.append(model(tokens[:, t : t + 1], kv_cache=cache).logits_BTV)
        assert cache.length == 20
        last = model(tokens, last_only=True).logits_BTV
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(last, full[:, -1:], rtol=1e-5, atol=1e-6)


def test_hidden_and_outputs():
    cfg = tiny_cfg("paper", 4, dropout=0.0, attn_dropout=0.0, activation_dropout=0.0)
    model = build_model(cfg, seed=0).eval()
    out = model(torch.zeros(1, 5, dtype=torch.long), return_hidden=True, moe_stats=True)
    assert out.hidden_BTD.shape == (1, 5, cfg.d_model)
    torch.testing.assert_close(out.logits_BTV, out.hidden_BTD @ model.embed.weight.t())
    assert out.logits_BTV.dtype == torch.float32
    assert len(out.moe_stats) == 1 and out.moe_stats[0].layer == 1
    assert out.aux_loss.ndim == 0 and out.z_loss.ndim == 0
    dense = build_model(tiny_cfg("paper"), seed=0)(torch.zeros(1, 3, dtype=torch.long))
    assert dense.aux_loss.item() == 0 and dense.moe_stats == []


def test_bf16_autocast_runs():
    model = build_model(tiny_cfg("modern", 4, moe_every=1), seed=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randint(0, 61, (2, 6)))
    out.logits_BTV.float().sum().backward()
    assert model.layers[0].ffn.gate.weight.grad is not None


# ---------------------------------------------------------------------------------------------
# Training signal: a tiny model memorises one fixed batch


def overfit(model: LanguageModel, steps: int, aux_weight: float = 0.01) -> float:
    g = torch.Generator().manual_seed(5)
    batch = torch.randint(0, model.cfg.vocab_size, (4, 17), generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(steps):
        out = model(batch[:, :-1])
        loss = F.cross_entropy(
            out.logits_BTV.reshape(-1, model.cfg.vocab_size), batch[:, 1:].reshape(-1)
        )
        opt.zero_grad()
        (loss + aux_weight * out.aux_loss).backward()
        opt.step()
    return loss.item()


@pytest.mark.parametrize("arch", ["paper", "modern"])
@pytest.mark.parametrize("n_experts", [0, 4])
def test_overfit_one_batch(arch, n_experts):
    cfg = tiny_cfg(arch, n_experts, dropout=0.0, attn_dropout=0.0, activation_dropout=0.0)
    torch.manual_seed(0)
    model = build_model(cfg, seed=0)
    # Initial loss is about log(61) = 4.1; memorising 64 random tokens needs real learning.
    assert overfit(model, 40) < 0.5


# ---------------------------------------------------------------------------------------------
# Numerical parity with the Hugging Face reference implementations


def _perturbed(cfg: ModelConfig) -> LanguageModel:
    model = build_model(cfg, seed=1).eval()
    with torch.no_grad():  # non-trivial norms and biases
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def test_paper_arch_equals_xglm():
    transformers = pytest.importorskip("transformers")
    cfg = tiny_cfg("paper", dropout=0.0, attn_dropout=0.0, activation_dropout=0.0)
    model = _perturbed(cfg)
    hf = transformers.XGLMForCausalLM(
        transformers.XGLMConfig(
            vocab_size=cfg.vocab_size,
            max_position_embeddings=cfg.max_seq_len,
            d_model=cfg.d_model,
            ffn_dim=cfg.d_ffn,
            num_layers=cfg.n_layers,
            attention_heads=cfg.n_heads,
            dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
            layerdrop=0.0,
            scale_embedding=True,
            pad_token_id=1,
        )
    ).eval()
    sd = {"model.embed_tokens.weight": model.embed.weight, "lm_head.weight": model.embed.weight}
    sd["model.layer_norm.weight"] = model.final_norm.weight
    sd["model.layer_norm.bias"] = model.final_norm.bias
    for i, b in enumerate(model.layers):
        p = f"model.layers.{i}."
        for ours, theirs in [
            (b.attn.q_proj, "self_attn.q_proj"),
            (b.attn.k_proj, "self_attn.k_proj"),
            (b.attn.v_proj, "self_attn.v_proj"),
            (b.attn.out_proj, "self_attn.out_proj"),
            (b.attn_norm, "self_attn_layer_norm"),
            (b.ffn_norm, "final_layer_norm"),
            (b.ffn.fc1, "fc1"),
            (b.ffn.fc2, "fc2"),
        ]:
            sd[p + theirs + ".weight"] = ours.weight
            sd[p + theirs + ".bias"] = ours.bias
    hf.load_state_dict({k: v.detach() for k, v in sd.items()}, strict=True)
    tokens = torch.randint(2, cfg.vocab_size, (2, 13))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).logits_BTV, hf(tokens).logits, rtol=0, atol=1e-4)


@pytest.mark.parametrize("n_experts", [0, 4])
def test_modern_arch_equals_llama_and_mixtral(n_experts):
    transformers = pytest.importorskip("transformers")
    cfg = tiny_cfg(
        "modern",
        n_experts,
        moe_every=1,
        top_k=2,
        eval_capacity_factor=None,
        norm_eps=1e-6,
        dropout=0.0,
        attn_dropout=0.0,
        activation_dropout=0.0,
    )
    model = _perturbed(cfg)
    common = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_ffn,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_heads,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        tie_word_embeddings=True,
        rope_theta=cfg.rope_theta,
    )
    if n_experts:
        hf_cfg = transformers.MixtralConfig(
            **common, num_local_experts=n_experts, num_experts_per_tok=2, router_jitter_noise=0.0
        )
        hf = transformers.MixtralForCausalLM(hf_cfg).eval()
    else:
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common)).eval()
    sd = {
        "model.embed_tokens.weight": model.embed.weight,
        "lm_head.weight": model.embed.weight,
        "model.norm.weight": model.final_norm.weight,
    }
    for i, b in enumerate(model.layers):
        p = f"model.layers.{i}."
        sd[p + "self_attn.q_proj.weight"] = b.attn.q_proj.weight
        sd[p + "self_attn.k_proj.weight"] = b.attn.k_proj.weight
        sd[p + "self_attn.v_proj.weight"] = b.attn.v_proj.weight
        sd[p + "self_attn.o_proj.weight"] = b.attn.out_proj.weight
        sd[p + "input_layernorm.weight"] = b.attn_norm.weight
        sd[p + "post_attention_layernorm.weight"] = b.ffn_norm.weight
        if n_experts:
            ex = b.ffn.experts
            sd[p + "mlp.gate.weight"] = b.ffn.gate.weight
            sd[p + "mlp.experts.gate_up_proj"] = torch.cat([ex.w1, ex.w3], 2).transpose(1, 2)
            sd[p + "mlp.experts.down_proj"] = ex.w2.transpose(1, 2)
        else:
            sd[p + "mlp.gate_proj.weight"] = b.ffn.w1.weight
            sd[p + "mlp.up_proj.weight"] = b.ffn.w3.weight
            sd[p + "mlp.down_proj.weight"] = b.ffn.w2.weight
    hf.load_state_dict({k: v.detach().contiguous() for k, v in sd.items()}, strict=True)
    tokens = torch.randint(0, cfg.vocab_size, (2, 13))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).logits_BTV, hf(tokens).logits, rtol=0, atol=1e-4)
