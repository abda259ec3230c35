from __future__ import annotations

import importlib.machinery
import warnings

import pytest
import torch

from soundguide.core.errors import ConfigError, WeightsError
from soundguide.encoders import clip_tokenizer
from soundguide.encoders.clip_tokenizer import CLIPTokenizer, get_tokenizer, tokenize
from tests.isolation import imported_by

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # clip imports pkg_resources, which warns about itself
    import clip  # OpenAI's package: the reference

PROMPTS = [
    "a photo of a dog",
    "The sound of RAIN on a tin roof.",
    "explosion!!! in the forest...",
    "don't stop, it's 3 o'clock; we'll see",
    "they're here, I've said, you'd know, I'm sure",
    "DON'T SHOUT, IT'S LOUD",
    "café crème brûlée à la mode",
    "naïve façade – “quoted” — dash",
    "emoji 🔥🌲 fire and trees 🐕",
    "flags 🇯🇵 and skin tones 👍🏽, zwj 👨‍👩‍👧",
    "HTML &amp; entities &lt;b&gt; &quot;x&quot;",
    "double &amp;amp; escaped &#39;numeric&#39; &eacute;",
    "   lots   of\twhitespace\n\nand lines   ",
    "non-breaking\u00a0space and\u2003em space",
    "MiXeD CaSe WoRdS",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "pneumonoultramicroscopicsilicovolcanoconiosis",
    "numbers 1234567890 and 3.14159, -42, 1e10",
    "日本語のテキスト and 中文",
    "Ελληνικά και русский",
    "mojibake cafÃ© fixed by ftfy",
    "a-b_c/d\\e|f@g#h$i%j^k*l(m)n",
    "<|startoftext|> special <|endoftext|>",
    "ends with an apostrophe' and 's alone",
    "",
    "   ",
    "x",
    "?!",
    "a thunderstorm with heavy rain and distant thunder rolling over the hills at night",
    "Ünïcödé ÅÆØ ß ﬁ ligature",
]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Small ops on a shared 2-core machine run far faster without thread contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_ids_equal_clips_own_tokenizer():
    ours = tokenize(PROMPTS)
    assert ours.dtype == torch.int64 and ours.shape == (len(PROMPTS), 77)
    assert torch.equal(ours, clip.tokenize(PROMPTS))
    assert torch.equal(tokenize("a dog"), clip.tokenize("a dog"))
    assert torch.equal(tokenize(tuple(PROMPTS[:3])), clip.tokenize(PROMPTS[:3]))


def test_truncation_equals_clips():
    long = "the sound of heavy rain on a tin roof " * 3
    texts = [long, "short", *PROMPTS]
    ours = tokenize(texts, context_length=8, truncate=True)
    assert ours.shape == (len(texts), 8)
    assert torch.equal(ours, clip.tokenize(texts, context_length=8, truncate=True))
    assert ours[0, -1] == get_tokenizer().eot_token


def test_encode_decode_and_specials():
    tokenizer = get_tokenizer()
    assert tokenizer is get_tokenizer()
    assert tokenizer.sot_token == 49406 and tokenizer.eot_token == 49407
    assert len(tokenizer.tokens) == 49408
    reference = clip.simple_tokenizer.SimpleTokenizer()
    for text in PROMPTS[:10]:
        assert tokenizer.encode(text) == reference.encode(text)
    assert tokenizer.decode(tokenizer.encode("Hello,  World!")) == "hello , world ! "
    assert tokenizer.decode(tokenizer.encode("café 🔥")) == "café 🔥 "


def test_too_long_names_the_prompt_in_one_line():
    long = "the sound of heavy rain\non a tin roof " * 12
    with pytest.raises(ConfigError) as info:
        tokenize(["ok", long])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("text prompt 2 ('the sound of heavy rain\\non")
    assert f"({long[:57] + '...'!r})" in message  # shortened to 60 characters
    assert "is 110 tokens long; CLIP takes at most 77" in message
    assert tokenize(["ok", long], truncate=True).shape == (2, 77)


def test_missing_package_or_vocabulary(monkeypatch, tmp_path):
    monkeypatch.setattr(clip_tokenizer.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(WeightsError, match="pip install clip-anytorch") as info:
        clip_tokenizer.vocab_path()
    assert "\n" not in str(info.value)

    empty = importlib.machinery.ModuleSpec("clip", None, is_package=True)
    empty.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(clip_tokenizer.importlib.util, "find_spec", lambda name: empty)
    with pytest.raises(WeightsError, match="pip install clip-anytorch"):
        CLIPTokenizer()

    (tmp_path / "broken.gz").write_bytes(b"not gzip")
    with pytest.raises(WeightsError, match="cannot read CLIP's BPE vocabulary"):
        CLIPTokenizer(tmp_path / "broken.gz")


def test_tokenize_reports_missing_vocabulary(monkeypatch):
    def missing() -> None:
        raise WeightsError("CLIP's BPE vocabulary was not found: pip install clip-anytorch")

    monkeypatch.setattr(clip_tokenizer, "vocab_path", missing)
    get_tokenizer.cache_clear()
    try:
        with pytest.raises(WeightsError, match="pip install clip-anytorch"):
            tokenize("a dog")
    finally:
        get_tokenizer.cache_clear()


def test_does_not_import_clip_or_torchvision():
    code = (
        "from soundguide.encoders.clip_tokenizer import tokenize\n"
        "assert tokenize('a dog').shape == (1, 77)\n"
    )
    assert imported_by(code, ["clip", "torchvision", "pkg_resources"]) == []
