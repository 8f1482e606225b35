"""Checkpoints: our layout, plain HF Llama, Llama -> LCKV conversion, the authors' lckv-llama layout."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import make_model, tiny_cfg
from lckv_service.checkpoint import convert_llama_to_lckv, load_model, model_identity, save_model
from lckv_service.errors import CheckpointError, ConfigError
from lckv_service.reference import reference_logits

IDX = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(0))


def _logits(model, idx=IDX):
    with torch.no_grad():
        return model(idx.to(next(model.parameters()).device))[0]


@pytest.mark.parametrize("w", [0, 2, None])
def test_save_load_round_trip(tmp_path, w):
    model = make_model(tiny_cfg(w, nodiag=w == 0), dtype=torch.float32)
    save_model(model, tmp_path, dtype=torch.float32)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "lckv"
    loaded = load_model(tmp_path)
    assert loaded.cfg == model.cfg and not any(p.is_meta for p in loaded.parameters())
    assert torch.equal(_logits(loaded), _logits(model))
    assert model_identity(loaded) == model_identity(model)
    save_model(model, tmp_path / "bf16")  # default bf16
    assert next(load_model(tmp_path / "bf16").parameters()).dtype == torch.bfloat16
    assert load_model(tmp_path / "bf16", dtype=torch.float32).lm_head.weight.dtype == torch.float32


def _hf_llama(tmp_path, cfg):
    from transformers import LlamaConfig, LlamaForCausalLM
    hf_cfg = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                         intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
                         num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
                         rope_theta=cfg.rope_theta, rms_norm_eps=cfg.rms_norm_eps, tie_word_embeddings=False)
    torch.manual_seed(1)
    hf = LlamaForCausalLM(hf_cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.1) if p.dim() == 2 else p.uniform_(0.8, 1.2)
    hf.save_pretrained(tmp_path)
    return hf


def test_load_plain_hf_llama(tmp_path):
    cfg = tiny_cfg(None, rope_theta=1000.0)
    hf = _hf_llama(tmp_path, cfg)
    model = load_model(tmp_path)
    assert model.cfg.kv_layers == tuple(range(cfg.num_layers)) and model.cfg.rope_theta == 1000.0
    with torch.no_grad():
        assert (_logits(model) - hf(IDX).logits).abs().max().item() < 1e-4


@pytest.mark.parametrize("kv_init", ["copy", "mean"])
def test_convert_llama_to_lckv(tmp_path, kv_init):
    cfg = tiny_cfg(None, layers=6)
    hf = _hf_llama(tmp_path, cfg)
    llama = load_model(tmp_path)
    lckv = convert_llama_to_lckv(llama, warmup_layers=2, kv_init=kv_init)
    c = lckv.cfg
    assert c.warmup_layers == 2 and c.target_layer == 4 and c.kv_layers == (0, 4, 5)
    names = set(lckv.state_dict())
    assert "model.layers.2.self_attn.k_proj.weight" not in names and "model.layers.4.self_attn.k_proj.weight" in names
    sd, old = lckv.state_dict(), hf.state_dict()
    assert torch.equal(sd["model.layers.2.mlp.up_proj.weight"], old["model.layers.2.mlp.up_proj.weight"])
    for proj in ("k_proj", "v_proj"):
        got = sd[f"model.layers.4.self_attn.{proj}.weight"]
        if kv_init == "copy":
            expect = old[f"model.layers.4.self_attn.{proj}.weight"]
        else:
            expect = torch.stack([old[f"model.layers.{j}.self_attn.{proj}.weight"] for j in (1, 2, 3, 4)]).mean(0)
        assert torch.allclose(got, expect, atol=1e-7)
    # the converted model has its own storage (training it leaves the Llama untouched)
    assert sd["lm_head.weight"].data_ptr() != llama.lm_head.weight.data_ptr()
    save_model(lckv, tmp_path / "lckv", dtype=torch.float32)
    assert torch.equal(_logits(load_model(tmp_path / "lckv")), _logits(lckv))
    with pytest.raises(ConfigError) as e:
        convert_llama_to_lckv(lckv, 2)
    assert e.value.param == "kv_source"
    with pytest.raises(ConfigError) as e:
        convert_llama_to_lckv(llama, 3)
    assert e.value.param == "warmup_layers"
    with pytest.raises(ConfigError) as e:
        convert_llama_to_lckv(llama, 2, kv_init="zeros")
    assert e.value.param == "kv_init"


def _authors_checkpoint(folder, model, force_nodiag):
    """The authors' lckv-llama layout: HF Llama names, middle layers without k/v, layer_types."""
    c = model.cfg
    folder.mkdir()
    config = {"architectures": ["LCKVLlamaForCausalLM"], "model_type": "lckv-llama",
              "vocab_size": c.vocab_size, "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
              "num_hidden_layers": c.num_layers, "num_attention_heads": c.num_heads,
              "num_key_value_heads": c.num_kv_heads, "rms_norm_eps": c.rms_norm_eps, "rope_theta": c.rope_theta,
              "rope_scaling": None, "hidden_act": "silu", "tie_word_embeddings": False, "torch_dtype": "float32",
              "max_position_embeddings": 2048, "layer_types": "_".join(map(str, c.kv_source)),
              "forward_passes": 7, "backward_passes": 2, "force_nodiag": force_nodiag, "use_sequential": False,
              "sliding_window": 4096}
    (folder / "config.json").write_text(json.dumps(config))
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    sd["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(c.head_dim // 2)  # dropped by the table
    half = sorted(sd)[: len(sd) // 2]
    save_file({k: sd[k] for k in half}, str(folder / "model-00001-of-00002.safetensors"))
    save_file({k: sd[k] for k in sd if k not in half}, str(folder / "model-00002-of-00002.safetensors"))
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: "model-00001-of-00002.safetensors" if k in half else "model-00002-of-00002.safetensors"
                        for k in sd}}))


