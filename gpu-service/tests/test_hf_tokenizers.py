"""Tokenizers and chat templates of real Llama-family folders against transformers itself: the
published TinyLlama-Chat, Llama-2-chat and Llama-3-Instruct templates render the same text and ids as
`apply_chat_template`; completions prompts get BOS as `tokenizer(prompt)` does; stop ids."""
from __future__ import annotations

import json
import shutil

import pytest

from hf_fixtures import (LLAMA2_CHAT_TEMPLATE, LLAMA3_INSTRUCT_TEMPLATE, TINYLLAMA_CHAT_TEMPLATE,
                         write_llama2_tokenizer, write_llama3_tokenizer)
from lckv_service.errors import RequestError
from lckv_service.tokenizer import ChatTokenizer

CONVERSATION = [
    {"role": "system", "content": "Be kind."},
    {"role": "user", "content": "Hi café 🦊, what's up?"},
    {"role": "assistant", "content": "Hello! The river runs to the sea."},
    {"role": "user", "content": "Tell me more\n\nplease."},
]
PROMPTS = ["Once upon a time there was a little fox", " leading space and café 🦊", "a\n\nb  c",
           "Numbers like 1, 2, 3 and 2024."]
FOLDERS = {
    "tinyllama-chat": (write_llama2_tokenizer, TINYLLAMA_CHAT_TEMPLATE),
    "llama-2-chat": (write_llama2_tokenizer, LLAMA2_CHAT_TEMPLATE),
    "llama-3-instruct": (write_llama3_tokenizer, LLAMA3_INSTRUCT_TEMPLATE),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-tok")
    return {name: (write(root / name, template), root / name)[1] for name, (write, template) in FOLDERS.items()}


def _ids(x):
    return list(x["input_ids"] if hasattr(x, "keys") else x)


@pytest.mark.parametrize("name", list(FOLDERS))
@pytest.mark.parametrize("gen", [True, False])
def test_chat_template_renders_what_transformers_renders(folders, name, gen):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(folders[name]))
    ours = ChatTokenizer.from_folder(folders[name])
    for messages in (CONVERSATION, CONVERSATION[1:2], [{"role": "user", "content": "  padded  "}]):
        want = hf.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False)
        assert ours.render(messages, add_generation_prompt=gen) == want
        assert ours.encode_chat(messages, add_generation_prompt=gen) == \
            _ids(hf.apply_chat_template(messages, add_generation_prompt=gen, tokenize=True))
    if name != "tinyllama-chat":   # these templates write BOS themselves: exactly one, first
        bos = ours.tokenizer.token_to_id(ours.special_tokens["bos_token"])
        ids = ours.encode_chat(CONVERSATION[1:2], gen)
        assert ids[0] == bos and ids.count(bos) == 1


def test_llama2_template_raises_through_raise_exception(folders):
    ours = ChatTokenizer.from_folder(folders["llama-2-chat"])
    with pytest.raises(RequestError) as e:
        ours.encode_chat([{"role": "assistant", "content": "first"}])
    assert e.value.param == "messages" and "must alternate" in e.value.message


@pytest.mark.parametrize("name", ["llama-2-chat", "llama-3-instruct"])
def test_completions_prompt_gets_bos_as_transformers_adds_it(folders, name):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(folders[name]))
    ours = ChatTokenizer.from_folder(folders[name])
    for text in PROMPTS + [""]:
        assert ours.encode_prompt(text) == _ids(hf(text)), text
    assert ours.encode_prompt("x")[0] == ours.tokenizer.token_to_id(ours.special_tokens["bos_token"])
    # special-token text in a prompt stays text (transformers would read it as the control token)
    eos = ours.special_tokens["eos_token"]
    ids = ours.encode_prompt(f"the end{eos} more")
    assert ours.tokenizer.token_to_id(eos) not in ids and ours.decode(ids[1:]) == f"the end{eos} more"


def test_add_bos_and_eos_flags_say_what_completions_get(folders, tmp_path):
    d = tmp_path / "flags"
    shutil.copytree(folders["llama-2-chat"], d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    base = ChatTokenizer.from_folder(d)
    body = base.encode("the river")
    bos, eos = base.tokenizer.token_to_id("<s>"), base.tokenizer.token_to_id("</s>")
    assert base.encode_prompt("the river") == [bos, *body]
    for add_bos, add_eos, want in ((False, False, body), (True, True, [bos, *body, eos]), (False, True, [*body, eos])):
        (d / "tokenizer_config.json").write_text(json.dumps(cfg | {"add_bos_token": add_bos, "add_eos_token": add_eos}))
        assert ChatTokenizer.from_folder(d).encode_prompt("the river") == want


def test_stop_ids_from_generation_config_lists(folders):
    ours = ChatTokenizer.from_folder(folders["llama-3-instruct"])
    v = ours.tokenizer.get_vocab()
    assert ours.stop_token_ids == {v["<|eot_id|>"], v["<|end_of_text|>"]}
    llama2 = ChatTokenizer.from_folder(folders["llama-2-chat"])
    assert llama2.stop_token_ids == {llama2.tokenizer.token_to_id("</s>")}


@pytest.mark.parametrize("name, k", [("tinyllama-chat", 1), ("tinyllama-chat", 2), ("tinyllama-chat", 3),
                                     ("llama-2-chat", 3), ("llama-3-instruct", 1), ("llama-3-instruct", 3)])
def test_a_session_continuation_tokenizes_as_the_whole_conversation(folders, name, k):
    """A session turn encodes only the new messages after the cached ones: with `continues` their text is
    not the document's start (Llama's Metaspace adds no '▁' there), so the ids equal the whole render's."""
    ours = ChatTokenizer.from_folder(folders[name])
    head = ours.encode_chat(CONVERSATION[:k], add_generation_prompt=False)
    tail = ours.encode_chat(CONVERSATION[k:], add_generation_prompt=True, continues=True)
    assert head + tail == ours.encode_chat(CONVERSATION, add_generation_prompt=True)
