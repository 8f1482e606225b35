"""Real Hugging Face checkpoints end to end, against transformers' own LlamaForCausalLM: logits over a
few hundred tokens to 1e-4, and 64 greedy tokens through the real server token for token, for a
Llama-2-style model, a Llama-3-style one (llama3 RoPE scaling, tied embeddings, explicit head_dim,
several EOS ids, a 128k vocabulary) and a sharded GQA one; the authors' lckv-llama layout with
force_nodiag true and false against the float64 sequential definition; every refusal names its field
and leaves no half-started service."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import make_model, tiny_cfg
from hf_fixtures import (GQA_SHAPE, LLAMA2_SHAPE, LLAMA3_SHAPE, TINYLLAMA_CHAT_TEMPLATE, hf_llama,
                         write_llama2_tokenizer, write_llama3_tokenizer)
from lckv_service.cache import KVCache
from lckv_service.checkpoint import convert_llama_to_lckv, load_model, save_model
from lckv_service.errors import CheckpointError, ConfigError
from lckv_service.kernels import FastDecode
from lckv_service.model import PrefillMode
from lckv_service.reference import ReferenceLCKV
from service_fixtures import MODEL_ID, ServerThread, run_one, serve_config, single_torch_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_torch_thread")

PROMPT = ("Once upon a time there was a little fox who lived at the edge of a quiet forest. Every morning the fox "
          "walked to the river, looked at the water and thought about the day ahead. Rivers run to the sea, the "
          "sea rises to the clouds, and the clouds fall again as rain on the hills.")
LAYOUTS = {  # name: (tokenizer writer, template, transformers config, sharded)
    "llama2": (write_llama2_tokenizer, None, LLAMA2_SHAPE, False),
    "llama3": (write_llama3_tokenizer, None, LLAMA3_SHAPE, False),
    "gqa-sharded": (write_llama2_tokenizer, TINYLLAMA_CHAT_TEMPLATE, GQA_SHAPE, True),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-models")
    out = {}
    for name, (write_tok, template, shape, shard) in LAYOUTS.items():
        d = root / name
        tok = write_tok(d, template) if write_tok is write_llama2_tokenizer else write_tok(d)
        shape = {"vocab_size": tok.get_vocab_size()} | shape
        if write_tok is write_llama3_tokenizer:   # as in Llama-3's config.json: a list of EOS ids
            shape |= {"bos_token_id": tok.token_to_id("<|begin_of_text|>"),
                      "eos_token_id": [tok.token_to_id("<|end_of_text|>"), tok.token_to_id("<|eot_id|>")]}
        out[name] = (d, hf_llama(d, seed=len(out), shard=shard, **shape))
    return out


def test_folders_are_the_real_layouts(folders):
    d, _ = folders["gqa-sharded"]
    assert (d / "model.safetensors.index.json").exists() and not (d / "model.safetensors").exists()
    cfg = json.loads((folders["llama3"][0] / "config.json").read_text())
    assert cfg["tie_word_embeddings"] and cfg["head_dim"] == 32 and cfg["vocab_size"] == 128256
    assert (cfg.get("rope_parameters") or cfg.get("rope_scaling"))["rope_type"] == "llama3"


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_logits_match_transformers(folders, name):
    d, hf = folders[name]
    model = load_model(d)
    c = model.cfg
    assert c.kv_layers == tuple(range(c.num_layers)) and next(model.parameters()).dtype == torch.float32
    if name == "llama3":
        assert c.tie_word_embeddings and c.head_dim == 32 and c.rope_scaling.rope_type == "llama3"
        assert model.lm_head.weight is model.model.embed_tokens.weight
    idx = torch.randint(0, min(c.vocab_size, 1000), (1, 320), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours, want = model(idx)[0], hf(idx).logits
    assert (ours - want).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_greedy_generation_through_the_server_is_transformers(folders, name):
    from transformers import AutoTokenizer

    d, hf = folders[name]
    prompt_ids = AutoTokenizer.from_pretrained(str(d))(PROMPT)["input_ids"]
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():   # all 64 tokens; the mask given, so no id reads as padding
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=64, do_sample=False,
                          eos_token_id=None, pad_token_id=hf.config.vocab_size - 1)[0, len(prompt_ids):].tolist()
    with ServerThread(serve_config(d, window=400)) as srv:
        assert srv.service.tokenizer.encode_prompt(PROMPT) == prompt_ids      # BOS as transformers adds it
        stops = srv.service.tokenizer.stop_token_ids
        r = run_one(srv.url, {"request_id": "r", "model": MODEL_ID, "kind": "completion", "prompt": PROMPT,
                              "sampling": {"max_tokens": 64, "temperature": 0.0}, "return_blob": False})
    assert r.status == 200, r.body[:300]
    assert len(out) == 64 and not set(out) & stops, "the fixture's 64 greedy tokens should hold no EOS id"
    assert r.token_ids == out and r.done["finish_reason"] == "length"


def test_base_model_serves_completions_and_refuses_chat_with_reason(folders, tmp_path):
    d, _ = folders["llama2"]            # a base model: no chat_template
    with ServerThread(serve_config(d, window=None, max_slots=2)) as srv:
        r = run_one(srv.url, {"request_id": "r", "model": MODEL_ID, "kind": "chat",
                              "messages": [{"role": "user", "content": "Hi"}],
                              "sampling": {"max_tokens": 4, "temperature": 0.0}})
        assert r.status == 400 and r.error["code"] == "chat_template_missing" and r.error["param"] == "messages"
        assert "--chat-template" in r.error["message"]
        r = run_one(srv.url, {"request_id": "r", "model": MODEL_ID, "kind": "completion", "prompt": "Once",
                              "sampling": {"max_tokens": 4, "temperature": 0.0}})
        assert r.status == 200 and len(r.token_ids) >= 1
        info = srv.service.info()
        assert info["context_window"] == LLAMA2_SHAPE["max_position_embeddings"]
        # a completions prompt is text: "</s>" typed in it is not the end-of-sequence token
        from lckv_service.sampling import SamplingParams
        from lckv_service.server.protocol import GenerateRequest
        req = srv.service.make_request(GenerateRequest("r", MODEL_ID, "completion", None, "the end</s><s> more",
                                                       SamplingParams(max_tokens=1), False), None)
        tok = srv.service.tokenizer
        assert req.prompt_ids[0] == tok.tokenizer.token_to_id("<s>") and req.prompt_ids.count(req.prompt_ids[0]) == 1
        assert tok.tokenizer.token_to_id("</s>") not in req.prompt_ids
        assert tok.decode(req.prompt_ids[1:]) == "the end</s><s> more"
    template = tmp_path / "chat.jinja"
    template.write_text(TINYLLAMA_CHAT_TEMPLATE)
    with ServerThread(serve_config(d, chat_template=str(template))) as srv:
        r = run_one(srv.url, {"request_id": "r", "model": MODEL_ID, "kind": "chat",
                              "messages": [{"role": "user", "content": "Hi"}],
                              "sampling": {"max_tokens": 4, "temperature": 0.0}})
        assert r.status == 200 and r.done["usage"]["prompt_tokens"] > 2


def _patched(src, dst, config=None, drop=None):
    shutil.copytree(src, dst)
    if config is not None:
        cfg = json.loads((dst / "config.json").read_text())
        cfg.update(config)
        (dst / "config.json").write_text(json.dumps(cfg))
    if drop is not None:
        from safetensors.torch import load_file, save_file
        sd = load_file(str(dst / "model.safetensors"))
        del sd[drop]
        save_file(sd, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("patch, err, param", [
    (dict(config={"model_type": "mistral", "architectures": ["MistralForCausalLM"]}), ConfigError, "model_type"),
    (dict(config={"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}}),
     ConfigError, "rope_parameters.rope_type"),
    (dict(config={"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 4.0}}),
     ConfigError, "rope_parameters.rope_type"),
    (dict(config={"attention_bias": True}), ConfigError, "attention_bias"),
    (dict(config={"head_dim": 24}), CheckpointError, "model.layers.0.self_attn.q_proj.weight"),
    (dict(config={"tie_word_embeddings": True}), CheckpointError, "lm_head.weight"),
    (dict(drop="model.layers.1.mlp.up_proj.weight"), CheckpointError, "model.layers.1.mlp.up_proj.weight"),
    (dict(config={"hidden_size": 96}), CheckpointError, "model.embed_tokens.weight"),
])
def test_refusals_name_the_field_and_the_service_never_starts(folders, tmp_path, patch, err, param):
    d = _patched(folders["llama2"][0], tmp_path / "bad", **patch)
    with pytest.raises(err) as e:
        load_model(d)
    assert e.value.param == param
    with pytest.raises(RuntimeError) as e:      # the server reports the load error and never becomes ready
        with ServerThread(serve_config(d)):
            pass
    assert isinstance(e.value.__cause__, err) and e.value.__cause__.param == param


@pytest.mark.parametrize("force_nodiag", [True, False])
def test_authors_layout_prefill_and_decode_match_the_sequential_definition(tmp_path, force_nodiag):
    """The authors' semantics in float64: exact prefill, the model's decode and the serving FastDecode."""
    from test_checkpoint import _authors_checkpoint

    model = make_model(tiny_cfg(2, nodiag=force_nodiag, layers=6), dtype=torch.float64, seed=5)
    _authors_checkpoint(tmp_path / "ckpt", model, force_nodiag)
    loaded = load_model(tmp_path / "ckpt")
    assert loaded.cfg.nodiag(4) == force_nodiag       # the target (layer 4) keeps its own token unless forced
    tokens = torch.randint(0, loaded.cfg.vocab_size, (21,), generator=torch.Generator().manual_seed(1))
    ref = ReferenceLCKV(loaded)
    want = ref.run(tokens)
    cache = KVCache(loaded.cfg, num_slots=2, capacity=40, dtype=torch.float64)
    got = loaded.prefill(cache, [1], [tokens], PrefillMode("exact", chunk=8), all_logits=True)[0]
    assert (got - want).abs().max().item() <= 1e-9
    other = KVCache(loaded.cfg, num_slots=1, capacity=40, dtype=torch.float64)   # adaptive, never converging early
    got = loaded.prefill(other, [0], [tokens], PrefillMode("adaptive", tol=0.0, max_iterations=32), all_logits=True)[0]
    assert (got - want).abs().max().item() <= 1e-9 and loaded.last_prefill_passes == tokens.numel()
    fd = FastDecode(loaded, cache, bucket=8)
    for t in (3, 17, 9):
        step = fd(torch.tensor([1]), torch.tensor([t]))[0]
        assert (step - ref.step(t)).abs().max().item() <= 1e-9
    with torch.no_grad():   # training forward: passes >= tokens is exact (Theorem 1) under their rule too
        full = loaded(tokens[None], iterations=tokens.numel())[0][0]
    assert (full - want).abs().max().item() <= 1e-9


@pytest.mark.parametrize("name", ["llama3", "gqa-sharded"])
def test_conversion_to_lckv_keeps_the_layout(folders, tmp_path, name):
    """Llama -> LCKV (for fine-tuning: a converted model's answers degrade until it is trained)."""
    llama = load_model(folders[name][0])
    lckv = convert_llama_to_lckv(llama, warmup_layers=2, kv_init="mean")
    c, s = lckv.cfg, llama.cfg
    assert (c.rope_scaling, c.tie_word_embeddings, c.head_dim) == (s.rope_scaling, s.tie_word_embeddings, s.head_dim)
    assert c.kv_layers == (0, c.num_layers - 2, c.num_layers - 1)
    save_model(lckv, tmp_path / "lckv", dtype=torch.float32)
    again = load_model(tmp_path / "lckv")
    assert again.cfg == c and (again.lm_head.weight is again.model.embed_tokens.weight) == c.tie_word_embeddings
    idx = torch.randint(0, min(c.vocab_size, 400), (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(again(idx)[0], lckv(idx)[0])


@pytest.mark.parametrize("shard", ["../model-00001-of-00002.safetensors", "/etc/passwd", 7])
def test_a_shard_index_pointing_outside_the_folder_is_refused(folders, tmp_path, shard):
    d = shutil.copytree(folders["gqa-sharded"][0], tmp_path / "m")
    index = json.loads((d / "model.safetensors.index.json").read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = shard
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError) as e:
        load_model(d)
    assert e.value.param == "model.safetensors.index.json"


@pytest.mark.parametrize("layer_types", ["0_3_3_3_3_5", "0_2_2_4_4_5", "0_1_1_1_4_5"])
def test_authors_rule_on_other_layer_types(layer_types):
    """Their rule beyond the sandwich: a layer above a target reading it, two targets, a layer reading one
    below it -- each keeps its own token. Exact prefill, decode and Theorem 1 against the definition."""
    from lckv_service.config import ModelConfig
    src = tuple(int(x) for x in layer_types.split("_"))
    shape = {k: v for k, v in tiny_cfg(None, layers=6).__dict__.items() if k not in ("kv_source", "nodiag_rule")}
    model = make_model(ModelConfig(**shape | {"kv_source": src, "nodiag_rule": "attends_above"}), seed=7)
    tokens = torch.randint(0, model.cfg.vocab_size, (17,), generator=torch.Generator().manual_seed(2))
    ref = ReferenceLCKV(model)
    want = ref.run(tokens)
    cache = KVCache(model.cfg, num_slots=1, capacity=32, dtype=torch.float64)
    got = model.prefill(cache, [0], [tokens], PrefillMode("exact", chunk=5), all_logits=True)[0]
    assert (got - want).abs().max().item() <= 1e-9
    fd = FastDecode(model, cache, bucket=4)
    for t in (11, 4):
        assert (fd(torch.tensor([0]), torch.tensor([t]))[0] - ref.step(t)).abs().max().item() <= 1e-9
    with torch.no_grad():
        assert (model(tokens[None], iterations=tokens.numel())[0][0] - want).abs().max().item() <= 1e-9


def test_a_cpu_cache_pool_larger_than_memory_is_refused_at_start():
    """Llama-3.x's 131,072 positions make the default window huge: refused with the knob to turn."""
    from lckv_service.engine.runner import plan_slots
    cfg, cpu = tiny_cfg(None), torch.device("cpu")
    assert plan_slots(cfg, 1024, cpu, torch.float32, 8, 0.85) == 8
    with pytest.raises(ConfigError) as e:
        plan_slots(cfg, 2**40, cpu, torch.float32, 8, 0.85)
    assert e.value.param == "window" and "--window" in e.value.message
