"""ModelConfig: sandwich construction, presets, validation naming the field, serialisation."""
import pytest

from lckv_service.config import ModelConfig
from lckv_service.errors import ConfigError

SHAPE = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_layers=6, num_heads=4, num_kv_heads=2)


def test_sandwich_layout():
    cfg = ModelConfig.lckv(2, **SHAPE)
    assert cfg.kv_source == (0, 4, 4, 4, 4, 5)          # target = L - w/2 - 1 = 4
    assert cfg.kv_layers == (0, 4, 5) and cfg.target_layer == 4 and cfg.warmup_layers == 2
    assert cfg.is_cyclic and cfg.iter_block == (1, 4)
    assert [cfg.nodiag(i) for i in range(6)] == [False, True, True, True, True, False]
    w0 = ModelConfig.lckv(0, **SHAPE)
    assert w0.kv_source == (5,) * 6 and w0.kv_layers == (5,) and w0.iter_block == (0, 5)
    llama = ModelConfig.lckv(6, **SHAPE)
    assert llama == ModelConfig.llama(**SHAPE) and not llama.is_cyclic and llama.warmup_layers == 6
    assert llama.target_layer is None and llama.kv_layers == tuple(range(6))
    w4 = ModelConfig.lckv(4, **SHAPE)
    assert w4.kv_source == (0, 1, 3, 3, 4, 5) and w4.target_layer == 3


def test_presets():
    t = ModelConfig.preset("tinyllama-1.1b")
    assert (t.num_layers, t.hidden_size, t.intermediate_size, t.num_heads, t.num_kv_heads, t.vocab_size) == \
        (22, 2048, 5632, 32, 4, 32000)
    assert t.warmup_layers == 2 and t.target_layer == 20 and len(t.kv_layers) == 3
    l7 = ModelConfig.preset("llama2-7b", "llama")
    assert (l7.num_layers, l7.hidden_size, l7.intermediate_size, l7.num_heads, l7.num_kv_heads) == (32, 4096, 11008, 32, 32)
    assert ModelConfig.preset("llama2-7b", "lckv-w10").warmup_layers == 10
    assert ModelConfig.preset("tiny-test").num_layers >= 4
    with pytest.raises(ConfigError) as e:
        ModelConfig.preset("nope")
    assert e.value.param == "preset"
    with pytest.raises(ConfigError) as e:
        ModelConfig.preset("tiny-test", "gpt")
    assert e.value.param == "variant"


@pytest.mark.parametrize("make, param", [
    (lambda: ModelConfig.lckv(3, **SHAPE), "warmup_layers"),
    (lambda: ModelConfig.lckv(8, **SHAPE), "warmup_layers"),
    (lambda: ModelConfig.lckv(-2, **SHAPE), "warmup_layers"),
    (lambda: ModelConfig.lckv(2, **SHAPE, backward_passes=1), "backward_passes"),
    (lambda: ModelConfig.lckv(2, **SHAPE, forward_passes=-1), "forward_passes"),
    (lambda: ModelConfig(**SHAPE, kv_source=(0, 4, 4, 4, 3, 5)), "kv_source"),    # 3 computes no K/V
    (lambda: ModelConfig(**SHAPE, kv_source=(0, 1, 2, 3, 4, 6)), "kv_source"),    # out of range
    (lambda: ModelConfig(**SHAPE, kv_source=(0, 1, 2)), "kv_source"),             # wrong length
    (lambda: ModelConfig(**SHAPE, kv_source=(0, 1, 2, 3, 4, -1)), "kv_source"),
    (lambda: ModelConfig(**(SHAPE | {"num_heads": 5})), "num_heads"),
    (lambda: ModelConfig(**(SHAPE | {"num_kv_heads": 3})), "num_kv_heads"),
    (lambda: ModelConfig(**(SHAPE | {"hidden_size": 0})), "hidden_size"),
    (lambda: ModelConfig(**(SHAPE | {"vocab_size": -5})), "vocab_size"),
    (lambda: ModelConfig(**(SHAPE | {"intermediate_size": 1.5})), "intermediate_size"),
    (lambda: ModelConfig(**(SHAPE | {"num_layers": True})), "num_layers"),
    (lambda: ModelConfig(**SHAPE, rope_theta=0.0), "rope_theta"),
    (lambda: ModelConfig(**SHAPE, rms_norm_eps=float("nan")), "rms_norm_eps"),
    (lambda: ModelConfig(**SHAPE, max_position_embeddings=0), "max_position_embeddings"),
    (lambda: ModelConfig(**(SHAPE | {"hidden_size": 36, "num_heads": 12, "num_kv_heads": 4})), "num_heads"),  # odd head_dim
])
def test_invalid_configs_name_the_field(make, param):
    with pytest.raises(ConfigError) as e:
        make()
    assert e.value.param == param
    assert param in str(e.value)


def test_b1_allowed_only_without_cycle():
    assert ModelConfig.llama(**SHAPE, backward_passes=1).backward_passes == 1


def test_general_kv_source():
    # cross-layer sharing downward (no cycle) and two cyclic targets
    cla = ModelConfig(**SHAPE, kv_source=(0, 0, 2, 2, 4, 4))
    assert not cla.is_cyclic and cla.kv_layers == (0, 2, 4)
    two = ModelConfig(**SHAPE, kv_source=(0, 2, 2, 4, 4, 5))
    assert two.cyclic_targets == (2, 4) and two.iter_block == (1, 4) and two.warmup_layers is None