@pytest.mark.parametrize("force_nodiag", [True, False])
def test_load_authors_layout(tmp_path, force_nodiag):
    model = make_model(tiny_cfg(2, nodiag=force_nodiag), dtype=torch.float64)
    _authors_checkpoint(tmp_path / "ckpt", model, force_nodiag)
    loaded = load_model(tmp_path / "ckpt")
    assert loaded.cfg.kv_source == model.cfg.kv_source and loaded.cfg.nodiag_everywhere == force_nodiag
    assert loaded.cfg.max_position_embeddings == 2048 and loaded.cfg.nodiag_rule == "attends_above"
    out = loaded(IDX[:1], iterations=IDX.shape[1])[0][0]
    want = reference_logits(loaded, IDX[0])   # the sequential definition under the authors' rule
    assert (out - want).abs().max().item() <= 1e-9
    # force_nodiag=false: their target layer sees its own token, ours would not (the rule matters)
    ours = reference_logits(model, IDX[0])
    assert ((want - ours).abs().max().item() > 1e-3) == (not force_nodiag)


def _mutated(tmp_path, fn):
    model = make_model(tiny_cfg(2), dtype=torch.float32)
    save_model(model, tmp_path, dtype=torch.float32)
    sd = load_file(str(tmp_path / "model.safetensors"))
    cfg = json.loads((tmp_path / "config.json").read_text())
    sd, cfg = fn(sd, cfg)
    save_file(sd, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(cfg) if isinstance(cfg, dict) else cfg)
    return tmp_path


def _drop(sd, name):
    sd = dict(sd)
    del sd[name]
    return sd


@pytest.mark.parametrize("fn, err, param", [
    (lambda sd, c: (sd | {"lm_head.weight": torch.zeros(3, 3)}, c), CheckpointError, "lm_head.weight"),
    (lambda sd, c: (_drop(sd, "model.norm.weight"), c), CheckpointError, "model.norm.weight"),
    (lambda sd, c: (sd | {"model.layers.1.self_attn.k_proj.weight": torch.zeros(32, 64)}, c),
     CheckpointError, "model.layers.1.self_attn.k_proj.weight"),
    (lambda sd, c: (sd | {"model.norm.weight": torch.zeros(64, dtype=torch.int32)}, c),
     CheckpointError, "model.norm.weight"),
    (lambda sd, c: (sd, "{not json"), ConfigError, "config.json"),
    (lambda sd, c: (sd, c | {"num_attention_heads": 5}), ConfigError, "num_heads"),
    (lambda sd, c: (sd, c | {"kv_source": [0, 1, 1, 2]}), ConfigError, "kv_source"),
    (lambda sd, c: (sd, c | {"kv_source": [0, 1, 2, 3]}), CheckpointError, "model.layers.1.self_attn.k_proj.weight"),
    (lambda sd, c: (sd, {k: v for k, v in c.items() if k not in ("model_type", "kv_source")}), ConfigError, "model_type"),
])
def test_load_errors_name_the_culprit(tmp_path, fn, err, param):
    folder = _mutated(tmp_path, fn)
    with pytest.raises(err) as e:
        load_model(folder)
    assert e.value.param == param


def test_missing_files(tmp_path):
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path)
    assert e.value.param == "config.json"
    save_model(make_model(tiny_cfg(2)), tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!")
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path)
    assert e.value.param == "model.safetensors"
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path)
    assert e.value.param == "model.safetensors"


def test_identity_depends_on_weights_and_layout():
    a = make_model(tiny_cfg(2), dtype=torch.float32)
    b = make_model(tiny_cfg(2), dtype=torch.float32)
    assert model_identity(a) == model_identity(b)
    with torch.no_grad():
        b.model.norm.weight[0] += 1e-3
    assert model_identity(a) != model_identity(b)