def test_dict_round_trip_and_fingerprint():
    cfg = ModelConfig.lckv(2, **SHAPE, nodiag_everywhere=True, rope_theta=5e5)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    fp = cfg.fingerprint()
    assert len(fp) == 64 and fp == ModelConfig.from_dict(cfg.to_dict()).fingerprint()
    assert ModelConfig.lckv(2, **SHAPE, nodiag_everywhere=True, rope_theta=5e5, forward_passes=3).fingerprint() == fp
    assert ModelConfig.lckv(4, **SHAPE, nodiag_everywhere=True, rope_theta=5e5).fingerprint() != fp
    assert ModelConfig.lckv(2, **SHAPE, rope_theta=5e5).fingerprint() != fp


def test_from_dict_hf_llama_and_authors_layout():
    hf = {"model_type": "llama", "vocab_size": 100, "hidden_size": 32, "intermediate_size": 64,
          "num_hidden_layers": 6, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-6,
          "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}, "tie_word_embeddings": False}
    cfg = ModelConfig.from_dict(hf)
    assert cfg.kv_layers == tuple(range(6)) and cfg.rope_theta == 500000.0 and cfg.rms_norm_eps == 1e-6
    authors = hf | {"model_type": "lckv-llama", "layer_types": "0_4_4_4_4_5", "forward_passes": 3,
                    "backward_passes": 2, "force_nodiag": True}
    cfg = ModelConfig.from_dict(authors)
    assert cfg.kv_source == (0, 4, 4, 4, 4, 5) and cfg.nodiag_everywhere and cfg.forward_passes == 3


@pytest.mark.parametrize("patch, param", [
    ({"num_hidden_layers": None}, "num_layers"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "rope_scaling.rope_type"),
    ({"rope_scaling": {"type": "yarn", "factor": 2.0}}, "rope_scaling.rope_type"),
    ({"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}}, "rope_parameters.rope_type"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0}}, "rope_parameters.original_max_position_embeddings"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0,
                       "original_max_position_embeddings": 8192}}, "rope_scaling.high_freq_factor"),
    ({"rope_scaling": {"rope_type": "linear", "factor": -2.0}}, "rope_scaling.factor"),
    ({"rope_scaling": "llama3"}, "rope_scaling"),
    ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ({"tie_word_embeddings": "yes"}, "tie_word_embeddings"),
    ({"attention_bias": True}, "attention_bias"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"head_dim": 15}, "head_dim"),
    ({"model_type": "mistral"}, "model_type"),
    ({"architectures": ["MistralForCausalLM"]}, "architectures"),
    ({"model_type": "lckv-llama", "layer_types": "0_4_4_4_4_5", "force_nodiag": "no"}, "force_nodiag"),
    ({"model_type": "lckv-llama", "layer_types": "0_1s_2"}, "layer_types"),
    ({"model_type": "lckv-llama", "layer_types": "0_4_4_4_4"}, "layer_types"),
    ({"model_type": "lckv-llama", "layer_types": "0_4_4_4_4_5", "backward_passes": 1}, "backward_passes"),
    ({"num_attention_heads": "4"}, "num_heads"),
])
def test_from_dict_errors(patch, param):
    d = {"model_type": "llama", "vocab_size": 100, "hidden_size": 32, "intermediate_size": 64,
         "num_hidden_layers": 6, "num_attention_heads": 4} | patch
    with pytest.raises(ConfigError) as e:
        ModelConfig.from_dict(d)
    assert e.value.param == param


def test_missing_key_named():
    with pytest.raises(ConfigError) as e:
        ModelConfig.from_dict({"model_type": "llama", "vocab_size": 3})
    assert e.value.param == "hidden_size"


@pytest.mark.parametrize("field, scaling", [
    ("rope_scaling", {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192}),     # Llama-3.1's config.json (transformers 4)
    ("rope_parameters", {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),   # Llama-3.2, v5 form
    ("rope_scaling", {"type": "linear", "factor": 4.0}),
])
def test_rope_frequencies_are_transformers(field, scaling):
    """Our RoPE frequencies (float64) against transformers' own rope init (float32)."""
    import torch
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    d = {"model_type": "llama", "vocab_size": 100, "hidden_size": 256, "intermediate_size": 64,
         "num_hidden_layers": 2, "num_attention_heads": 2, "rope_theta": 500000.0, "max_position_embeddings": 131072,
         field: scaling}
    cfg = ModelConfig.from_dict(d)
    assert cfg.head_dim == 128 and cfg.rope_theta == 500000.0 and cfg.rope_scaling.factor == scaling["factor"]
    kind = scaling.get("rope_type", scaling.get("type"))
    hf_inv, factor = ROPE_INIT_FUNCTIONS[kind](LlamaConfig(**{k: v for k, v in d.items() if k != "model_type"}), "cpu")
    ours = torch.tensor(cfg.rope_inv_freq(), dtype=torch.float64)
    assert factor == 1.0 and torch.allclose(ours, hf_inv.double(), rtol=1e-6, atol=0)
    unscaled = torch.tensor(ModelConfig.from_dict(d | {field: None}).rope_inv_freq(), dtype=torch.float64)
    assert not torch.allclose(ours, unscaled)
